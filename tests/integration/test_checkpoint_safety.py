"""Checkpoints of both algorithms: ``save_to_path`` is atomic (SIGKILLs at random moments
always leave a complete checkpoint), every file is checksummed (a same-size corruption is
refused), and each algorithm refuses the other's checkpoints with one clear error through
every entry point."""

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
from conftest import smoke_config

from mbmpo_ray.algorithm import checkpoints as ck

# Saves the checkpoint SOURCE into DEST again and again through save_atomically, copying it
# file by file as save_to_path writes (checkpoints.py loads without Ray: starts in ~0.1 s).
SAVER = textwrap.dedent("""
    import importlib.util, os, shutil, sys
    spec = importlib.util.spec_from_file_location("ck", sys.argv[1])
    ck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ck)
    source, dest = sys.argv[2], sys.argv[3]

    def write(path):
        for dirpath, _, files in os.walk(source):
            rel = os.path.relpath(dirpath, source)
            os.makedirs(os.path.join(path, rel), exist_ok=True)
            for name in files:
                shutil.copyfile(os.path.join(dirpath, name), os.path.join(path, rel, name))

    n = 0
    while True:
        ck.save_atomically(write, dest)
        n += 1
        print(n, flush=True)
""")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, ray_local):
    """One saved checkpoint of each algorithm after one smoke iteration, by name."""
    out = {}
    for name in ("mbmpo", "mbpo"):
        algo = smoke_config(name).build_algo()
        try:
            algo.train()
            out[name] = Path(algo.save_to_path(str(tmp_path_factory.mktemp(name) / "ckpt")))
        finally:
            algo.stop()
    return out


def _algo_class(name):
    from mbmpo_ray import MBMPO, MBPO

    return {"mbmpo": MBMPO, "mbpo": MBPO}[name]


def test_saved_checkpoints_record_their_algorithm_and_checksums(checkpoints, algo_name):
    path = checkpoints[algo_name]
    manifest = ck.read_manifest(path)
    assert manifest["algo"] == algo_name == ck.checkpoint_algorithm(path)
    assert manifest["env"] == "Pendulum-v1" and len(manifest["config_fingerprint"]) == 16
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert ck.check_checkpoint(path) == path.resolve()


def test_save_to_path_killed_at_random_moments_keeps_a_complete_checkpoint(
        checkpoints, algo_name, tmp_path):
    source = checkpoints[algo_name]
    dest = tmp_path / "ckpt"
    rng = random.Random(1)
    torn = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, ck.__file__, str(source),
                                 str(dest)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "1"
            time.sleep(rng.uniform(0.0, 0.2))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        torn += not dest.exists()  # killed between the two renames
        found = ck.find_checkpoint(dest)
        assert ck.check_checkpoint(found) == dest.resolve()  # complete, every byte
    print(f"{torn} of 12 kills fell between the renames")
    algo = _algo_class(algo_name).from_checkpoint(str(dest))
    try:
        assert algo.iteration == 1 and len(algo.buffer) == algo.counters["real_steps"] > 0
    finally:
        algo.stop()


def test_a_corrupted_file_of_the_same_size_is_refused(checkpoints, algo_name, tmp_path):
    import shutil

    path = tmp_path / "ckpt"
    shutil.copytree(checkpoints[algo_name], path)
    # the learner's module weights, overwritten with NaN bytes of the same length
    target = max((p for p in path.rglob("*") if p.is_file() and "learner" in str(p)),
                 key=lambda p: p.stat().st_size)
    size = target.stat().st_size
    target.write_bytes(np.full(size, 0xFF, np.uint8).tobytes())
    assert target.stat().st_size == size
    with pytest.raises(ck.CheckpointError, match="corrupted.*checksum"):
        ck.check_checkpoint(path)
    with pytest.raises(ck.CheckpointError, match="corrupted"):
        _algo_class(algo_name).from_checkpoint(str(path))


def test_each_algorithm_refuses_the_others_checkpoint(checkpoints, algo_name):
    other = "mbpo" if algo_name == "mbmpo" else "mbmpo"
    path = checkpoints[other]
    msg = f"written by {other.upper()}, not {algo_name.upper()}.*--algo {other}"
    with pytest.raises(ck.CheckpointError, match=msg):
        _algo_class(algo_name).from_checkpoint(str(path))
    foreign = _algo_class(other).from_checkpoint(str(path))
    try:
        state = foreign.get_state()
    finally:
        foreign.stop()
    algo = smoke_config(algo_name).build_algo()
    try:
        with pytest.raises(ck.CheckpointError, match=msg):
            algo.restore_from_path(str(path))
        with pytest.raises(ck.CheckpointError, match=msg):  # a state dict too
            algo.set_state(state)
    finally:
        algo.stop()


def _cli(argv, capsys):
    from mbmpo_ray import cli

    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_cli_refuses_a_corrupted_or_foreign_checkpoint(checkpoints, algo_name, tmp_path,
                                                       capsys):
    import json
    import shutil

    other = "mbpo" if algo_name == "mbmpo" else "mbmpo"
    # a run directory whose run.json says algo_name but whose checkpoint is the other's
    run = tmp_path / "run"
    shutil.copytree(checkpoints[other], run / "checkpoints" / "iter_000001")
    (run / "progress.csv").write_text("iteration,real_steps\n1,100\n")
    (run / "run.json").write_text(json.dumps({"algo": algo_name, "config": "pendulum",
                                              "variant": "smoke", "stop_timesteps": 1000}))
    code, err = _cli(["train", "--output", str(run), "--resume", "--plain"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"written by {other.upper()}" in err and f"--algo {other}" in err
    # a checkpoint with a file changed in place: evaluate refuses it before Ray starts
    bad = tmp_path / "bad"
    shutil.copytree(checkpoints[algo_name], bad)
    target = next(p for p in sorted(bad.rglob("*.pkl")) if p.stat().st_size > 0)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    code, err = _cli(["evaluate", str(bad)], capsys)
    assert code == 2 and "corrupted" in err and "Traceback" not in err
