"""What `mbmpo-ray train` shows and writes (mbmpo_ray.progress, mbmpo_ray.plotting): no Ray."""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest

from mbmpo_ray import progress
from mbmpo_ray.plotting import default_output, learning_curve_figure, plot_runs
from mbmpo_ray.progress import (
    CSV_COLUMNS,
    HEADER,
    LINE_WIDTH,
    PlainDisplay,
    ProgressCSV,
    RichDisplay,
    TrainingReporter,
    csv_cell,
    eta_seconds,
    progress_line,
    quiet_ray,
    row_from_result,
    summary_items,
)

REPO = Path(__file__).resolve().parents[2]


def fake_result(it: int, *, random: bool = False, ret: float = -500.0, big: bool = False):
    """A train() result with the keys MBMPO logs (see README "Results of train()")."""
    scale = 1e5 if big else 1.0
    return {
        "training_iteration": it,
        "num_real_steps_lifetime": float(1000 * it),  # RLlib's metrics are floats
        "num_imagined_steps_lifetime": float(4_000_000 * it),
        "num_eval_steps_lifetime": float(400 * it),
        "episode_return_mean": (ret + 10 * it) * scale,
        "episode_return_std": 12.5 * scale,
        "post_adaptation_return_mean": (ret + 12 * it) * scale,
        "post_adaptation_return_std": 20.25 * scale,
        "sample_return_mean": -1200.0 if random else ret * scale,
        "random_return_mean": -1200.0 if random else math.nan,
        "model": {"val_loss_mean": 0.0123 * scale, "epochs_mean": 7.0},
        "learners": {"default_policy": {"pre_return_mean": -400.0, "post_return_mean": -390.0,
                                        "kl_after": 0.009}},
        "timers": {"sample_real": 1.5 * scale, "fit_models": 20.25 * scale,
                   "meta_update": 95.0 * scale, "evaluate_real": 2.0},
        "time_this_iter_s": 118.75 * scale,
    }


# ------------------------------------------------------------------ progress.csv
def test_csv_cells_have_one_missing_value_convention_and_integer_counts():
    for missing in (None, math.nan, float("inf"), "n/a"):
        assert csv_cell("return_pre_update", missing) == ""
        assert csv_cell("real_steps", missing) == ""
    assert csv_cell("real_steps", 1000.0) == "1000"
    assert csv_cell("iteration", np.float64(3.0)) == "3"
    assert csv_cell("imagined_steps", 4e6) == "4000000"
    assert csv_cell("return_pre_update", -144.76272005777966) == "-144.763"
    assert csv_cell("model_val_loss", 0.000123456789) == "0.000123457"


def test_progress_csv_rows(tmp_path):
    path = tmp_path / "progress.csv"
    log = ProgressCSV(path)
    log.write(row_from_result(fake_result(1, random=True), elapsed_s=130.5))
    log.write(row_from_result(fake_result(2), elapsed_s=250.25))
    log.close()
    text = path.read_text()
    assert "nan" not in text.lower() and ".0," not in text
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert [r["iteration"] for r in rows] == ["1", "2"]
    assert [r["real_steps"] for r in rows] == ["1000", "2000"]
    assert rows[0]["elapsed_s"] == "130.5"
    # each return is in the column of the policy that produced it
    assert float(rows[1]["return_pre_update"]) == -480.0
    assert float(rows[1]["return_adapted"]) == -476.0
    assert float(rows[1]["return_adapted_std"]) == 20.25
    assert rows[0]["return_random"] == "-1200" and rows[1]["return_random"] == ""
    assert rows[0]["return_sampled"] == "-1200" and rows[1]["return_sampled"] == "-500"
    assert rows[1]["kl"] == "0.009" and rows[1]["time_meta"] == "95"


def test_progress_csv_append_keeps_rows_and_continues_elapsed(tmp_path):
    path = tmp_path / "progress.csv"
    log = ProgressCSV(path)
    log.write(row_from_result(fake_result(1, random=True), elapsed_s=100.0))
    log.close()
    log = ProgressCSV(path, append=True)
    assert log.elapsed_offset == 100.0 and len(log.previous) == 1
    log.write(row_from_result(fake_result(2), elapsed_s=log.elapsed_offset + 50))
    log.close()
    rows = list(csv.DictReader(open(path, newline="")))
    assert [r["iteration"] for r in rows] == ["1", "2"]
    assert rows[1]["elapsed_s"] == "150"
    # without append the file starts over
    ProgressCSV(path).close()
    assert path.read_text().strip() == ",".join(CSV_COLUMNS)


def test_progress_csv_append_converts_an_old_file(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_text("iteration,real_steps,episode_return_mean,post_adaptation_return_mean,"
                    "random_return_mean\n1,100.0,-50.8,,-133.2\n2,200.0,-144.7,-139.1,nan\n")
    ProgressCSV(path, append=True).close()
    rows = list(csv.DictReader(open(path, newline="")))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["real_steps"] for r in rows] == ["100", "200"]
    assert rows[1]["return_pre_update"] == "-144.7" and rows[1]["return_random"] == ""


