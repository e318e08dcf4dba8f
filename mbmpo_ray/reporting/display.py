"""The live display of ``mbmpo-ray train``: one line of at most :data:`LINE_WIDTH` columns per
iteration, read from the ``progress.csv`` row of the run's algorithm (:class:`Layout`), drawn
with ``rich`` above a progress bar on a terminal (:class:`RichDisplay`) or as plain lines
(:class:`PlainDisplay`: logs, ``ray job logs``, ``--plain``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from mbmpo_ray.reporting.columns import finite
from mbmpo_ray.reporting.fmt import (
    as_int,
    fmt_duration,
    fmt_loss,
    fmt_return,
    fmt_seconds,
)

LINE_WIDTH = 100  # the progress line never exceeds this
HEADER_EVERY = 25  # iterations between repeated column headers
ETA_WIDTH = 7


@dataclass(frozen=True)
class Field:
    """One field of the progress line: the row's ``columns`` it shows, formatted by
    ``show(*values)`` in ``width`` characters, under a two-line header (``top``, ``bottom``)."""

    columns: tuple[str, ...]
    width: int
    top: str
    bottom: str
    show: Callable[..., str]
    left: bool = False

    def align(self, text: str) -> str:
        return f"{text:<{self.width}}" if self.left else f"{text:>{self.width}}"

    def cell(self, row: Mapping[str, Any]) -> str:
        return self.align(self.show(*(row.get(c) for c in self.columns)))


@dataclass(frozen=True)
class Layout:
    """An algorithm's progress line: its fields (then the ETA) and the legend printed once
    above the first header."""

    algo: str
    fields: tuple[Field, ...]
    legend: str

    @property
    def header(self) -> str:
        """Two header lines, aligned with :meth:`line`'s fields."""
        top = " ".join([*(f.align(f.top) for f in self.fields), " " * ETA_WIDTH])
        bottom = " ".join([*(f.align(f.bottom) for f in self.fields),
                           f"{'ETA':>{ETA_WIDTH}}"])
        return "\n".join([top.rstrip(), bottom])

    def line(self, row: Mapping[str, Any], eta_s: float | None = None) -> str:
        """One iteration in at most :data:`LINE_WIDTH` columns (``eta_s=0``: "done")."""
        eta = "done" if eta_s == 0 else fmt_duration(eta_s)
        cells = [f.cell(row) for f in self.fields]
        return " ".join([*cells, f"{eta:>{ETA_WIDTH}}"])[:LINE_WIDTH]


def _iteration(it: Any) -> str:
    return f"iter {as_int(it):>3}"


def _steps(v: Any) -> str:
    return f"{as_int(v):,}"


def _k(v: Any) -> str:
    k = finite(v)
    return "-" if k is None else f"{k:.0f}"


def _seconds(column: str, name: str) -> Field:
    return Field((column,), 5, "", name, fmt_seconds)


_ITER = Field(("iteration",), 8, "", "iter", _iteration, left=True)
_STEPS = Field(("real_steps",), 9, "real", "steps", _steps)
_LOSS = Field(("model_val_loss",), 8, "model", "loss", fmt_loss)
_TOTAL = Field(("time_iter",), 6, "", "total", fmt_seconds)

MBMPO_LAYOUT = Layout("mbmpo", (
    _ITER, _STEPS,
    Field(("return_pre_update", "return_pre_update_std"), 14, "return", "pre-update",
          fmt_return),
    Field(("return_adapted", "return_adapted_std"), 14, "return", "adapted", fmt_return),
    _LOSS, _seconds("time_sample", "smpl"), _seconds("time_fit", "fit"),
    _seconds("time_meta", "meta"), _seconds("time_eval", "eval"), _TOTAL,
), legend=(
    "pre-update: real-env return of this iteration's meta-policy theta; adapted: theta after "
    "one\ninner step on each model (the policies that collect the next iteration's data); "
    "mean ±std\nover evaluation episodes. Seconds per phase: sample, fit, meta update, "
    "evaluation."
))

# no adapted policies or meta update: the SAC critic loss, the model rollout length k and the
# SAC phases instead
MBPO_LAYOUT = Layout("mbpo", (
    _ITER, _STEPS,
    Field(("return_eval", "return_eval_std"), 14, "return", "eval", fmt_return),
    _LOSS, Field(("qf_loss",), 8, "Q", "loss", fmt_loss), Field(("rollout_length",), 3, "",
                                                                "k", _k),
    _seconds("time_sample", "smpl"), _seconds("time_fit", "fit"),
    _seconds("time_rollouts", "roll"), _seconds("time_sac", "sac"),
    _seconds("time_eval", "eval"), _TOTAL,
), legend=(
    "eval: real-env return of the SAC policy (its mean action unless eval_explore) after "
    "this\niteration; k: model rollout length. Seconds per phase: real sampling, model fit, "
    "model\nrollouts, SAC updates, evaluation."
))

LAYOUTS = {layout.algo: layout for layout in (MBMPO_LAYOUT, MBPO_LAYOUT)}


def layout_for(algo: str | None) -> Layout:
    """The progress line of ``algo`` (None: MB-MPO)."""
    return LAYOUTS[algo or "mbmpo"]


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


def render_summary_plain(title: str, items: list[tuple[str, str]]) -> str:
    """The closing summary as plain lines: the title, then aligned ``label  value`` pairs."""
    width = max(len(k) for k, _ in items) if items else 0
    return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in items)])


class PlainDisplay:
    """Plain lines (logs, ``ray job logs``, ``--plain``): the header again every
    :data:`HEADER_EVERY` iterations."""

    def __init__(self, stream: TextIO | None = None, layout: Layout = MBMPO_LAYOUT):
        self.stream = stream or sys.stdout
        self.header, self.legend = layout.header, layout.legend
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

    def __init__(self, console=None, layout: Layout = MBMPO_LAYOUT):
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.header, self.legend = layout.header, layout.legend
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
