"""What the algorithms report and where: ``progress.csv``, the live display, TensorBoard
events, the closing summary and the learning-curve plot, for MB-MPO and MBPO alike.

One module per concern, each fed by the algorithm's column set:

- :mod:`.columns`: each algorithm's ``progress.csv`` columns (which ``train()`` result key
  each reads, its meaning), and which of them the summary and the plot use;
- :mod:`.csvlog`: writing and reading ``progress.csv``;
- :mod:`.display`: the progress line per algorithm, plain or ``rich``;
- :mod:`.summary`: the banner before training and the summary after it;
- :mod:`.reporter`: :class:`TrainingReporter`, all of the above for ``mbmpo-ray train``;
- :mod:`.plot`: learning curves of ``train`` runs and Tune trials (``mbmpo-ray plot``);
- :mod:`.tblog`, :mod:`.quiet`: TensorBoard events; Ray's start-up noise.

No Ray import, and matplotlib and ``rich`` only when drawing: the CLI imports this before Ray
starts.
"""

from mbmpo_ray.reporting.columns import (
    COLUMN_SETS,
    LEARNER_RESULTS,
    MBMPO_COLUMNS,
    MBPO_COLUMNS,
    Column,
    ColumnSet,
    Curve,
    algo_of_header,
    column_set,
    finite,
    row_from_result,
)
from mbmpo_ray.reporting.csvlog import ProgressCSV, csv_cell, read_rows
from mbmpo_ray.reporting.display import (
    LAYOUTS,
    LINE_WIDTH,
    MBMPO_LAYOUT,
    MBPO_LAYOUT,
    Layout,
    PlainDisplay,
    RichDisplay,
    eta_seconds,
    layout_for,
    use_plain,
)
from mbmpo_ray.reporting.plot import (
    default_output,
    learning_curve_figure,
    load_run,
    plot_runs,
    read_progress,
)
from mbmpo_ray.reporting.quiet import RAY_NOISE, quiet_ray
from mbmpo_ray.reporting.reporter import TrainingReporter
from mbmpo_ray.reporting.summary import run_banner, summary_items
from mbmpo_ray.reporting.tblog import TensorBoardWriter

__all__ = [
    "COLUMN_SETS", "LAYOUTS", "LEARNER_RESULTS", "LINE_WIDTH", "MBMPO_COLUMNS", "MBMPO_LAYOUT",
    "MBPO_COLUMNS", "MBPO_LAYOUT", "RAY_NOISE", "Column", "ColumnSet", "Curve", "Layout",
    "PlainDisplay", "ProgressCSV", "RichDisplay", "TensorBoardWriter", "TrainingReporter",
    "algo_of_header", "column_set", "csv_cell", "default_output", "eta_seconds", "finite",
    "layout_for", "learning_curve_figure", "load_run", "plot_runs", "quiet_ray",
    "read_progress", "read_rows", "row_from_result", "run_banner", "summary_items",
    "use_plain",
]