def test_readme_documents_every_csv_column_and_result_key():
    readme = (REPO / "README.md").read_text()
    for column in CSV_COLUMNS:
        assert f"`{column}`" in readme, column
    for key in ("episode_return_mean", "episode_return_std", "post_adaptation_return_mean",
                "post_adaptation_return_std", "sample_return_mean", "random_return_mean",
                "learners/default_policy/", "env_runners/", "num_eval_steps_lifetime"):
        assert key in readme, key


# ------------------------------------------------------------------ the screen
@pytest.mark.parametrize("big", [False, True])
def test_progress_line_fits_100_columns(big):
    for row in (row_from_result(fake_result(999, big=big), 1e6), {"iteration": 1}):
        for eta in (None, 0.0, 5.0, 3 * 3600.0, 1e7):
            line = progress_line(row, eta)
            assert len(line) <= LINE_WIDTH, line
    for header_line in HEADER.splitlines():
        assert len(header_line) <= LINE_WIDTH
    line = progress_line(row_from_result(fake_result(2), 10.0), 600.0)
    assert line.startswith("iter   2")
    assert "-480.0 ±12.5" in line and "-476.0 ±20.2" in line and "10m00s" in line
    # columns line up with the header's
    header = HEADER.splitlines()[1]
    assert header.index("ETA") + 3 == len(header) == len(line.rstrip())


def test_eta():
    times = [10.0, 30.0, 20.0, 40.0]  # the last three: 30 s per iteration
    kw = dict(stop_steps=10_000, stop_iterations=None, steps_per_iter=1000)
    assert eta_seconds(times, iteration=4, real_steps=4000, **kw) == 6 * 30.0
    assert eta_seconds(times, iteration=10, real_steps=10_000, **kw) == 0.0
    # whichever stop comes first
    assert eta_seconds(times, iteration=4, real_steps=4000, stop_steps=10_000,
                       stop_iterations=5, steps_per_iter=1000) == 30.0
    assert eta_seconds(times, iteration=4, real_steps=4000, stop_steps=None,
                       stop_iterations=None, steps_per_iter=1000) is None


def test_summary_has_best_and_final_with_spread_steps_time_and_files():
    rows = [row_from_result(fake_result(i, random=i == 1), 100.0 * i) for i in (1, 2, 3)]
    rows[1]["return_pre_update"] = 50.0  # the best one
    title, items = summary_items(rows, wall_s=3725.0, status="finished",
                                 files={"checkpoint": "runs/x/checkpoint"})
    assert title == "finished: 3 iterations, 3,000 real steps in 1h02m"
    d = dict(items)
    assert d["best pre-update return"].startswith("50.0 ±12.5   (iteration 2, 2,000 real")
    assert d["final pre-update return"] == "-470.0 ±12.5"
    assert d["final adapted return"].startswith("-464.0 ±20.2")
    assert d["random-action return"].startswith("-1200")
    assert d["real env steps"] == "3,000 learned from, 1,200 in evaluation"
    assert d["imagined steps"] == "12,000,000"
    assert d["wall clock"].startswith("1h02m, 5m56s in iterations (sample 1%, fit 17%")
    assert d["checkpoint"] == "runs/x/checkpoint"


def run_reporter(tmp_path, display, **kw):
    rep = TrainingReporter(tmp_path, stop_steps=4000, stop_iterations=None,
                           steps_per_iter=1000, tensorboard=True, **kw)
    rep.display = display
    rep.start("MB-MPO on Test-v0")
    rep.status("iteration 1")
    for i in (1, 2, 3):
        rep.record(fake_result(i, random=i == 1))
    rep.message("a message")
    png = rep.finish("finished", files={"checkpoint": tmp_path / "checkpoint"})
    return rep, png


def test_plain_reporter_writes_every_file_and_prints_the_summary(tmp_path):
    out = io.StringIO()
    rep, png = run_reporter(tmp_path, PlainDisplay(out))
    text = out.getvalue()
    assert text.count(HEADER) == 1 and "iter   3" in text and "a message" in text
    assert "best pre-update return" in text and str(tmp_path / "progress.csv") in text
    assert all(len(line) <= LINE_WIDTH for line in text.splitlines()
               if line.startswith("iter"))
    assert png == tmp_path / "learning_curve.png" and png.stat().st_size > 10_000
    assert len(list(csv.DictReader(open(tmp_path / "progress.csv")))) == 3
    assert list(tmp_path.glob("events.out.tfevents.*"))  # TensorBoard


def test_rich_reporter_fits_a_100_column_terminal(tmp_path):
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=True, color_system=None)
    run_reporter(tmp_path, RichDisplay(console), plain=False)
    # what stays on the screen: each line after its last carriage return, without escapes
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line.split("\r")[-1])
             for line in buf.getvalue().split("\n")]
    assert any(line.startswith("iter   3") for line in lines)
    assert any("best pre-update return" in line for line in lines)
    assert max(len(line) for line in lines) <= LINE_WIDTH


def test_plain_when_not_a_terminal():
    assert progress.use_plain(None, io.StringIO()) is True
    assert progress.use_plain(False, io.StringIO()) is False
    assert progress.use_plain(True, None) is True


