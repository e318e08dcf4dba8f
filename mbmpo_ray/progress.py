"""What ``mbmpo-ray train`` shows and writes: the live display, ``progress.csv``, TensorBoard
events and the closing summary.

The screen gets one line of at most 100 columns per iteration (real steps, the real-env return
of the pre-update and of the adapted policies with their spread, the model loss, seconds per
phase, ETA): drawn with ``rich`` (a progress bar below the lines) on a terminal, as plain lines
otherwise (logs, ``ray job logs``, ``--plain``). The wider detail goes to ``progress.csv``
(:data:`CSV_SCHEMA`, documented in the README) and to TensorBoard (every numeric result, with
Tune's tag names). ``quiet_ray`` silences Ray's start-up noise unless ``--verbose``.

No Ray import at module level: ``mbmpo_ray.progress`` is imported by the CLI before Ray starts.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

# RLlib's place for a single-agent Learner's metrics: ``learners/<DEFAULT_MODULE_ID>/``
LEARNER_RESULTS = ("learners", "default_policy")

#: ``progress.csv``: one row per iteration; (column, meaning). The README's table says the same.
CSV_SCHEMA: list[tuple[str, str]] = [
    ("iteration", "train() calls completed (1, 2, ...)"),
    ("elapsed_s", "wall-clock seconds since the run started (continues over --resume)"),
    ("real_steps", "real env steps learned from (the buffer), evaluation episodes excluded"),
    ("imagined_steps", "imagined (model) steps used by the meta updates"),
    ("eval_steps", "real env steps of evaluation episodes (not learned from)"),
    ("return_pre_update", "real-env return of this iteration's meta-policy theta_i, mean over "
                          "eval_episodes_per_iter episodes (results: episode_return_mean)"),
    ("return_pre_update_std", "its standard deviation over those episodes"),
    ("return_adapted", "real-env return of theta'_i: theta_i after one inner step on each "
                       "model's imagined data, the policies that collect the next iteration's "
                       "data; same number of episodes, spread over the K models "
                       "(results: post_adaptation_return_mean)"),
    ("return_adapted_std", "its standard deviation over those episodes"),
    ("return_sampled", "mean return of this iteration's training episodes: random actions in "
                       "the first iteration, else the previous row's adapted policies "
                       "(results: sample_return_mean)"),
    ("return_random", "random-action return (the first iteration only): the baseline"),
    ("model_val_loss", "ensemble validation loss (MSE of normalised deltas, mean over models)"),
    ("model_epochs", "model training epochs this iteration, mean over models"),
    ("imagined_return_pre_update", "return of theta_i in the models (last meta step)"),
    ("imagined_return_adapted", "return of the adapted policies in the models (last meta step)"),
    ("kl", "KL(theta_old || theta_new) of the last outer step"),
    ("time_sample", "seconds: real sampling"),
    ("time_fit", "seconds: fitting the ensemble"),
    ("time_meta", "seconds: meta update (imagination + inner and outer steps)"),
    ("time_eval", "seconds: real-env evaluation episodes"),
    ("time_iter", "seconds: the whole iteration"),
]
CSV_COLUMNS = [name for name, _ in CSV_SCHEMA]
COUNT_COLUMNS = frozenset({"iteration", "real_steps", "imagined_steps", "eval_steps"})
# column names of progress.csv files written before the rename
OLD_CSV_NAMES = {
    "episode_return_mean": "return_pre_update",
    "post_adaptation_return_mean": "return_adapted",
    "random_return_mean": "return_random",
    "imagined_pre_return": "imagined_return_pre_update",
    "imagined_post_return": "imagined_return_adapted",
}
LINE_WIDTH = 100  # the progress line never exceeds this
HEADER_EVERY = 25  # iterations between repeated column headers


# ---------------------------------------------------------------------------- rows and CSV
def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def row_from_result(result: dict[str, Any], elapsed_s: float | None = None) -> dict[str, Any]:
    """One ``progress.csv`` row (:data:`CSV_COLUMNS`) from an ``MBMPO.train()`` result."""
    timers = result.get("timers", {})
    learner = _get(result, *LEARNER_RESULTS) or {}
    model = result.get("model", {})
    return {
        "iteration": result.get("training_iteration"),
        "elapsed_s": elapsed_s,
        "real_steps": result.get("num_real_steps_lifetime"),
        "imagined_steps": result.get("num_imagined_steps_lifetime"),
        "eval_steps": result.get("num_eval_steps_lifetime"),
        "return_pre_update": result.get("episode_return_mean"),
        "return_pre_update_std": result.get("episode_return_std"),
        "return_adapted": result.get("post_adaptation_return_mean"),
        "return_adapted_std": result.get("post_adaptation_return_std"),
        # MBPO logs its training episodes' return as train_return_mean
        "return_sampled": result.get("sample_return_mean", result.get("train_return_mean")),
        "return_random": result.get("random_return_mean"),
        "model_val_loss": model.get("val_loss_mean"),
        "model_epochs": model.get("epochs_mean"),
        "imagined_return_pre_update": learner.get("pre_return_mean"),
        "imagined_return_adapted": learner.get("post_return_mean"),
        "kl": learner.get("kl_after"),
        "time_sample": timers.get("sample_real"),
        "time_fit": timers.get("fit_models"),
        "time_meta": timers.get("meta_update"),
        "time_eval": timers.get("evaluate_real"),
        "time_iter": result.get("time_this_iter_s"),
        # display only (not in progress.csv): MBPO's progress line
        "rollout_length": result.get("rollout_length"),
        "qf_loss": learner.get("qf_loss"),
        "alpha": learner.get("alpha_value"),
        "time_rollouts": timers.get("model_rollouts"),
        "time_sac": timers.get("sac_updates"),
    }


def finite(v: Any) -> float | None:
    """``v`` as a float, or None when missing or not finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def csv_cell(column: str, value: Any) -> str:
    """The one missing-value convention (an empty cell), integer counts, 6 significant digits."""
    f = finite(value)
    if f is None:
        return ""
    if column in COUNT_COLUMNS:
        return str(int(round(f)))
    return format(f, ".6g")


