"""benchmarks/exp_sample_efficiency.py: a run cut off mid-way continues from its checkpoint."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import exp_sample_efficiency as exp  # noqa: E402


class _CutOff(Exception):
    pass


def _data_rows(path: Path) -> list[list[float]]:
    lines = path.read_text().splitlines()[1:]
    return [[float(x) for x in line.split(",")] for line in lines if not line.startswith("#")]


def test_sac_run_cut_off_resumes_with_its_replay_buffer(ray_local, tmp_path, monkeypatch):
    """SAC on Pendulum, checkpoint after every iteration, killed (an exception) in its 3rd
    iteration, then run again: the second run restores the policy, RLlib's counters and the
    replay buffer, keeps the 2 finished rows and goes on to the budget."""
    real = exp._steps_and_return
    calls = {"n": 0}

    def cut_after_two(method, result):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _CutOff
        return real(method, result)

    monkeypatch.setattr(exp, "_steps_and_return", cut_after_two)
    with pytest.raises(_CutOff):
        exp.run_one("pendulum", "sac", 0, budget=10_000, results=tmp_path, checkpoint_s=0)
    csv_path = tmp_path / "pendulum_sac_seed0.csv"
    first_text = csv_path.read_text()
    first = _data_rows(csv_path)
    assert len(first) == 2 and not exp.is_done(csv_path)
    ckpt_dir = tmp_path / "checkpoints" / "pendulum_sac_seed0"
    assert (ckpt_dir / "checkpoint" / exp._REPLAY_BUFFER).is_file()

    # a kill (SIGKILL, no flush) during the first iteration after resuming would leave the
    # CSV as it is on disk then: it must hold the kept rows already
    on_disk = []

    def look_at_disk(method, result):
        on_disk.append(csv_path.read_text())
        return real(method, result)

    restored = {}
    real_resume = exp._resume

    def spy_resume(algo, method, ckpt, path):
        out = real_resume(algo, method, ckpt, path)
        restored["buffer_steps"] = algo.local_replay_buffer.get_num_timesteps()
        return out

    monkeypatch.setattr(exp, "_steps_and_return", look_at_disk)
    monkeypatch.setattr(exp, "_resume", spy_resume)
    budget = int(first[-1][0]) + 1  # one more iteration after the checkpoint finishes it
    exp.run_one("pendulum", "sac", 0, budget=budget, results=tmp_path, checkpoint_s=0)

    assert exp.is_done(csv_path)
    text = csv_path.read_text()
    assert "# resumed after row 2" in text
    assert text.startswith(first_text)  # the rows before the cut are kept as they were
    assert b"\r" not in csv_path.read_bytes()  # one line ending throughout, resumed or not
    assert on_disk[0].startswith(first_text) and "# resumed after row 2" in on_disk[0]
    rows = _data_rows(csv_path)
    assert len(rows) >= 3 and rows[-1][0] >= budget
    steps = [r[0] for r in rows]
    assert steps == sorted(steps)  # RLlib's lifetime counter went on from the checkpoint
    assert rows[2][2] >= first[1][2]  # wall-clock counts on, not from zero
    assert restored["buffer_steps"] == first[-1][0]  # every sampled step is back in the buffer
    assert not ckpt_dir.exists()  # a finished run keeps only its CSV


def test_mbpo_run_stops_at_its_wall_budget(ray_local, tmp_path, monkeypatch):
    """An MBPO run (smoke sizes) capped by ``max_minutes`` ends after the iteration that
    crosses the cap, and its CSV says that the wall budget, not the step budget, ended it."""
    import tune_configs

    def smoke_mbpo(env_name, seed):
        return tune_configs.load_config("hopper", "smoke", algo="mbpo", seed=seed).build_algo()

    monkeypatch.setitem(exp.BUILDERS, "mbpo", smoke_mbpo)
    path = exp.run_one("hopper_h1000", "mbpo", 0, budget=10**9, results=tmp_path,
                       max_minutes=1e-4)
    lines = path.read_text().splitlines()
    assert lines[-1].startswith("# done (wall budget 0.0001 min)")
    rows = [line.split(",") for line in lines[1:-1]]
    assert len(rows) == 1 and int(rows[0][0]) > 0  # one iteration: the real steps it took


def test_sweep_parts_report_together(tmp_path, monkeypatch):
    """A sweep run in parts (``report_as``; a part may run some of the seeds): each part's
    trials land in the whole's directory and the whole's report counts every part's
    trials."""
    import json

    import exp_sweeps

    monkeypatch.setattr(exp_sweeps, "RESULTS", tmp_path / "results")
    storage = tmp_path / "tune"
    for part, b_max in (("model_bias_b0", 0.0), ("model_bias_b0.5_seed0", 0.5)):
        for alpha in (0.0, 0.001):
            trial = storage / f"mbmpo_{part}" / f"trial_{alpha}"
            trial.mkdir(parents=True)
            trial.joinpath("params.json").write_text(json.dumps(
                {"seed": 0, "mbmpo_point": {"inner_lr": alpha, "model_bias_max": b_max}}))
            trial.joinpath("progress.csv").write_text(
                "num_real_steps_lifetime,episode_return_mean,time_total_s\n"
                + "".join(f"{4000 * i},{10 * i + alpha},{60 * i}\n" for i in range(1, 9)))
    first = exp_sweeps.export("model_bias_b0", storage)
    both = exp_sweeps.export("model_bias_b0.5_seed0", storage)
    assert [p.name for p in first] == ["inner_lr=0.0,model_bias_max=0.0_seed0.csv",
                                      "inner_lr=0.001,model_bias_max=0.0_seed0.csv"]
    assert len(both) == 4 and all(p.parent.name == "model_bias" for p in both)
    body = exp_sweeps.report("model_bias", both, 8, "mbmpo_point",
                             ["model_bias_b0", "model_bias_b0.5_seed0"], seeds=2)
    assert "model_bias_max=0.5" in body and "`model_bias_b0.5_seed0`" in body
    assert "| 1/2 " in body  # one of the whole's two seeds per setting so far
    assert (tmp_path / "results" / "model_bias.png").exists()
    # a part counts as finished (``--run`` skips it) once every point x seed has all its rows
    assert not exp_sweeps.finished("model_bias_b0")  # seed 1 missing
    for p in first:
        p.with_name(p.name.replace("_seed0", "_seed1")).write_text(p.read_text())
    assert exp_sweeps.finished("model_bias_b0")
    # a one-seed part needs only its seed's rows
    assert exp_sweeps.finished("model_bias_b0.5_seed0")
    assert not exp_sweeps.finished("model_bias_b0.5_seed1")
