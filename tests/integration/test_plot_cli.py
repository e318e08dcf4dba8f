"""`mbmpo-ray plot` end to end (no Ray): malformed CSVs refused with one line and a non-zero
exit, Tune trial directories plotted, runs on different envs kept apart."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbmpo_ray.cli import main
from mbmpo_ray.reporting import ProgressCSV, column_set, load_run, row_from_result
from mbmpo_ray.reporting.tblog import flatten

REPO = Path(__file__).resolve().parents[2]


def result(it: int, algo: str, random: float | None = None) -> dict:
    """A train() result of ``algo`` with the keys its column set reads."""
    res = {"training_iteration": it, "num_real_steps_lifetime": 250.0 * it,
           "episode_return_mean": -500.0 + 50 * it, "episode_return_std": 20.0,
           "random_return_mean": random if it == 1 and random is not None else float("nan"),
           "time_this_iter_s": 10.0, "model": {"val_loss_mean": 0.01}}
    if algo == "mbpo":
        res.update(rollout_length=1.0, num_sac_updates_lifetime=5000.0 * it,
                   learners={"default_policy": {"qf_loss": 2.0, "alpha_value": 0.1}})
    else:
        res.update(post_adaptation_return_mean=-480.0 + 50 * it)
    return res


def train_run(d: Path, algo: str, env: str, random: float) -> Path:
    d.mkdir(parents=True)
    log = ProgressCSV(d / "progress.csv", columns=column_set(algo))
    for it in (1, 2, 3):
        log.write(row_from_result(result(it, algo, random), 5.0 * it, algo=algo))
    log.close()
    (d / "run.json").write_text(json.dumps({"algo": algo, "config": None, "env": env}))
    return d


def tune_trial(root: Path, trainable: str, seed: int) -> Path:
    """A Tune trial directory: params.json and Tune's progress.csv (RLlib's result keys,
    flattened with '/', as ray.tune.logger.CSVLoggerCallback writes them)."""
    d = root / f"{trainable}_1a2b3_0000{seed}_{seed}_seed={seed}_2026-12-07_12-00-0{seed}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"env": "Pendulum-v1", "seed": seed}))
    algo = "mbpo" if trainable == "MBPO" else "mbmpo"
    rows = [dict(flatten({**result(it, algo, -1200.0), "time_total_s": 10.0 * it,
                          "trial_id": f"1a2b3_0000{seed}"})) for it in (1, 2, 3)]
    with open(d / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d


@pytest.mark.parametrize("content", [
    "a,b,c\n1,2,3\n",
    "iteration,real_steps\n1,100\n",
    "this is not a progress file\n",
    "",
    "training_iteration,episode_return_mean\n1,-5\n",
])
def test_malformed_csv_exits_non_zero_with_one_line(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.csv").write_text(content)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mbmpo-ray plot: error:")]
    assert len(errors) == 1 and "progress.csv" in errors[0], err
    assert "Traceback" not in err
    assert not (run / "learning_curve.png").exists()


def test_binary_file_exits_non_zero(tmp_path, capsys):
    bad = tmp_path / "progress.csv"
    bad.write_bytes(bytes(range(256)) * 8)
    assert main(["plot", str(bad)]) == 2
    assert "not a CSV text file" in capsys.readouterr().err


def test_exit_status_of_the_command(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.csv").write_text("garbage\n\x01\x02\n")
    res = subprocess.run([sys.executable, "-m", "mbmpo_ray", "plot", str(run)], cwd=REPO,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "not a progress.csv" in res.stderr


@pytest.mark.parametrize("trainable", ["MBPO", "MBMPO"])
def test_tune_trial_directories(tmp_path, capsys, trainable):
    trials = [tune_trial(tmp_path / "sweep", trainable, s) for s in (0, 1)]
    png = tmp_path / "curves.png"
    assert main(["plot", *map(str, trials), "--out", str(png)]) == 0, capsys.readouterr().err
    assert png.stat().st_size > 10_000
    assert "learning curves of 2 runs" in capsys.readouterr().out
    assert load_run(trials[0]).algo == trainable.lower()


def test_runs_on_different_envs(tmp_path, capsys):
    a = train_run(tmp_path / "a", "mbmpo", "Pendulum-v1", -1200.0)
    b = train_run(tmp_path / "b", "mbpo", "HalfCheetah-v5", -300.0)
    assert main(["plot", str(a), str(b)]) == 0, capsys.readouterr().err
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000


def test_a_train_run_of_each_algorithm(tmp_path, capsys):
    for algo in ("mbmpo", "mbpo"):
        run = train_run(tmp_path / algo, algo, "Pendulum-v1", -1200.0)
        assert main(["plot", str(run)]) == 0, capsys.readouterr().err
        assert (run / "learning_curve.png").exists()
