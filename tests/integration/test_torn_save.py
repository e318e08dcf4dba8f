"""Checkpoints are never torn: processes SIGKILLed while saving always leave a complete,
restorable checkpoint, and ``mbmpo-ray train --resume`` continues from it."""

import csv
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import tune_configs
from mbmpo_ray.algorithm import checkpoints as ck
from mbmpo_ray.algorithm import rundir

REPO = Path(__file__).resolve().parents[2]
ray_local = pytest.mark.usefixtures("ray_local")

# A process that saves checkpoints of iteration 1, 2, ... forever, each a copy of SOURCE's
# files (a real MBMPO checkpoint), written file by file as save_to_path does, through
# checkpoints.save_checkpoint (loaded without importing Ray: it starts in ~0.1 s).
SAVER = textwrap.dedent("""
    import importlib.util, os, shutil, sys
    spec = importlib.util.spec_from_file_location("ck", sys.argv[1])
    ck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ck)
    source, run, first = sys.argv[2], sys.argv[3], int(sys.argv[4])

    def write(path):
        for dirpath, _, files in os.walk(source):
            rel = os.path.relpath(dirpath, source)
            os.makedirs(os.path.join(path, rel), exist_ok=True)
            for name in files:
                shutil.copyfile(os.path.join(dirpath, name), os.path.join(path, rel, name))

    it = first
    while True:
        ck.save_checkpoint(write, run, it, keep=2)
        print(it, flush=True)
        it += 1
""")


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ck.MANIFEST:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    """A real checkpoint of a tiny MBMPO run after one iteration."""
    algo = tune_configs.load_config("pendulum", "smoke").build_algo()
    try:
        algo.train()
        path = tmp_path_factory.mktemp("source") / "ckpt"
        algo.save_to_path(str(path))
        return path
    finally:
        algo.stop()


@ray_local
def test_saves_killed_at_many_moments_leave_a_complete_checkpoint(source_checkpoint, tmp_path):
    from mbmpo_ray import MBMPO

    run = tmp_path / "run"
    expected = _digest(source_checkpoint)
    rng = random.Random(0)
    # kill until 15 kills have hit a save in progress (on a busy machine fewer land inside
    # one, so a fixed count would test less), at most 120
    kills, inside_a_save, first = 0, 0, 1
    while inside_a_save < 15 and kills < 120:
        kills += 1
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, ck.__file__, str(source_checkpoint), str(run),
             str(first)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == str(first)  # one complete save at least
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        if any(p.name.startswith(".tmp_") for p in (run / ck.CHECKPOINTS_DIR).iterdir()):
            inside_a_save += 1
        latest = ck.latest_checkpoint(run)
        assert latest is not None
        assert _digest(latest) == expected  # complete: every file, every byte
        assert len(ck.list_checkpoints(run)) <= 3  # keep=2 (+1 if killed before pruning)
        first = int(latest.name.split("_")[-1]) + 1  # the "resumed" run goes on from there
    print(f"{inside_a_save} of {kills} kills hit a save in progress")
    assert inside_a_save >= 15, f"only {inside_a_save} of {kills} kills hit a save in progress"
    # the survivor restores, and training continues from it
    algo = MBMPO.from_checkpoint(str(ck.latest_checkpoint(run)))
    try:
        assert algo.iteration == 1 and len(algo.buffer) == 100
        assert algo.train()["num_real_steps_lifetime"] == 200
    finally:
        algo.stop()
    ck.remove_stale(run)
    assert not [p for p in (run / ck.CHECKPOINTS_DIR).iterdir() if p.name.startswith(".")]


def _train_cmd(run: Path, *extra: str, algo: str = "mbmpo") -> list[str]:
    """`mbmpo-ray train` of the smoke config into ``run``, on this test session's Ray."""
    import ray

    return [sys.executable, "-m", "mbmpo_ray", "train", "--algo", algo, "--config", "pendulum",
            "--variant", "smoke", "--stop-timesteps", "100000", "--output", str(run),
            "--plain", "--address", ray.get_runtime_context().gcs_address, *extra]


def _kill_during_a_save(proc: subprocess.Popen, run: Path, after: int, delay: float) -> int:
    """SIGKILL ``proc`` ``delay`` s after it starts writing a checkpoint of an iteration
    > ``after``; returns that iteration."""
    root = run / ck.CHECKPOINTS_DIR
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        its = [int(p.name.split("_")[2]) for p in root.glob(".tmp_iter_*")]
        if its and max(its) > after:
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return max(its)
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"no save seen; exit {proc.poll()}: {proc.stderr.read()[-2000:]}")