def read_rows(path: str | Path) -> list[dict[str, float | None]]:
    """Rows of a ``progress.csv`` as numbers (None where empty), old column names renamed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{OLD_CSV_NAMES.get(k, k): finite(v) for k, v in r.items() if k is not None}
            for r in rows]


class ProgressCSV:
    """``progress.csv`` of a run: a header, then one flushed row per iteration.

    ``append=True`` (``train --resume``) keeps the rows already there (rewriting the file under
    the current header if it was written by an older version) and continues ``elapsed_s``.
    """

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.previous: list[dict[str, float | None]] = []
        if append and self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            self.previous = read_rows(self.path)
            if header != CSV_COLUMNS:
                self._write_all(self.previous)
        else:
            self._write_all([])
        elapsed = [r["elapsed_s"] for r in self.previous if r.get("elapsed_s") is not None]
        self.elapsed_offset = elapsed[-1] if elapsed else 0.0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in rows:
                w.writerow([csv_cell(c, r.get(c)) for c in CSV_COLUMNS])

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow([csv_cell(c, row.get(c)) for c in CSV_COLUMNS])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """Every numeric result as a TensorBoard scalar, with Tune's tags (``ray/tune/<key>``) and
    step (the iteration), so ``tensorboard --logdir runs`` shows ``train`` and ``tune`` runs
    alike. Does nothing without tensorboardX (installed with ``ray[tune]``)."""

    SKIP = ("config", "pid", "timestamp", "time_total_s", "training_iteration", "date",
            "hostname", "node_ip", "trial_id", "done")

    def __init__(self, logdir: str | Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            self._writer = None
            return
        self._writer = SummaryWriter(str(logdir), flush_secs=30)

    def write(self, result: dict[str, Any]) -> None:
        if self._writer is None:
            return
        step = int(result.get("training_iteration") or 0)
        for key, value in _flatten({k: v for k, v in result.items() if k not in self.SKIP}):
            f = finite(value) if not isinstance(value, bool) else None
            if f is not None:
                self._writer.add_scalar(f"ray/tune/{key}", f, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


# ---------------------------------------------------------------------------- formatting
def fmt_num(v: Any) -> str:
    """A return-sized number in at most 7 characters; '-' when missing."""
    f = finite(v)
    if f is None:
        return "-"
    if abs(f) < 1000:
        return f"{f:.1f}"
    if abs(f) < 1_000_000:
        return f"{f:.0f}"
    return f"{f:.2e}"


def fmt_return(mean: Any, std: Any) -> str:
    """``mean ±std`` in 14 characters (mean right-aligned, spread left-aligned)."""
    if finite(mean) is None:
        return f"{'-':>7}       "
    spread = f"±{fmt_num(std)}" if finite(std) is not None else ""
    return f"{fmt_num(mean):>7} {spread:<6}"


def fmt_loss(v: Any) -> str:
    f = finite(v)
    if f is None:
        return "-"
    if 0.001 <= abs(f) < 10:
        return f"{f:.4f}"
    if 10 <= abs(f) < 10_000:
        return f"{f:.1f}"
    return f"{f:.2e}"


def fmt_seconds(s: Any) -> str:
    """``0.4s``, ``12s``, ``3.1m``, ``1.2h``; '-' when missing."""
    f = finite(s)
    if f is None:
        return "-"
    if f < 10:
        return f"{f:.1f}s"
    if f < 100:
        return f"{f:.0f}s"
    if f < 6000:
        return f"{f / 60:.1f}m"
    return f"{f / 3600:.1f}h"


def fmt_duration(s: Any) -> str:
    """Wall-clock durations: ``45s``, ``12m05s``, ``1h02m``; '-' when unknown."""
    f = finite(s)
    if f is None:
        return "-"
    f = int(round(f))
    if f < 60:
        return f"{f}s"
    if f < 3600:
        return f"{f // 60}m{f % 60:02d}s"
    return f"{f // 3600}h{f % 3600 // 60:02d}m"


def plural(n: int, word: str) -> str:
    """``1 iteration``, ``3 iterations``, ``4,000 real steps``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _int(v: Any) -> int:
    f = finite(v)
    return 0 if f is None else int(round(f))


