"""``progress.csv``: one row per iteration in the columns of the run's algorithm
(:mod:`mbmpo_ray.reporting.columns`), written and read back."""

from __future__ import annotations

import csv
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from mbmpo_ray.reporting.columns import MBMPO_COLUMNS, ColumnSet, finite


def csv_cell(column: str, value: Any,
             counts: Collection[str] = MBMPO_COLUMNS.count_columns) -> str:
    """The one missing-value convention (an empty cell), integer ``counts``, 6 significant
    digits for the rest."""
    f = finite(value)
    if f is None:
        return ""
    if column in counts:
        return str(int(round(f)))
    return format(f, ".6g")


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows (as strings) of a CSV file.

    Raises:
        ValueError: not a readable CSV text file (binary, or no header).
    """
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not a CSV text file ({type(e).__name__}: {e})") from None
    if not header:
        raise ValueError(f"{path} is empty: no CSV header")
    return header, rows


def numeric_rows(rows: list[dict[str, str]], renames: Mapping[str, str] | None = None
                 ) -> list[dict[str, float | None]]:
    """``rows`` as numbers (None where empty or not a number), columns renamed by
    ``renames`` (the names of older files)."""
    renames = renames or {}
    return [{renames.get(k, k): finite(v) for k, v in r.items() if k is not None}
            for r in rows]


def read_rows(path: str | Path, columns: ColumnSet = MBMPO_COLUMNS
              ) -> list[dict[str, float | None]]:
    """Rows of a ``progress.csv`` as numbers (None where empty), older column names renamed to
    ``columns``'."""
    return numeric_rows(read_table(path)[1], columns.old_names)


class ProgressCSV:
    """``progress.csv`` of a run: a header (``columns.names``), then one flushed row per
    iteration.

    ``append=True`` (``train --resume``) keeps the rows already there (rewriting the file under
    the current header if it was written by an older version) and continues ``elapsed_s``.
    """

    def __init__(self, path: str | Path, append: bool = False,
                 columns: ColumnSet = MBMPO_COLUMNS):
        self.path = Path(path)
        self.columns = columns
        self.previous: list[dict[str, float | None]] = []
        if append and self.path.exists() and self.path.stat().st_size > 0:
            header, rows = read_table(self.path)
            self.previous = numeric_rows(rows, columns.old_names)
            if header != columns.names:
                self._write_all(self.previous)
        else:
            self._write_all([])
        elapsed = [r["elapsed_s"] for r in self.previous if r.get("elapsed_s") is not None]
        self.elapsed_offset = elapsed[-1] if elapsed else 0.0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

    def _cells(self, row: Mapping[str, Any]) -> list[str]:
        counts = self.columns.count_columns
        return [csv_cell(c, row.get(c), counts) for c in self.columns.names]

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns.names)
            for r in rows:
                w.writerow(self._cells(r))

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow(self._cells(row))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
