"""CLI checks that need no Ray: bad input answered with one line before anything starts, run
directories that never lose the user's files, Ctrl-C's exit status (both algorithms)."""

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mbmpo_ray import cli
from mbmpo_ray.algorithm import rundir
from mbmpo_ray.algorithm.checkpoints import save_checkpoint

ALGOS = ["mbmpo", "mbpo"]
REPO = Path(__file__).resolve().parents[2]


def run_main(argv, capsys):
    """Exit code and stderr of ``mbmpo-ray argv`` (in this process)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def one_error_line(code, err) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.lstrip().startswith("usage: mbmpo-ray"), err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1, err
    return errors[0]


def _fake_checkpoint(path):
    Path(path).mkdir(parents=True)
    Path(path, "rllib_checkpoint.json").write_text("{}")
    Path(path, "algorithm_state.pkl").write_bytes(b"x" * 100)


@pytest.fixture
def free_port():
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (case, argv after `train --algo A --config pendulum --variant smoke`, words of the error)
BAD_TRAIN_INPUTS = [
    ("empty --output", ["--iterations", "1", "--output", ""], "--output is empty"),
    ("blank --output", ["--iterations", "1", "--output", "  "], "--output is empty"),
    ("more env runners than CPUs", ["--iterations", "1", "--num-env-runners", "64",
                                    "--output", "{out}"],
     "need 64 CPUs (64 env runners x 1 CPU) but this machine has 2: lower --num-env-runners"),
    ("model trainers than CPUs", ["--iterations", "1", "--set", "num_model_trainers=2",
                                  "--set", "num_cpus_per_model_trainer=1.5",
                                  "--output", "{out}"],
     "--set num_model_trainers=N"),
    ("unreachable --address", ["--iterations", "1", "--address", "127.0.0.1:{port}",
                               "--output", "{out}"],
     "cannot reach a Ray cluster at --address 127.0.0.1:{port}"),
    ("malformed --address", ["--iterations", "1", "--address", "nohost", "--output", "{out}"],
     "is not HOST:PORT"),
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case, argv, expected", BAD_TRAIN_INPUTS,
                         ids=[c[0] for c in BAD_TRAIN_INPUTS])
def test_bad_train_input_is_one_line_before_anything_starts(
        algo, case, argv, expected, tmp_path, free_port, monkeypatch, capsys):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)  # runs/<env id> would land here
    fill = {"out": tmp_path / "out", "port": free_port}
    argv = [a.format(**fill) for a in argv]
    t0 = time.monotonic()
    code, err = run_main(["train", "--algo", algo, "--config", "pendulum", "--variant",
                          "smoke", *argv], capsys)
    assert expected.format(**fill) in one_error_line(code, err)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("algo", ALGOS)
def test_env_without_model_functions_says_how_to_register_them(algo, capsys):
    code, err = run_main(["train", "--algo", algo, "--env", "CartPole-v1", "--iterations",
                          "1"], capsys)
    line = one_error_line(code, err)
    assert "unknown config" not in line
    assert "CartPole-v1 has no model reward/termination functions" in line
    assert "mbmpo_ray.envs.register_model_functions" in line and "--config FILE.py" in line
    assert "HalfCheetah-v5" in line and "Pendulum-v1" in line  # the supported envs
    code, err = run_main(["train", "--algo", algo, "--env", "NoSuchEnv-v0"], capsys)
    assert "not a gymnasium env id" in one_error_line(code, err)


def test_unreachable_address_fails_fast_in_a_fresh_process(free_port, tmp_path):
    """`--address 127.0.0.1:1` hung for minutes in ray.init (killed after 155 s)."""
    res = subprocess.run(
        [sys.executable, "-m", "mbmpo_ray", "train", "--config", "pendulum", "--variant",
         "smoke", "--iterations", "1", "--address", f"127.0.0.1:{free_port}",
         "--output", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=90)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"cannot reach a Ray cluster at --address 127.0.0.1:{free_port}" in res.stderr


# ------------------------------------------------------------------------- run directories
def _args(**kw) -> argparse.Namespace:
    ns = dict(algo=None, config="pendulum", env=None, variant="smoke", set=None, seed=None,
              num_env_runners=None, stop_timesteps=None, iterations=1, output=None,
              checkpoint_every=1, keep_checkpoints=2, resume=False, overwrite=False,
              address=None, no_cpu_check=False)
    return argparse.Namespace(**{**ns, **kw})


def _finished_run(run: Path) -> None:
    rundir.prepare_new_run(run)
    rundir.write_run_info(run, {"algo": "mbmpo", "config": "pendulum", "variant": "smoke"})
    (run / "progress.csv").write_text("iteration,real_steps\n1,100\n")
    (run / "learning_curve.png").write_bytes(b"png")
    (run / "events.out.tfevents.1.host").write_bytes(b"tb")
    save_checkpoint(_fake_checkpoint, run, 1)


def test_overwrite_removes_only_what_the_run_wrote(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "best").mkdir()  # the user's copy of a good checkpoint
    (run / "checkpoints" / "best" / "policy.pt").write_text("mine too")
    (run / "checkpoints" / "README").write_text("and mine")
    with pytest.raises(rundir.RunDirError, match="--resume to continue it or --overwrite"):
        rundir.prepare_new_run(run)
    rundir.prepare_new_run(run, overwrite=True)
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == ["checkpoints", "checkpoints/README", "checkpoints/best",
                    "checkpoints/best/policy.pt", "notes.txt"]


def test_overwrite_of_a_run_without_user_files_leaves_an_empty_directory(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    assert rundir.prepare_new_run(run, overwrite=True) == run.absolute()
    assert list(run.iterdir()) == []


def test_leftovers_of_a_run_that_never_finished_an_iteration_are_replaced(tmp_path):
    """A job that failed at start (e.g. its working dir vanished) left run.json, a header-only
    progress.csv and a TensorBoard file: the retry must not be refused."""
    run = tmp_path / "run"
    rundir.prepare_new_run(run)
    rundir.write_run_info(run, {"algo": "mbmpo"})
    (run / "progress.csv").write_text("iteration,real_steps\n")
    (run / "events.out.tfevents.1.host").write_bytes(b"")
    (run / "notes.txt").write_text("mine")
    assert not rundir.holds_run(run)
    rundir.prepare_new_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    # a run with a row (or a checkpoint) is one
    (run / "progress.csv").write_text("iteration,real_steps\n1,100\n")
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        rundir.prepare_new_run(run)


def test_resume_checkpoint_is_absolute(tmp_path, monkeypatch):
    """RLlib's restore_from_path fails on a relative path (`ArrowInvalid: URI has empty
    scheme`), and the default output runs/<env id> is relative."""
    monkeypatch.chdir(tmp_path)
    _finished_run(Path("runs/x"))
    ckpt = rundir.resume_checkpoint("runs/x")
    assert ckpt.is_absolute() and ckpt == (tmp_path / "runs/x/checkpoints/iter_000001")


@pytest.mark.parametrize("algo", ALGOS)
def test_resume_finds_the_default_output_and_paths_are_absolute(algo, tmp_path, monkeypatch):
    """`train --config pendulum` writes runs/Pendulum-v1 and says "already holds a run ...;
    pass --resume": the same command with --resume continues it."""
    monkeypatch.chdir(tmp_path)
    run = Path("runs/Pendulum-v1")
    _finished_run(run)
    rundir.write_run_info(run, {"algo": algo, "config": "pendulum", "variant": "smoke"})
    with pytest.raises(cli.CLIError, match="already holds a run"):
        cli._prepare_run(_args(algo=algo))
    config, _, out, ckpt = cli._prepare_run(_args(resume=True, iterations=2))
    assert out == tmp_path / run and ckpt == out / "checkpoints" / "iter_000001"
    assert type(config).__name__ == ("MBPOConfig" if algo == "mbpo" else "MBMPOConfig")
    # a relative --output is made absolute too
    _, _, out, ckpt = cli._prepare_run(_args(config=None, output=str(run), resume=True,
                                             iterations=2))
    assert out == tmp_path / run and ckpt.is_absolute()
    with pytest.raises(cli.CLIError, match="--resume needs --output DIR"):
        cli._prepare_run(_args(config=None, resume=True))


# --------------------------------------------------------------------------------- Ctrl-C
class _FakeAlgo:
    """train() once, then Ctrl-C in the second train()."""

    def __init__(self, out):
        self.iteration, self.stopped, self.out = 0, False, out

    def train(self):
        if self.iteration == 1:
            raise KeyboardInterrupt
        self.iteration += 1
        return {"training_iteration": self.iteration, "num_real_steps_lifetime": 100}

    def stop(self):
        self.stopped = True


class _FakeReporter:
    def __init__(self, *a, **kw):
        pass

    def __getattr__(self, name):
        return lambda *a, **kw: None

    def finish(self, status, **kw):
        _FakeReporter.final = status


@pytest.mark.parametrize("algo", ALGOS)
def test_ctrl_c_exits_130_after_saving(algo, tmp_path, monkeypatch, capsys):
    import mbmpo_ray.reporting as reporting

    saved, made = [], []

    def build(config, ckpt):
        made.append(_FakeAlgo(tmp_path / "out"))
        return made[-1]

    monkeypatch.setattr(cli, "_init_ray", lambda *a, **kw: None)
    monkeypatch.setattr(cli, "_check_cpus", lambda *a, **kw: None, raising=False)
    monkeypatch.setattr(cli, "_build_or_restore", build)
    monkeypatch.setattr(cli, "_save", lambda algo, out, args: saved.append(algo.iteration))
    monkeypatch.setattr(reporting, "TrainingReporter", _FakeReporter)
    monkeypatch.setattr(reporting, "run_banner", lambda *a, **kw: "")
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    code = cli.main(["train", "--algo", algo, "--config", "pendulum", "--variant", "smoke",
                     "--iterations", "5", "--output", str(tmp_path / "out")])
    assert code == 130
    assert saved == [1]  # iteration 1's checkpoint; the interrupted iteration 2 saves none
    assert made[0].stopped and _FakeReporter.final == "interrupted"
    assert "interrupted" in capsys.readouterr().err