# widths of the progress line's fields (the header uses the same)
_COLS = "{it:<8} {steps:>9} {pre:>14} {post:>14} {loss:>8} {ts:>5} {tf:>5} {tm:>5} {te:>5} " \
        "{ti:>6} {eta:>7}"
HEADER = "\n".join([
    _COLS.format(it="", steps="real", pre="return", post="return", loss="model", ts="",
                 tf="", tm="", te="", ti="", eta="").rstrip(),
    _COLS.format(it="iter", steps="steps", pre="pre-update", post="adapted", loss="loss",
                 ts="smpl", tf="fit", tm="meta", te="eval", ti="total", eta="ETA"),
])
LEGEND = (
    "pre-update: real-env return of this iteration's meta-policy theta; adapted: theta after "
    "one\ninner step on each model (the policies that collect the next iteration's data); "
    "mean ±std\nover evaluation episodes. Seconds per phase: sample, fit, meta update, "
    "evaluation."
)


def progress_line(row: dict[str, Any], eta_s: float | None = None) -> str:
    """One iteration in at most :data:`LINE_WIDTH` columns (see :data:`HEADER`)."""
    eta = "done" if eta_s == 0 else fmt_duration(eta_s)
    return _COLS.format(
        it=f"iter {_int(row.get('iteration')):>3}",
        steps=f"{_int(row.get('real_steps')):,}",
        pre=fmt_return(row.get("return_pre_update"), row.get("return_pre_update_std")),
        post=fmt_return(row.get("return_adapted"), row.get("return_adapted_std")),
        loss=fmt_loss(row.get("model_val_loss")),
        ts=fmt_seconds(row.get("time_sample")), tf=fmt_seconds(row.get("time_fit")),
        tm=fmt_seconds(row.get("time_meta")), te=fmt_seconds(row.get("time_eval")),
        ti=fmt_seconds(row.get("time_iter")), eta=eta,
    )[:LINE_WIDTH]


