"""Everything ``mbmpo-ray train`` shows and writes about a run, for either algorithm."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mbmpo_ray.reporting.columns import column_set, finite
from mbmpo_ray.reporting.csvlog import ProgressCSV
from mbmpo_ray.reporting.display import (
    PlainDisplay,
    RichDisplay,
    eta_seconds,
    layout_for,
    use_plain,
)
from mbmpo_ray.reporting.fmt import as_int, fmt_duration
from mbmpo_ray.reporting.summary import summary_items
from mbmpo_ray.reporting.tblog import TensorBoardWriter


class TrainingReporter:
    """Everything ``mbmpo-ray train`` shows and writes about a run of ``algo``.

    ``start(banner)``, then ``record(result)`` after each ``train()`` (a ``progress.csv`` row
    in the algorithm's columns, TensorBoard scalars, a progress line read from that row),
    ``message(text)`` for anything else to print, and ``finish(status, files)`` for the plot and
    the closing summary.
    """

    def __init__(self, out_dir: str | Path, *, stop_steps: int | None,
                 stop_iterations: int | None, steps_per_iter: int, plain: bool | None = None,
                 append: bool = False, tensorboard: bool = True, title: str = "MB-MPO",
                 algo: str = "mbmpo"):
        self.out = Path(out_dir)
        self.algo = algo
        self.columns = column_set(algo)
        self.layout = layout_for(algo)
        self.stop_steps, self.stop_iterations = stop_steps, stop_iterations
        self.steps_per_iter = steps_per_iter
        self.title = title
        self.csv = ProgressCSV(self.out / "progress.csv", append=append, columns=self.columns)
        self.tb = TensorBoardWriter(self.out) if tensorboard else None
        display = PlainDisplay if use_plain(plain) else RichDisplay
        self.display = display(layout=self.layout)
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
        """Write and show one ``train()`` result; returns its ``progress.csv`` row."""
        row = self.columns.row(result, self.elapsed)
        self.rows.append(row)
        self._times.append(finite(row["time_iter"]) or 0.0)
        self.csv.write(row)
        if self.tb is not None:
            self.tb.write(result)
        eta = eta_seconds(self._times, iteration=as_int(row["iteration"]),
                          real_steps=as_int(row["real_steps"]), stop_steps=self.stop_steps,
                          stop_iterations=self.stop_iterations,
                          steps_per_iter=self.steps_per_iter)
        completed = as_int(row["real_steps"]) if self.stop_steps else as_int(row["iteration"])
        self.display.iteration(self.layout.line(row, eta), completed,
                               "done" if eta == 0 else fmt_duration(eta))
        return row

    def message(self, text: str) -> None:
        """A line above the live display (or a plain line)."""
        self.display.message(text)

    def status(self, text: str) -> None:
        """What the live display's spinner says is happening (nothing in plain mode)."""
        self.display.status(text)

    def _close_files(self) -> None:
        self._closed = True
        self.csv.close()
        if self.tb is not None:
            self.tb.close()

    def _plot(self) -> Path | None:
        from mbmpo_ray.reporting.plot import plot_runs

        try:
            return plot_runs([self.out], self.out / "learning_curve.png", title=self.title)
        except (ValueError, OSError) as e:
            self.display.message(f"no learning curve: {e}")
            return None

    def finish(self, status: str = "finished", files: dict[str, Any] | None = None,
               plot: bool = True) -> Path | None:
        """Close the files, draw ``learning_curve.png`` (if any row) and print the summary."""
        if self._closed:
            return None
        self._close_files()
        png = self._plot() if plot and self.rows else None
        listed = {"run directory": f"{self.out}/", "progress.csv": self.csv.path}
        if png is not None:
            listed["learning curve"] = png
        if self.tb is not None and self.tb.active:
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
            self._close_files()