# ------------------------------------------------------------------ the plot
def test_plot_labels_policies_draws_the_random_baseline_and_writes_next_to_its_input(tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / "runs" / f"pend_seed{seed}"
        run.mkdir(parents=True)
        log = ProgressCSV(run / "progress.csv")
        for i in (1, 2, 3):
            log.write(row_from_result(fake_result(i, random=i == 1), 10.0 * i))
        log.close()
        runs.append(run)
    assert default_output(runs[:1]) == runs[0].resolve() / "learning_curve.png"
    assert default_output(runs) == (tmp_path / "runs").resolve() / "learning_curves.png"
    assert plot_runs(runs) == (tmp_path / "runs").resolve() / "learning_curves.png"

    fig = learning_curve_figure(runs[:1])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pre-update meta-policy θ" in labels
    assert "adapted θ' (θ after one inner step, same iteration)" in labels
    assert "random actions (baseline)" in labels
    baseline = [ln for ln in ax.get_lines() if ln.get_label() == "random actions (baseline)"]
    assert baseline[0].get_ydata()[0] == pytest.approx(-1200.0)
    pre = [ln for ln in ax.get_lines() if ln.get_label() == "pre-update meta-policy θ"][0]
    np.testing.assert_allclose(pre.get_xdata(), [1000, 2000, 3000])
    np.testing.assert_allclose(pre.get_ydata(), [-490, -480, -470])


# ------------------------------------------------------------------ Ray's noise
def test_quiet_ray_drops_the_start_up_noise_only():
    def passes(name, msg):
        logger = logging.getLogger(name)
        return bool(logger.filter(logger.makeRecord(name, logging.WARNING, "f", 1, msg, (), None)))

    try:
        kwargs = quiet_ray(verbose=False)
        assert kwargs == {"log_to_driver": False, "logging_level": logging.WARNING}
        quiet_ray(verbose=False)  # idempotent
        for name, fragment in progress.RAY_NOISE:
            assert not passes(name, f"... {fragment} ...")
            assert passes(name, "something else worth reading")
            assert sum(1 for f in logging.getLogger(name).filters
                       if isinstance(f, progress._DropMessages)) == 1
        assert quiet_ray(verbose=True) == {}
    finally:  # leave the loggers as other tests expect them
        for name, _ in progress.RAY_NOISE:
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, progress._DropMessages)]:
                logger.removeFilter(f)


# ------------------------------------------------------------------ the help
def test_every_cli_option_has_help_that_states_its_default():
    import argparse

    from mbmpo_ray.cli import make_parser

    parser = make_parser()
    for name, sub in parser.subcommands.items():
        helptext = " ".join(sub.format_help().split())
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{label} has no help"
            if action.option_strings and action.default not in (None, False):
                # shown by the formatter, or stated in the help itself
                assert f"(default: {action.default})" in helptext or \
                    "default" in action.help, label
            elif action.option_strings and not isinstance(action, argparse._StoreTrueAction):
                assert "default" in action.help, f"{label} does not say what happens unset"
    train = " ".join(parser.subcommands["train"].format_help().split())
    assert "--seed SEED random seed of the run (default: the config's, 0)" in train
    assert "save a checkpoint every N iterations, 0: only at the end (default: 1)" in train


def test_mbpo_line_banner_and_summary_render_missing_values_as_dashes(tmp_path):
    """MBPO results (no adapted policies, no meta update) never crash the display."""
    from types import SimpleNamespace

    result = {"training_iteration": 2, "num_real_steps_lifetime": 5250.0,
              "episode_return_mean": -150.0, "train_return_mean": -300.0,
              "rollout_length": 1.0, "model": {"val_loss_mean": 0.02},
              "learners": {"default_policy": {"qf_loss": 3.5, "alpha_value": 0.2}},
              "timers": {"sample_real": 1.0, "fit_models": 2.0, "model_rollouts": 0.5,
                         "sac_updates": 30.0, "evaluate_real": 0.2},
              "time_this_iter_s": 34.0}
    for res in (result, {}, {"training_iteration": 1}):
        row = row_from_result(res)
        line = progress.mbpo_progress_line(row, None)
        assert len(line) <= LINE_WIDTH and "nan" not in line
    row = row_from_result(result)
    assert row["return_sampled"] == -300.0 and row["return_adapted"] is None
    assert "3.5000" in progress.mbpo_progress_line(row, 60.0)
    config = SimpleNamespace(model_env_id="Hopper-v5", ensemble_size=7, num_elites=5,
                             rollouts_per_step=400, rollout_schedule=(20, 100, 1, 15),
                             real_steps_per_iter=250, initial_random_steps=5000,
                             updates_per_step=20, real_ratio=0.05, horizon=None)
    banner = progress.run_banner(config, 100_000, None, tmp_path)
    assert banner.startswith("MBPO on Hopper-v5") and "5,000 random steps" in banner
    title, items = summary_items([row], wall_s=40.0, files={}, status="finished", algo="mbpo")
    labels = dict(items)
    assert "final adapted return" not in labels and "meta" not in labels["wall clock"]
    assert labels["final return"] == "-150.0"
