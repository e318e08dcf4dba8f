"""Learning curves of ``progress.csv`` files (matplotlib, headless): real-env return vs real
steps, for runs of ``mbmpo-ray train`` and for Tune trial directories, of either algorithm.

Each run is read into its algorithm's columns (:mod:`mbmpo_ray.reporting.columns`): a
``train`` run's ``progress.csv`` as written, a Tune trial's ``progress.csv`` (RLlib's result
keys, flattened with ``/``) through the same column set. The algorithm comes from the run's
``run.json`` (``algo``), a Tune trial's directory name (``MBPO_...``) or the columns; the env
from ``run.json`` or the trial's ``params.json``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbmpo_ray.reporting.columns import ColumnSet, algo_of_header, column_set
from mbmpo_ray.reporting.csvlog import numeric_rows, read_table

X_KEY = "real_steps"
RANDOM_KEY = "return_random"
#: columns of a Tune trial's progress.csv (RLlib result keys) that ours never have
TUNE_KEYS = ("training_iteration", "num_real_steps_lifetime")
# <trainable>_<experiment hash>_<index 00000>_<index>_<params>_<date>: Tune's trial dirs
_TUNE_TRIAL = re.compile(r"^(?P<trainable>[A-Za-z0-9]+)_[0-9a-f]+_\d{5}_\d+_?(?P<params>.*?)"
                         r"(?:_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})?$")


@dataclass
class PlotRun:
    """One run as the plot reads it: its columns as float arrays (NaN where empty)."""

    path: Path  # its progress.csv
    label: str  # runs with the same label, env and algorithm are averaged
    algo: str
    env: str | None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def columns(self) -> ColumnSet:
        return column_set(self.algo)


def find_csv(d: str | Path) -> Path:
    """``d/progress.csv`` for a run directory, ``d`` for a file.

    Raises:
        FileNotFoundError: neither exists.
    """
    d = Path(d)
    csv_path = d / "progress.csv" if d.is_dir() else d
    if not csv_path.exists():
        raise FileNotFoundError(f"no progress.csv in {d}" if d.is_dir() or not d.suffix
                                else f"{d} does not exist")
    return csv_path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _env_of_run_info(info: dict[str, Any]) -> str | None:
    """The env id of a ``train`` run's ``run.json`` (``--env``, else ``--config``'s env)."""
    env, config = info.get("env"), info.get("config")
    if env or not config:
        return env or None
    try:
        from tune_configs import ENV_CONFIGS
    except ImportError:
        return str(config)
    return ENV_CONFIGS.get(str(config).lower().replace("-", "_"), str(config))


def group_label(name: str) -> str:
    """The curve a run belongs to: its directory name without a trailing ``_seedN`` (a Tune
    trial's: its parameters without ``seed=N``)."""
    m = _TUNE_TRIAL.match(name)
    if m and "=" in m["params"]:
        params = re.sub(r"(^|,)seed=\d+(?=,|$)", "", m["params"]).strip(",")
        return params or m["trainable"]
    return name.split("_seed")[0]


def _describe(csv_path: Path, header: list[str]) -> tuple[bool, str, str | None]:
    """(a Tune trial?, algorithm, env) of the run whose ``progress.csv`` is ``csv_path``."""
    d = csv_path.parent
    tune = any(k in header for k in TUNE_KEYS)
    if tune:
        params = _read_json(d / "params.json")
        m = _TUNE_TRIAL.match(d.name)
        named = {"MBPO": "mbpo", "MBMPO": "mbmpo"}.get(m["trainable"] if m else "")
        env = params.get("env") if isinstance(params.get("env"), str) else None
        return True, named or algo_of_header(header), env
    info = _read_json(d / "run.json")
    algo = info.get("algo") if info.get("algo") in ("mbmpo", "mbpo") else None
    return False, algo or algo_of_header(header), _env_of_run_info(info)


def _missing(csv_path: Path, header: list[str], needed: Sequence[str]) -> ValueError:
    shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
    return ValueError(
        f"{csv_path} is not a progress.csv of `mbmpo-ray train` or of a Tune trial: no "
        f"{' or '.join(needed)} column (its columns: {shown})")


def load_run(d: str | Path) -> PlotRun:
    """A run directory (``train``'s or a Tune trial's) or its ``progress.csv``, checked.

    Raises:
        FileNotFoundError: no ``progress.csv``.
        ValueError: not a CSV, no rows, or no real steps or returns to plot (one line).
    """
    csv_path = find_csv(d)
    header, raw = read_table(csv_path)
    tune, algo, env = _describe(csv_path, header)
    cs = column_set(algo)
    if tune:
        needed = [k for k in ("num_real_steps_lifetime", "episode_return_mean")
                  if k not in header]
        if needed:
            raise _missing(csv_path, header, needed)
        rows = [cs.row(r) for r in numeric_rows(raw)]
        names = cs.names
    else:
        names = [cs.old_names.get(k, k) for k in header]
        needed = [k for k in (X_KEY, cs.return_column) if k not in names]
        if needed:
            raise _missing(csv_path, header, needed)
        rows = numeric_rows(raw, cs.old_names)
    if not rows:
        raise ValueError(f"{csv_path} has no rows yet")
    data = {k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=float)
            for k in names}
    if not np.isfinite(data[X_KEY]).any():
        raise ValueError(f"{csv_path}: no number in its {X_KEY} column")
    return PlotRun(csv_path, group_label(csv_path.parent.name), algo, env, data)