# MBPO's line: no adapted policies or meta update; its SAC critic loss, the model rollout
# length k and the SAC phases instead (missing values: '-')
_MBPO_COLS = "{it:<8} {steps:>9} {ret:>14} {loss:>8} {qf:>8} {k:>3} {ts:>5} {tf:>5} {tr:>5} " \
             "{tq:>5} {te:>5} {ti:>6} {eta:>7}"
MBPO_HEADER = "\n".join([
    _MBPO_COLS.format(it="", steps="real", ret="return", loss="model", qf="Q", k="", ts="",
                      tf="", tr="", tq="", te="", ti="", eta="").rstrip(),
    _MBPO_COLS.format(it="iter", steps="steps", ret="eval", loss="loss", qf="loss", k="k",
                      ts="smpl", tf="fit", tr="roll", tq="sac", te="eval", ti="total",
                      eta="ETA"),
])
MBPO_LEGEND = (
    "eval: real-env return of the SAC policy (its mean action unless eval_explore) after "
    "this\niteration; k: model rollout length. Seconds per phase: real sampling, model fit, "
    "model\nrollouts, SAC updates, evaluation."
)


def mbpo_progress_line(row: dict[str, Any], eta_s: float | None = None) -> str:
    """One MBPO iteration in at most :data:`LINE_WIDTH` columns (see :data:`MBPO_HEADER`)."""
    eta = "done" if eta_s == 0 else fmt_duration(eta_s)
    k = finite(row.get("rollout_length"))
    return _MBPO_COLS.format(
        it=f"iter {_int(row.get('iteration')):>3}",
        steps=f"{_int(row.get('real_steps')):,}",
        ret=fmt_return(row.get("return_pre_update"), row.get("return_pre_update_std")),
        loss=fmt_loss(row.get("model_val_loss")), qf=fmt_loss(row.get("qf_loss")),
        k="-" if k is None else f"{k:.0f}",
        ts=fmt_seconds(row.get("time_sample")), tf=fmt_seconds(row.get("time_fit")),
        tr=fmt_seconds(row.get("time_rollouts")), tq=fmt_seconds(row.get("time_sac")),
        te=fmt_seconds(row.get("time_eval")), ti=fmt_seconds(row.get("time_iter")), eta=eta,
    )[:LINE_WIDTH]


def eta_seconds(iteration_times: Sequence[float], *, iteration: int, real_steps: int,
                stop_steps: int | None, stop_iterations: int | None,
                steps_per_iter: int) -> float | None:
    """Seconds left: iterations left (whichever stop comes first) x the mean of the last three
    iteration times; 0 when done, None when unknown."""
    left = []
    if stop_steps:
        left.append(math.ceil(max(0, stop_steps - real_steps) / max(1, steps_per_iter)))
    if stop_iterations is not None:
        left.append(max(0, stop_iterations - iteration))
    if not left:
        return None
    n_left = min(left)
    if n_left == 0:
        return 0.0
    recent = [t for t in iteration_times[-3:] if finite(t) is not None]
    return n_left * sum(recent) / len(recent) if recent else None


