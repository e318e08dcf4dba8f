"""The mbmpo-ray CLI end to end on tiny configs."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mbmpo_ray.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_bad_arguments_give_usage_not_traceback(capsys):
    assert main(["train", "--config", "nosuchenv", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert "usage: mbmpo-ray" in err and "unknown config 'nosuchenv'" in err
    assert "Traceback" not in err
    assert main(["train", "--config", "pendulum", "--set", "num_tasks=3"]) == 2
    assert "multiple of ensemble_size" in capsys.readouterr().err
    assert main(["train", "--config", "pendulum", "--set", "bogus=1"]) == 2
    assert "unknown --set key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--iterations", "notanumber"])
    assert e.value.code == 2


@pytest.mark.usefixtures("ray_local")
def test_train_checkpoint_evaluate_plot(tmp_path, capsys):
    out = tmp_path / "run_seed0"
    assert main(["train", "--config", "pendulum", "--variant", "smoke", "--iterations", "2",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "iter   2" in printed and "real steps" in printed
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert float(rows[-1]["real_steps"]) == 200
    assert (out / "checkpoint" / "algorithm_state.pkl").exists() or any(
        (out / "checkpoint").iterdir())
    assert (out / "learning_curve.png").stat().st_size > 1000

    assert main(["evaluate", str(out / "checkpoint"), "--episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "pre-update policy: mean return" in printed and "adapted policies" in printed

    # a short video of the policy (GIF: needs only imageio, which gymnasium installs)
    cheetah = tmp_path / "cheetah"
    assert main(["train", "--config", "halfcheetah", "--variant", "smoke", "--iterations", "1",
                 "--output", str(cheetah)]) == 0
    gif = tmp_path / "cheetah.gif"
    assert main(["evaluate", str(cheetah / "checkpoint"), "--episodes", "1",
                 "--video", str(gif)]) == 0
    import imageio.v2 as imageio

    assert len(imageio.mimread(gif)) == 21  # reset frame + horizon 20
    capsys.readouterr()

    png = tmp_path / "curves.png"
    assert main(["plot", str(out), str(out), "--out", str(png)]) == 0
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100


def _tune(storage, *extra):
    return [sys.executable, "-m", "mbmpo_ray", "tune", "smoke", "--storage", str(storage),
            "--max-concurrent", "1", *extra]


def test_sweep_is_resumable_after_interruption(tmp_path):
    """Interrupt a 2-trial sweep after its first trial, then `--resume` finishes the other."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_tune(tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "mbmpo_smoke"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            done = [p for p in exp.glob("MBMPO_*/result.json")
                    if len(p.read_text().splitlines()) >= 2]
            if done:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "sweep finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = [p for p in exp.glob("MBMPO_*/result.json")
                if len(p.read_text().splitlines()) >= 2]
    assert len(finished) == 1, "expected exactly one finished trial before resuming"

    res = subprocess.run(_tune(tmp_path, "--resume"), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout
    table = res.stdout.split("real steps")[-1]
    assert table.count(" ok") == 2, res.stdout[-2000:]
