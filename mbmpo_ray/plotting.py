"""Learning-curve plots of ``progress.csv`` files (matplotlib, headless)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mbmpo_ray.progress import read_rows

X_KEY = "real_steps"
#: column -> (legend text, line style); the columns are documented in ``progress.CSV_SCHEMA``
CURVES = {
    "return_pre_update": ("pre-update meta-policy θ", "-"),
    "return_adapted": ("adapted θ' (θ after one inner step, same iteration)", "--"),
}
RANDOM_KEY = "return_random"


def read_progress(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a ``progress.csv`` written by ``mbmpo-ray train`` as float arrays (empty
    cells -> NaN; the column names of older files renamed to the current ones)."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows yet")
    keys = list(rows[0])
    return {k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=float)
            for k in keys}


def _csv_of(d: str | Path) -> Path:
    d = Path(d)
    csv_path = d / "progress.csv" if d.is_dir() else d
    if not csv_path.exists():
        raise FileNotFoundError(f"no progress.csv in {d}")
    return csv_path


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    """Next to the input: ``<run>/learning_curve.png`` for one run, else
    ``<their common parent>/learning_curves.png``."""
    dirs = [_csv_of(d).parent.resolve() for d in run_dirs]
    if len(set(dirs)) == 1:
        return dirs[0] / "learning_curve.png"
    parts = [d.parts for d in dirs]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) / "learning_curves.png"


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None,
              title: str | None = None) -> Path:
    """One PNG of real-env return vs real steps (:func:`learning_curve_figure`), written to
    ``out`` (default: :func:`default_output`); returns its path."""
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(run_dirs, title)
    out = Path(out) if out is not None else default_output(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def learning_curve_figure(run_dirs: Sequence[str | Path], title: str | None = None):
    """The matplotlib figure of real-env return vs real steps.

    Each run dir holds a ``progress.csv``; runs are grouped by their directory name with a
    trailing ``_seedN`` removed, so ``runs/a_seed0`` and ``runs/a_seed1`` form one curve (mean,
    with the min-max band over seeds); a single run is shaded with +-1 standard deviation over
    its evaluation episodes. The random-action return of the first iteration is drawn as a
    dotted baseline.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, np.ndarray]]] = {}
    for d in run_dirs:
        csv_path = _csv_of(d)
        label = csv_path.parent.name.split("_seed")[0]
        groups.setdefault(label, []).append(read_progress(csv_path))

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    several = len(groups) > 1
    random_levels = []
    for label, runs in groups.items():
        for r in runs:
            finite = r.get(RANDOM_KEY, np.array([]))
            finite = finite[np.isfinite(finite)]
            if len(finite):
                random_levels.append(float(finite[0]))
        for key, (desc, style) in CURVES.items():
            usable = [r for r in runs if key in r and np.isfinite(r[key]).any()]
            if not usable:
                continue
            n = min(len(r[X_KEY]) for r in usable)
            x = usable[0][X_KEY][:n]
            ys = np.stack([r[key][:n] for r in usable])
            with warnings.catch_warnings():  # all-NaN columns
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(ys, 0)
                if len(usable) > 1:
                    low, high, band = np.nanmin(ys, 0), np.nanmax(ys, 0), "min-max over seeds"
                else:
                    std = usable[0].get(f"{key}_std", np.full(n, np.nan))[:n]
                    low, high, band = mean - std, mean + std, "±1 std over episodes"
            name = (f"{label}: " if several else "") + desc
            if len(usable) > 1:
                name += f" (mean of {len(usable)} seeds)"
            line, = ax.plot(x, mean, style, marker="o", ms=3, label=name)
            if np.isfinite(low).any():
                ax.fill_between(x, low, high, alpha=0.15, color=line.get_color(), lw=0,
                                label=f"  {band}" if key == "return_pre_update" else None)
    if random_levels:
        ax.axhline(float(np.mean(random_levels)), color="gray", ls=":", lw=1.2,
                   label="random actions (baseline)")
    ax.set_xlabel("real environment steps learned from")
    ax.set_ylabel("episode return in the real env")
    ax.set_title(title or "MB-MPO learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    return fig