# ---------------------------------------------------------------------------- summary
def run_banner(config, stop_steps: int | None, stop_iterations: int | None,
               out: str | Path) -> str:
    """The lines printed before training: the env, the MB-MPO (or MBPO) sizes, the stop and
    the output."""
    stop = " or ".join(s for s in (
        plural(stop_steps, "real step") if stop_steps else "",
        plural(stop_iterations, "iteration") if stop_iterations is not None else "") if s)
    if not hasattr(config, "num_tasks"):  # MBPOConfig
        first = getattr(config, "initial_random_steps", 0) or 0
        return "\n".join([
            f"MBPO on {config.model_env_id}",
            f"  {config.ensemble_size} dynamics models ({config.num_elites} elites); "
            f"{config.rollouts_per_step} model rollouts per real step, rollout schedule "
            f"{tuple(config.rollout_schedule)}",
            f"  per iteration: {plural(config.real_steps_per_iter, 'real step')}"
            + (f" (the first also {plural(first, 'random step')})" if first else "")
            + f", {config.updates_per_step} SAC updates per step, real_ratio "
            f"{config.real_ratio}",
            f"  stop at {stop}; output in {out}/",
        ])
    return "\n".join([
        f"MB-MPO on {config.model_env_id}",
        f"  {config.ensemble_size} dynamics models; each meta step imagines "
        f"{config.num_tasks} tasks x {config.rollouts_per_task} rollouts x {config.horizon} "
        "steps",
        f"  per iteration: {plural(config.real_steps_per_iter, 'real step')}, "
        f"{plural(config.meta_steps_per_iter, 'meta step')}, inner_lr {config.inner_lr}",
        f"  stop at {stop}; output in {out}/",
    ])


def summary_items(rows: Sequence[dict[str, Any]], *, wall_s: float,
                  files: dict[str, Any], status: str,
                  algo: str = "mbmpo") -> tuple[str, list[tuple[str, str]]]:
    """The closing summary: a title and (label, value) lines (``algo="mbpo"``: no adapted
    policies or meta update; the return is the SAC policy's)."""
    mbpo = algo == "mbpo"
    policy = "" if mbpo else "pre-update "
    done = [r for r in rows if finite(r.get("iteration")) is not None]
    if not done:
        return f"no iteration completed ({status})", [
            ("wall clock", fmt_duration(wall_s))] + [(k, str(v)) for k, v in files.items()]
    last = done[-1]
    title = (f"{status}: {plural(_int(last['iteration']), 'iteration')}, "
             f"{plural(_int(last.get('real_steps')), 'real step')} in {fmt_duration(wall_s)}")
    items: list[tuple[str, str]] = []
    scored = [r for r in done if finite(r.get("return_pre_update")) is not None]
    if scored:
        best = max(scored, key=lambda r: r["return_pre_update"])
        best_return = fmt_return(best["return_pre_update"], best.get("return_pre_update_std"))
        items.append((f"best {policy}return",
                      f"{best_return.strip()}   (iteration {_int(best['iteration'])}, "
                      f"{_int(best.get('real_steps')):,} real steps)"))
    items.append((f"final {policy}return",
                  fmt_return(last.get("return_pre_update"),
                             last.get("return_pre_update_std")).strip()))
    if not mbpo:
        items.append(("final adapted return",
                      fmt_return(last.get("return_adapted"),
                                 last.get("return_adapted_std")).strip()
                      + "   (the same iteration's theta after one inner step)"))
    random = [r["return_random"] for r in done if finite(r.get("return_random")) is not None]
    if random:
        items.append(("random-action return", f"{fmt_num(random[0]).strip()}   (baseline)"))
    items.append(("real env steps", f"{_int(last.get('real_steps')):,} learned from, "
                                     f"{_int(last.get('eval_steps')):,} in evaluation"))
    items.append(("model steps" if mbpo else "imagined steps",
                  f"{_int(last.get('imagined_steps')):,}"))
    keys = ((("sample", "sample"), ("fit", "fit"), ("rollouts", "rollouts"), ("sac", "sac"),
             ("eval", "eval")) if mbpo else
            (("sample", "sample"), ("fit", "fit"), ("meta", "meta"), ("eval", "eval")))
    phases = {name: sum(finite(r.get(f"time_{key}")) or 0.0 for r in done)
              for name, key in keys}
    total = sum(phases.values())
    in_iters = sum(finite(r.get("time_iter")) or 0.0 for r in done)
    share = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in phases.items()) if total else ""
    items.append(("wall clock", fmt_duration(wall_s) + (
        f", {fmt_duration(in_iters)} in iterations ({share})" if share else "")))
    items += [(k, str(v)) for k, v in files.items()]
    return title, items


def render_summary_plain(title: str, items: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in items) if items else 0
    return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in items)])