def read_progress(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a ``progress.csv`` (ours or a Tune trial's) as float arrays, in its
    algorithm's column names (empty cells -> NaN)."""
    return load_run(path).data


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    """Next to the input: ``<run>/learning_curve.png`` for one run, else
    ``<their common parent>/learning_curves.png``."""
    dirs = [find_csv(d).parent.resolve() for d in run_dirs]
    if len(set(dirs)) == 1:
        return dirs[0] / "learning_curve.png"
    common = []
    for level in zip(*(d.parts for d in dirs), strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) / "learning_curves.png"


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None,
              title: str | None = None) -> Path:
    """One PNG of real-env return vs real steps (:func:`learning_curve_figure`), written to
    ``out`` (default: :func:`default_output`); returns its path.

    Raises:
        FileNotFoundError: a run without ``progress.csv``.
        ValueError: a malformed ``progress.csv``, or nothing to plot.
    """
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(run_dirs, title)
    out = Path(out) if out is not None else default_output(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------- the figure
def group_runs(runs: Sequence[PlotRun]) -> dict[tuple[str, str | None, str], list[PlotRun]]:
    """Runs by (label, env, algorithm): the runs of one curve (seeds)."""
    groups: dict[tuple[str, str | None, str], list[PlotRun]] = {}
    for r in runs:
        groups.setdefault((r.label, r.env, r.algo), []).append(r)
    return groups


def _mean_and_band(usable: list[PlotRun], key: str) -> tuple[np.ndarray, ...]:
    """x, mean, low, high and the band's legend over the runs of one curve (min-max over
    seeds; +-1 std over episodes for a single run)."""
    n = min(len(r.data[X_KEY]) for r in usable)
    x = usable[0].data[X_KEY][:n]
    ys = np.stack([r.data[key][:n] for r in usable])
    with warnings.catch_warnings():  # all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(ys, 0)
        if len(usable) > 1:
            return x, mean, np.nanmin(ys, 0), np.nanmax(ys, 0), "min-max over seeds"
        std = usable[0].data.get(f"{key}_std", np.full(n, np.nan))[:n]
        return x, mean, mean - std, mean + std, "±1 std over episodes"


def _draw_group(ax, name: str, runs: list[PlotRun]) -> str | None:
    """The curves of one group; returns the colour of its first line (None: nothing drawn)."""
    color = None
    for i, curve in enumerate(runs[0].columns.curves):
        usable = [r for r in runs if curve.column in r.data
                  and np.isfinite(r.data[curve.column]).any()]
        if not usable:
            continue
        x, mean, low, high, band = _mean_and_band(usable, curve.column)
        label = (f"{name}: " if name else "") + curve.legend
        if len(usable) > 1:
            label += f" (mean of {len(usable)} seeds)"
        line, = ax.plot(x, mean, curve.style, marker="o", ms=3, label=label)
        color = color or line.get_color()
        if np.isfinite(low).any():
            ax.fill_between(x, low, high, alpha=0.15, color=line.get_color(), lw=0,
                            label=f"  {band}" if i == 0 else None)
    return color


def _draw_baselines(ax, runs: Sequence[PlotRun], colors: dict[str | None, str]) -> None:
    """The random-action return as a dotted line: one per env (never averaged across envs)."""
    levels: dict[str | None, list[float]] = {}
    for r in runs:
        random = r.data.get(RANDOM_KEY, np.array([]))
        random = random[np.isfinite(random)]
        if len(random):
            levels.setdefault(r.env, []).append(float(random[0]))
    several = len({r.env for r in runs}) > 1
    for env, values in levels.items():
        label = "random actions (baseline)"
        if several:
            label = f"random actions on {env or 'an unknown env'} (baseline)"
        ax.axhline(float(np.mean(values)), ls=":", lw=1.2, label=label,
                   color=colors.get(env, "gray") if several else "gray")


def figure_title(runs: Sequence[PlotRun]) -> str:
    """"<algorithm> learning curve[s][ on <env>]" of the runs' algorithm(s) and env."""
    algos = list(dict.fromkeys(r.columns.title for r in runs))  # in the order given
    envs = {r.env for r in runs}
    several = len(group_runs(runs)) > 1
    title = " and ".join(algos) + (" learning curves" if several else " learning curve")
    env = next(iter(envs))
    return title + (f" on {env}" if len(envs) == 1 and env else "")


def learning_curve_figure(run_dirs: Sequence[str | Path], title: str | None = None):
    """The matplotlib figure of real-env return vs real steps.

    Each run dir holds a ``progress.csv``; runs are grouped by their directory name with a
    trailing ``_seedN`` removed (and by env and algorithm), so ``runs/a_seed0`` and
    ``runs/a_seed1`` form one curve (mean, with the min-max band over seeds); a single run is
    shaded with +-1 standard deviation over its evaluation episodes. The curves and their
    legend are the algorithm's (:attr:`ColumnSet.curves`). The random-action return of the
    first iteration is drawn dotted, once per env.

    Raises:
        ValueError: a malformed ``progress.csv``, or no return to plot in any run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in run_dirs]
    groups = group_runs(runs)
    envs = {r.env for r in runs}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors: dict[str | None, str] = {}
    for (label, env, _), members in groups.items():
        name = label if len(groups) > 1 else ""
        if len(envs) > 1 and env and env not in name:
            name = f"{name} [{env}]" if name else env
        color = _draw_group(ax, name, members)
        if color is not None:
            colors.setdefault(env, color)
    if not colors:
        plt.close(fig)
        raise ValueError("nothing to plot: no real-env return in "
                         + ", ".join(str(r.path) for r in runs))
    _draw_baselines(ax, runs, colors)
    ax.set_xlabel("real environment steps learned from")
    ax.set_ylabel("episode return in the real env")
    ax.set_title(title or figure_title(runs))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    return fig
