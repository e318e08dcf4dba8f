"""Learning-curve plots (matplotlib, headless)."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

X_KEY = "real_steps"
CURVES = {
    "episode_return_mean": "pre-update policy (real env)",
    "post_adaptation_return_mean": "adapted policies (real env)",
}


def read_progress(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a ``progress.csv`` written by ``mbmpo-ray train`` (empty cells -> NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no rows yet")

    def num(v: str) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    return {k: np.array([num(r.get(k)) for r in rows]) for k in rows[0]}


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None) -> Path:
    """One PNG of real-env return vs real steps; several runs -> mean and min/max band.

    Each run dir holds a ``progress.csv``; runs are grouped by their parent-less name with a
    trailing ``_seedN`` removed, so ``runs/a_seed0`` and ``runs/a_seed1`` form one curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, np.ndarray]]] = {}
    for d in run_dirs:
        d = Path(d)
        csv_path = d / "progress.csv" if d.is_dir() else d
        if not csv_path.exists():
            raise FileNotFoundError(f"no progress.csv in {d}")
        label = csv_path.parent.name.split("_seed")[0]
        groups.setdefault(label, []).append(read_progress(csv_path))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in groups.items():
        for key, desc in CURVES.items():
            usable = [r for r in runs if key in r and np.isfinite(r[key]).any()]
            if not usable:
                continue
            n = min(len(r[X_KEY]) for r in usable)
            x = usable[0][X_KEY][:n]
            ys = np.stack([r[key][:n] for r in usable])
            with warnings.catch_warnings():  # all-NaN columns (e.g. no adapted policy yet)
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
            style = "-" if key == "episode_return_mean" else "--"
            name = f"{label}: {desc}" + (f" (n={len(usable)})" if len(usable) > 1 else "")
            line, = ax.plot(x, mean, style, marker="o", ms=3, label=name)
            if len(usable) > 1:
                ax.fill_between(x, low, high, alpha=0.2,
                                color=line.get_color())
    ax.set_xlabel("real environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title or "MB-MPO learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