# ---------------------------------------------------------------------------- displays
class PlainDisplay:
    """Plain lines (logs, ``ray job logs``, ``--plain``): the header again every
    :data:`HEADER_EVERY` iterations."""

    def __init__(self, stream: TextIO | None = None, header: str = HEADER,
                 legend: str = LEGEND):
        self.stream = stream or sys.stdout
        self.header, self.legend = header, legend
        self._n = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, banner: str, total: int | None, unit: str) -> None:
        self._print(banner)
        self._print(self.legend)

    def iteration(self, line: str, completed: int, eta: str) -> None:
        if self._n % HEADER_EVERY == 0:
            self._print(self.header)
        self._n += 1
        self._print(line)

    def message(self, text: str) -> None:
        self._print(text)

    def status(self, text: str) -> None:
        pass

    def summary(self, title: str, items: list[tuple[str, str]]) -> None:
        self._print(render_summary_plain(title, items))

    def close(self) -> None:
        pass


class RichDisplay:
    """``rich`` on a terminal: the same lines scrolling above a progress bar (real steps or
    iterations to go, elapsed, ETA), and the summary as a panel."""

    def __init__(self, console=None, header: str = HEADER, legend: str = LEGEND):
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.header, self.legend = header, legend
        self._progress = None
        self._task = None
        self._n = 0

    def start(self, banner: str, total: int | None, unit: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console.print(banner, style="bold", no_wrap=False)
        self.console.print(self.legend, style="dim")
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30),
            MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console, transient=True, redirect_stderr=False,
        )
        self._task = self._progress.add_task("starting", total=total, eta="-")
        self._progress.start()

    def iteration(self, line: str, completed: int, eta: str) -> None:
        if self._n % HEADER_EVERY == 0:
            self.console.print(self.header, style="bold cyan", no_wrap=True,
                               overflow="crop")
        self._n += 1
        self.console.print(line, no_wrap=True, overflow="crop")
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, eta=eta,
                                  description=f"iteration {self._n + 1}")

    def message(self, text: str) -> None:
        self.console.print(text, no_wrap=False)

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def summary(self, title: str, items: list[tuple[str, str]]) -> None:
        from rich.panel import Panel
        from rich.table import Table

        self.close()
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for k, v in items:
            table.add_row(k, v)
        self.console.print(Panel(table, title=title, title_align="left", expand=False,
                                 border_style="green"))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def use_plain(plain: bool | None, stream: TextIO | None = None) -> bool:
    """Plain lines when asked, or when the output is not a terminal."""
    if plain is not None:
        return plain
    stream = stream or sys.stdout
    return not (hasattr(stream, "isatty") and stream.isatty())


