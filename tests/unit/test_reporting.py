"""What `mbmpo-ray train` shows and writes, and what `plot` draws (mbmpo_ray.reporting), for
MB-MPO and MBPO: no Ray."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest

from mbmpo_ray import reporting
from mbmpo_ray.reporting import (
    LINE_WIDTH,
    MBMPO_COLUMNS,
    MBMPO_LAYOUT,
    MBPO_COLUMNS,
    MBPO_LAYOUT,
    PlainDisplay,
    ProgressCSV,
    RichDisplay,
    TrainingReporter,
    csv_cell,
    default_output,
    eta_seconds,
    learning_curve_figure,
    plot_runs,
    quiet_ray,
    row_from_result,
    summary_items,
)
from mbmpo_ray.reporting.quiet import _DropMessages

CSV_COLUMNS = MBMPO_COLUMNS.names
HEADER = MBMPO_LAYOUT.header
progress_line = MBMPO_LAYOUT.line

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
    section = readme.split("### What `train` shows and writes")[1].split("\n## ")[0]
    for columns in reporting.COLUMN_SETS.values():
        for column in columns.names:
            assert f"`{column}`" in section, (columns.algo, column)
    assert MBPO_LAYOUT.header in section and MBMPO_LAYOUT.header in section
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
    assert reporting.use_plain(None, io.StringIO()) is True
    assert reporting.use_plain(False, io.StringIO()) is False
    assert reporting.use_plain(True, None) is True


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
        for name, fragment in reporting.RAY_NOISE:
            assert not passes(name, f"... {fragment} ...")
            assert passes(name, "something else worth reading")
            assert sum(1 for f in logging.getLogger(name).filters
                       if isinstance(f, _DropMessages)) == 1
        assert quiet_ray(verbose=True) == {}
    finally:  # leave the loggers as other tests expect them
        for name, _ in reporting.RAY_NOISE:
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, _DropMessages)]:
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
        row = row_from_result(res, algo="mbpo")
        line = MBPO_LAYOUT.line(row, None)
        assert len(line) <= LINE_WIDTH and "nan" not in line
    row = row_from_result(result, algo="mbpo")
    assert row["return_sampled"] == -300.0 and "return_adapted" not in row
    assert "3.5000" in MBPO_LAYOUT.line(row, 60.0)
    config = SimpleNamespace(model_env_id="Hopper-v5", ensemble_size=7, num_elites=5,
                             rollouts_per_step=400, rollout_schedule=(20, 100, 1, 15),
                             real_steps_per_iter=250, initial_random_steps=5000,
                             updates_per_step=20, real_ratio=0.05, horizon=None)
    banner = reporting.run_banner(config, 100_000, None, tmp_path)
    assert banner.startswith("MBPO on Hopper-v5") and "5,000 random steps" in banner
    title, items = summary_items([row], wall_s=40.0, files={}, status="finished", algo="mbpo")
    labels = dict(items)
    assert "final adapted return" not in labels and "meta" not in labels["wall clock"]
    assert labels["final return"] == "-150.0"


# ------------------------------------------------------------------ MBPO's own columns
def mbpo_result(it: int, *, random: bool = False, ret: float = -150.0, sampled: str =
                "sample_return_mean"):
    """A train() result with the keys MBPO logs every iteration (NaN where not measured)."""
    learner = {"qf_loss": 3.5, "policy_loss": -12.25, "alpha_value": 0.2, "logps": -1.5,
               "qf_mean": 40.0, "alpha_loss": 0.01, "td_error_mean": 0.3}
    return {
        "training_iteration": it,
        "num_real_steps_lifetime": float(250 * it + (1000 if random else 0)),
        "num_imagined_steps_lifetime": float(100_000 * it),
        "num_eval_steps_lifetime": float(2000 * it),
        "num_sac_updates_lifetime": float(5000 * it),
        "episode_return_mean": ret + 10 * it, "episode_return_std": 7.5,
        "episode_len_mean": 1000.0,
        sampled: -300.0 if it > 1 else math.nan,
        "random_return_mean": -1200.0 if random else math.nan,
        "buffer_size": float(250 * it), "model_buffer_size": float(100_000 * it),
        "rollout_length": 1.0, "epoch": it / 4,
        "model": {"val_loss_mean": 0.02, "epochs_mean": 5.0},
        "learners": {"default_policy": learner},
        "timers": {"sample_real": 1.0, "fit_models": 2.0, "model_rollouts": 0.5,
                   "sac_updates": 30.0, "sync_weights": 0.1, "evaluate_real": 0.2},
        "time_this_iter_s": 34.0,
    }


MBMPO_ONLY = ("return_adapted", "return_adapted_std", "imagined_return_pre_update",
              "imagined_return_adapted", "kl", "time_meta")


@pytest.mark.parametrize("sampled", ["sample_return_mean", "train_return_mean"])
def test_mbpo_progress_csv_has_its_own_numbers_and_no_empty_mbmpo_columns(tmp_path, sampled):
    path = tmp_path / "progress.csv"
    log = ProgressCSV(path, columns=MBPO_COLUMNS)
    for it in (1, 2):
        log.write(row_from_result(mbpo_result(it, random=it == 1, sampled=sampled),
                                  10.0 * it, algo="mbpo"))
    log.close()
    reader = csv.DictReader(open(path, newline=""))
    rows = list(reader)
    assert reader.fieldnames == MBPO_COLUMNS.names
    assert not set(MBMPO_ONLY) & set(reader.fieldnames)
    r = rows[1]
    assert r["return_eval"] == "-130" and r["return_eval_std"] == "7.5"
    assert r["time_sac"] == "30" and r["time_rollouts"] == "0.5" and r["time_sync"] == "0.1"
    assert r["qf_loss"] == "3.5" and r["policy_loss"] == "-12.25" and r["alpha"] == "0.2"
    assert r["entropy"] == "1.5" and r["q_mean"] == "40"
    assert r["rollout_length"] == "1" and r["model_buffer_size"] == "200000"
    assert r["buffer_size"] == "500" and r["sac_updates"] == "10000"
    assert r["model_steps"] == "200000" and r["real_steps"] == "500"
    assert r["return_sampled"] == "-300" and rows[0]["return_sampled"] == ""
    assert rows[0]["return_random"] == "-1200" and r["epoch"] == "0.5"
    assert r["model_val_loss"] == "0.02" and r["eval_len"] == "1000"
    # every column is measured in a full iteration: none is empty by design
    assert all(v != "" for k, v in r.items() if k != "return_random"), r
    # RLlib's name of the weight-sync timer (SYNCH_WORKER_WEIGHTS_TIMER) is read as well
    res = mbpo_result(2)
    res["timers"]["synch_weights"] = res["timers"].pop("sync_weights")
    assert row_from_result(res, algo="mbpo")["time_sync"] == 0.1


def test_every_display_field_reads_a_column_of_its_algorithm():
    for algo, layout in reporting.LAYOUTS.items():
        names = reporting.column_set(algo).names
        for field in layout.fields:
            assert set(field.columns) <= set(names), (algo, field.columns)
        for line in layout.header.splitlines():
            assert len(line) <= LINE_WIDTH
    assert set(reporting.LAYOUTS) == set(reporting.COLUMN_SETS)


def test_mbpo_reporter_writes_mbpo_columns_and_its_plot_says_mbpo(tmp_path):
    out = io.StringIO()
    rep = TrainingReporter(tmp_path, stop_steps=None, stop_iterations=3, steps_per_iter=250,
                           tensorboard=False, algo="mbpo", title="MBPO on Pendulum-v1")
    rep.display = PlainDisplay(out, layout=MBPO_LAYOUT)
    rep.start("MBPO on Pendulum-v1")
    for it in (1, 2, 3):
        rep.record(mbpo_result(it, random=it == 1))
    png = rep.finish("finished")
    text = out.getvalue()
    assert MBPO_LAYOUT.header in text and "pre-update" not in text
    assert "SAC updates" in text and "sac" in text.split("wall clock")[-1]
    header = next(csv.reader(open(tmp_path / "progress.csv")))
    assert header == MBPO_COLUMNS.names
    assert png is not None and png.stat().st_size > 10_000
    # resumed: rows kept, the same columns
    ProgressCSV(tmp_path / "progress.csv", append=True, columns=MBPO_COLUMNS).close()
    assert len(list(csv.DictReader(open(tmp_path / "progress.csv")))) == 3


def test_an_older_mbpo_progress_csv_is_converted_on_resume(tmp_path):
    """MBPO runs before its own columns wrote MB-MPO's: the return is renamed, the empty
    MB-MPO columns dropped."""
    path = tmp_path / "progress.csv"
    log = ProgressCSV(path, columns=MBMPO_COLUMNS)
    log.write(row_from_result(mbpo_result(1, random=True), 5.0, algo="mbmpo"))
    log.close()
    ProgressCSV(path, append=True, columns=MBPO_COLUMNS).close()
    rows = list(csv.DictReader(open(path, newline="")))
    assert list(rows[0]) == MBPO_COLUMNS.names
    assert rows[0]["return_eval"] == "-140" and rows[0]["model_steps"] == "100000"


# ------------------------------------------------------------------ plots of either algorithm
def write_run(d: Path, results, algo: str = "mbmpo", env: str | None = None) -> Path:
    """A run directory as `mbmpo-ray train` leaves it (progress.csv and run.json)."""
    d.mkdir(parents=True)
    log = ProgressCSV(d / "progress.csv", columns=reporting.column_set(algo))
    for i, res in enumerate(results):
        log.write(row_from_result(res, 10.0 * (i + 1), algo=algo))
    log.close()
    (d / "run.json").write_text(json.dumps({"algo": algo, "config": None, "env": env}))
    return d


def legend_and_title(runs):
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(runs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    title = ax.get_title()
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    plt.close(fig)
    return labels, title, lines


def test_mbpo_plot_labels_its_sac_policy_not_a_meta_policy(tmp_path):
    runs = [write_run(tmp_path / f"mbpo_seed{s}", [mbpo_result(i, random=i == 1)
                                                   for i in (1, 2, 3)], "mbpo", "Hopper-v5")
            for s in (0, 1)]
    labels, title, lines = legend_and_title(runs[:1])
    assert not any("meta-policy" in t or "θ" in t for t in labels), labels
    assert "SAC policy (evaluation episodes)" in labels
    assert title == "MBPO learning curve on Hopper-v5"
    np.testing.assert_allclose(lines["SAC policy (evaluation episodes)"].get_ydata(),
                               [-140, -130, -120])
    labels, title, _ = legend_and_title(runs)
    assert title.startswith("MBPO learning curve") and "MB-MPO" not in title
    assert "SAC policy (evaluation episodes) (mean of 2 seeds)" in labels
    # the algorithm from the columns when there is no run.json
    (runs[0] / "run.json").unlink()
    assert legend_and_title(runs[:1])[1] == "MBPO learning curve"


def test_plots_of_both_algorithms_are_titled_with_both(tmp_path):
    a = write_run(tmp_path / "mbmpo", [fake_result(i) for i in (1, 2)], "mbmpo", "Pendulum-v1")
    b = write_run(tmp_path / "mbpo", [mbpo_result(i) for i in (1, 2)], "mbpo", "Pendulum-v1")
    labels, title, _ = legend_and_title([a, b])
    assert title == "MB-MPO and MBPO learning curves on Pendulum-v1"
    assert "mbmpo: pre-update meta-policy θ" in labels
    assert "mbpo: SAC policy (evaluation episodes)" in labels


def test_runs_on_different_envs_get_one_baseline_each(tmp_path):
    pend = write_run(tmp_path / "a_seed0", [fake_result(1, random=True), fake_result(2)],
                     env="Pendulum-v1")
    first = {**fake_result(1, random=True), "random_return_mean": -300.0}
    cheetah = write_run(tmp_path / "a_seed1", [first, fake_result(2)], env="HalfCheetah-v5")
    labels, title, lines = legend_and_title([pend, cheetah])
    baselines = {k: ln.get_ydata()[0] for k, ln in lines.items() if "random actions" in k}
    assert baselines == {"random actions on Pendulum-v1 (baseline)": -1200.0,
                         "random actions on HalfCheetah-v5 (baseline)": -300.0}
    # and not averaged as seeds of one curve either
    assert not any("mean of 2 seeds" in t for t in labels), labels
    assert any("Pendulum-v1" in t for t in labels) and any("HalfCheetah" in t for t in labels)
    assert "on " not in title  # no single env


def test_seeds_of_one_env_share_one_baseline(tmp_path):
    runs = [write_run(tmp_path / f"a_seed{s}", [fake_result(1, random=True)], env="Pendulum-v1")
            for s in (0, 1)]
    _, _, lines = legend_and_title(runs)
    assert [k for k in lines if "random" in k] == ["random actions (baseline)"]


def tune_trial(root: Path, algo: str = "MBPO", seed: int = 0, env: str = "Pendulum-v1"
               ) -> Path:
    """A Tune trial directory as `mbmpo-ray tune` leaves it: params.json and Tune's
    progress.csv, the RLlib result flattened with '/' (CSVLoggerCallback)."""
    from mbmpo_ray.reporting.tblog import flatten

    d = root / (f"{algo}_8e3f1_0000{seed}_{seed}_real_ratio=0.0500,seed={seed}"
                f"_2026-12-07_10-00-0{seed}")
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"env": env, "seed": seed}))
    results = [mbpo_result(i, random=i == 1) if algo == "MBPO" else fake_result(i, random=i == 1)
               for i in (1, 2, 3)]
    flat = [dict(flatten({**r, "time_total_s": 30.0 * r["training_iteration"],
                          "trial_id": "8e3f1_00000", "date": "2026-12-07_10-00-00"}))
            for r in results]
    with open(d / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    return d


@pytest.mark.parametrize("algo", ["MBPO", "MBMPO"])
def test_tune_trial_directories_are_plotted(tmp_path, algo):
    trials = [tune_trial(tmp_path / "mbmpo_sweep", algo, seed) for seed in (0, 1)]
    run = reporting.load_run(trials[0])
    assert run.algo == algo.lower() and run.env == "Pendulum-v1"
    assert run.label == "real_ratio=0.0500"  # the seed dropped: both trials are one curve
    if algo == "MBPO":
        np.testing.assert_allclose(run.data["real_steps"], [1250, 500, 750])
        np.testing.assert_allclose(run.data["qf_loss"], 3.5)
        np.testing.assert_allclose(run.data["elapsed_s"], [30, 60, 90])
    labels, title, _ = legend_and_title(trials)
    assert title == f"{'MBPO' if algo == 'MBPO' else 'MB-MPO'} learning curve on Pendulum-v1"
    assert any("(mean of 2 seeds)" in t for t in labels)
    assert "random actions (baseline)" in labels
    png = plot_runs(trials)
    assert png == (tmp_path / "mbmpo_sweep").resolve() / "learning_curves.png"


@pytest.mark.parametrize("content, words", [
    ("iteration,real_steps\n1,100\n", "no return_pre_update column"),
    ("a,b,c\n1,2,3\n", "no real_steps or return_pre_update column"),
    ("hello, this is not a csv\nat all\n", "not a progress.csv"),
    ("", "empty"),
    ("iteration,real_steps,return_pre_update\n", "no rows"),
    ("iteration,real_steps,return_pre_update\nx,y,z\n", "no number in its real_steps"),
    ("iteration,real_steps,return_pre_update\n1,100,\n2,200,\n", "nothing to plot"),
    ("training_iteration,episode_return_mean\n1,5\n", "no num_real_steps_lifetime column"),
])
def test_a_malformed_progress_csv_is_refused_with_one_line(tmp_path, content, words):
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.csv").write_text(content)
    with pytest.raises(ValueError, match=words) as e:
        plot_runs([run])
    assert "\n" not in str(e.value)
    assert not (run / "learning_curve.png").exists()


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a CSV text file"):
        plot_runs([path])