@ray_local
def test_cli_train_killed_during_saves_resumes_every_time(algo_name, tmp_path):
    """`mbmpo-ray train` SIGKILLed while writing a checkpoint (right at its start, and a
    little later), then `--resume`d: each time it continues from a complete checkpoint, and
    the finished run has every iteration exactly once, every real transition once and (MB-MPO,
    whose sampling jobs carry their seeds) the buffer of an uninterrupted run."""
    from mbmpo_ray import MBMPO, MBPO

    run = tmp_path / "run"
    done, delays = 0, (0.0, 0.03)
    for i, delay in enumerate(delays):
        proc = subprocess.Popen(_train_cmd(run, *(["--resume"] if i else []), algo=algo_name),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        killed_at = _kill_during_a_save(proc, run, max(done, 1), delay)
        latest = ck.latest_checkpoint(run)
        assert latest is not None
        done = ck.read_manifest(latest)["iteration"]
        assert done in (killed_at - 1, killed_at)  # the previous one, or this one if finished
    final = done + 1
    res = subprocess.run(_train_cmd(run, "--resume", "--iterations", str(final),
                                    algo=algo_name),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout
    rows = list(csv.DictReader(open(run / "progress.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(1, final + 1))
    first, per_iter = (100, 100) if algo_name == "mbmpo" else (150, 50)  # smoke settings
    assert [int(float(r["real_steps"])) for r in rows] == [
        first + per_iter * i for i in range(final)]
    latest = ck.latest_checkpoint(run)
    assert ck.read_manifest(latest)["iteration"] == final
    assert (run / "checkpoint").resolve() == latest
    resumed = (MBMPO if algo_name == "mbmpo" else MBPO).from_checkpoint(str(latest))
    try:
        obs = resumed.buffer.all()["obs"]
        assert len(obs) == first + per_iter * (final - 1) == len(np.unique(obs, axis=0))
        if algo_name == "mbmpo":  # exactly the data of an uninterrupted run
            straight = tune_configs.load_config("pendulum", "smoke").build_algo()
            try:
                for _ in range(final):
                    straight.train()
                for k, v in straight.buffer.all().items():
                    np.testing.assert_array_equal(resumed.buffer.all()[k], v, err_msg=k)
            finally:
                straight.stop()
    finally:
        resumed.stop()


# ---------------------------------------------------------------- the mechanism, without Ray
def _writer(payload: bytes):
    def write(path):
        os.makedirs(path)
        Path(path, "state.pkl").write_bytes(payload)
        Path(path, "sub").mkdir()
        Path(path, "sub", "weights.pt").write_bytes(payload[::-1])
    return write


def test_keeps_the_last_n_and_points_the_link_at_the_newest(tmp_path):
    for it in range(1, 6):
        final = ck.save_checkpoint(_writer(b"x" * it), tmp_path, it, keep=2)
        assert (tmp_path / "checkpoint").resolve() == final
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["iter_000004", "iter_000005"]
    files = ck.read_manifest(final)["files"]
    assert {name: f["size"] for name, f in files.items()} == {"state.pkl": 5,
                                                              "sub/weights.pt": 5}
    assert all(len(f["sha256"]) == 64 for f in files.values())
    # saving an iteration that exists already writes nothing
    ck.save_checkpoint(_writer(b"other"), tmp_path, 5, keep=2)
    assert (final / "state.pkl").read_bytes() == b"x" * 5
    with pytest.raises(ValueError, match="keep"):
        ck.save_checkpoint(_writer(b""), tmp_path, 6, keep=0)


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    good = ck.save_checkpoint(_writer(b"good"), tmp_path, 1)

    def failing(path):
        _writer(b"half")(path)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(failing, tmp_path, 2)
    assert ck.latest_checkpoint(tmp_path) == good
    assert [p.name for p in (tmp_path / ck.CHECKPOINTS_DIR).iterdir()] == ["iter_000001"]


def test_incomplete_checkpoints_are_skipped_and_leftovers_removed(tmp_path):
    ck.save_checkpoint(_writer(b"a" * 100), tmp_path, 1, keep=5)
    second = ck.save_checkpoint(_writer(b"b" * 100), tmp_path, 2, keep=5)
    (second / "sub" / "weights.pt").write_bytes(b"b" * 10)  # torn after the fact
    assert ck.latest_checkpoint(tmp_path).name == "iter_000001"
    with pytest.raises(ck.CheckpointError, match="weights.pt has 10 bytes, expected 100"):
        ck.check_checkpoint(second)
    # leftovers of a killed save (pid 999999: not running) go at the next save
    dead = tmp_path / ck.CHECKPOINTS_DIR / ".tmp_iter_000003_999999_deadbeef"
    dead.mkdir()
    ck.save_checkpoint(_writer(b"c"), tmp_path, 3, keep=5)
    assert not dead.exists()
    # the torn iteration 2 is rewritten when saved again
    ck.save_checkpoint(_writer(b"b" * 100), tmp_path, 2, keep=5)
    assert ck.check_checkpoint(second) == second.resolve()


def test_progress_is_trimmed_to_the_checkpoint(tmp_path):
    (tmp_path / "progress.csv").write_text(
        "iteration,real_steps\n1,100\n2,200\n3,300\n4,4")  # 3 and 4: after the checkpoint
    assert rundir.trim_progress(tmp_path, 2) == 2
    assert (tmp_path / "progress.csv").read_text().splitlines() == [
        "iteration,real_steps", "1,100", "2,200"]


def test_new_run_directories(tmp_path):
    run = tmp_path / "run"
    rundir.prepare_new_run(run)
    (run / "progress.csv").write_text("iteration\n1\n")
    ck.save_checkpoint(_writer(b"x"), run, 1)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(rundir.RunDirError, match="--resume to continue it or --overwrite"):
        rundir.prepare_new_run(run)
    rundir.prepare_new_run(run, overwrite=True)  # deletes the run's files only
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    with pytest.raises(rundir.RunDirError, match="nothing to resume"):
        rundir.resume_checkpoint(run)