class TrainingReporter:
    """Everything ``mbmpo-ray train`` shows and writes about a run.

    ``start(banner)``, then ``record(result)`` after each ``train()`` (a CSV row, TensorBoard
    scalars, a progress line), ``message(text)`` for anything else to print, and
    ``finish(status, files)`` for the plot and the closing summary.
    """

    def __init__(self, out_dir: str | Path, *, stop_steps: int | None,
                 stop_iterations: int | None, steps_per_iter: int, plain: bool | None = None,
                 append: bool = False, tensorboard: bool = True, title: str = "MB-MPO",
                 algo: str = "mbmpo"):
        self.out = Path(out_dir)
        self.algo = algo
        mbpo = algo == "mbpo"
        self._line = mbpo_progress_line if mbpo else progress_line
        self.stop_steps, self.stop_iterations = stop_steps, stop_iterations
        self.steps_per_iter = steps_per_iter
        self.title = title
        self.csv = ProgressCSV(self.out / "progress.csv", append=append)
        self.tb = TensorBoardWriter(self.out) if tensorboard else None
        layout = dict(header=MBPO_HEADER, legend=MBPO_LEGEND) if mbpo else {}
        self.display = PlainDisplay(**layout) if use_plain(plain) else RichDisplay(**layout)
        self.rows: list[dict[str, Any]] = list(self.csv.previous)
        self._times: list[float] = []
        self._t0 = time.monotonic()
        self._closed = False

    @property
    def elapsed(self) -> float:
        return self.csv.elapsed_offset + time.monotonic() - self._t0

    def start(self, banner: str) -> None:
        total = self.stop_steps or self.stop_iterations
        unit = "real steps" if self.stop_steps else "iterations"
        self.display.start(banner, total, unit)

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        row = row_from_result(result, self.elapsed)
        self.rows.append(row)
        self._times.append(finite(row["time_iter"]) or 0.0)
        self.csv.write(row)
        if self.tb is not None:
            self.tb.write(result)
        eta = eta_seconds(self._times, iteration=_int(row["iteration"]),
                          real_steps=_int(row["real_steps"]), stop_steps=self.stop_steps,
                          stop_iterations=self.stop_iterations,
                          steps_per_iter=self.steps_per_iter)
        completed = _int(row["real_steps"]) if self.stop_steps else _int(row["iteration"])
        self.display.iteration(self._line(row, eta), completed,
                               "done" if eta == 0 else fmt_duration(eta))
        return row

    def message(self, text: str) -> None:
        """A line above the live display (or a plain line)."""
        self.display.message(text)

    def status(self, text: str) -> None:
        """What the live display's spinner says is happening (nothing in plain mode)."""
        self.display.status(text)

    def finish(self, status: str = "finished", files: dict[str, Any] | None = None,
               plot: bool = True) -> Path | None:
        """Close the files, draw ``learning_curve.png`` (if any row) and print the summary."""
        if self._closed:
            return None
        self._closed = True
        self.csv.close()
        if self.tb is not None:
            self.tb.close()
        png = None
        if plot and self.rows:
            from mbmpo_ray.plotting import plot_runs

            try:
                png = plot_runs([self.out], self.out / "learning_curve.png", title=self.title)
            except (ValueError, OSError) as e:
                self.display.message(f"no learning curve: {e}")
        listed = {"run directory": f"{self.out}/", "progress.csv": self.csv.path}
        if png is not None:
            listed["learning curve"] = png
        if self.tb is not None and self.tb._writer is not None:
            listed["tensorboard"] = f"tensorboard --logdir {self.out}"
        listed.update(files or {})
        title, items = summary_items(self.rows, wall_s=self.elapsed, files=listed,
                                     status=status, algo=self.algo)
        self.display.summary(f"{self.title}: {title}", items)
        self.display.close()
        return png

    def close(self) -> None:
        """Stop the live display and close the files without a summary (errors)."""
        self.display.close()
        if not self._closed:
            self._closed = True
            self.csv.close()
            if self.tb is not None:
                self.tb.close()


# ---------------------------------------------------------------------------- Ray's noise
#: (logger, message fragment): what Ray prints before the first iteration that a user of this
#: CLI can do nothing about. ``--verbose`` keeps them.
RAY_NOISE = (
    ("ray.rllib.algorithms.algorithm_config", "on the new API stack"),
    ("ray.rllib.algorithms.sac.sac", "running SAC on the new API stack"),  # MBPO's config
    ("ray._private.authentication.authentication_token_setup",
     "Token authentication is enabled for this Ray cluster"),
    ("ray._common.deprecation", "RLModuleConfig"),  # RLlib's own RLModule constructor
    ("ray.tune.utils.util", "Install gputil"),
    ("ray._private.worker", "Started a local Ray instance"),
)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: Sequence[str]):
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


def quiet_ray(verbose: bool = False) -> dict[str, Any]:
    """Silence Ray's start-up noise in this process (a filter on the loggers that emit it).

    Returns the extra ``ray.init`` keyword arguments: without ``verbose``, INFO lines and the
    workers' output stay out of the driver's output (errors still reach it as exceptions).
    """
    if verbose:
        return {}
    for name, fragment in RAY_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and fragment in f.fragments
                   for f in logger.filters):
            logger.addFilter(_DropMessages([fragment]))
    warnings.filterwarnings("ignore", message=r".*RLModuleConfig.*")
    return {"log_to_driver": False, "logging_level": logging.WARNING}
