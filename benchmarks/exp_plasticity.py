"""Plasticity (MB-MPO paper, Fig. 3): does the inner step change the policy more where the
ensemble disagrees? (issue 13, claim 4)

Reads the per-iteration CSV of a HalfCheetah run of ``bench_iteration.py`` (its
``plasticity_*`` columns come from the last meta step of every iteration, see
``mbmpo_ray.meta.step.plasticity``): on the states the pre-update policy visited in imagination
(every 10th step of all 20 x 50 rollouts), the KL from theta to each task's adapted theta'_t
against the ensemble's disagreement there (std of the K members' predicted next states),
summarised per iteration as the mean KL per quintile of disagreement and their Spearman rank
correlation. Writes a PNG into its own dated folder,
``benchmarks/results/exp_plasticity/<YYYY-MM-DD>/``, and a BENCHMARKS.md section.

    .venv/bin/python benchmarks/exp_plasticity.py                     # the v4 run
    .venv/bin/python benchmarks/exp_plasticity.py \
        --csv benchmarks/results/bench_iteration/<run folder>/iteration_X.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    markdown_table,
    new_run_dir,
    results_link,
    update_section,
    utc_date,
)

# the v4 run of bench_iteration.py (2026-11-23)
DEFAULT_CSV = "benchmarks/results/bench_iteration/2026-11-23/iteration_HalfCheetah-v5.csv"
BINS = 5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=DEFAULT_CSV)
    p.add_argument("--skip", type=int, default=3, help="leave out the first iterations (the "
                   "policy is still near its random initialisation)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    path = REPO_ROOT / args.csv
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("plasticity_kl_mean", "") not in ("", "nan")]
    if not rows:
        raise SystemExit(f"{path} has no plasticity columns (run bench_iteration.py first)")
    it = np.array([int(r["iteration"]) for r in rows])
    steps = np.array([int(r["real_steps"]) for r in rows])
    kl = np.array([[float(r[f"plasticity_kl_bin{i}"]) for i in range(BINS)] for r in rows])
    dis = np.array([[float(r[f"plasticity_disagreement_bin{i}"]) for i in range(BINS)]
                    for r in rows])
    corr = np.array([float(r["plasticity_rank_corr"]) for r in rows])
    use = it > args.skip
    ratio = kl[:, -1] / kl[:, 0]  # most vs least disagreeing fifth
    png = plot(steps, kl, dis, corr, use, path.stem)
    table = markdown_table(
        ["iterations", "real steps", "Spearman(KL, disagreement): mean (min .. max)",
         "KL top fifth / bottom fifth of disagreement: median (min .. max)",
         "iterations with correlation > 0"],
        [[f"{it[use][0]}-{it[use][-1]}", f"{steps[use][0]:,}-{steps[use][-1]:,}",
          f"{corr[use].mean():.3f} ({corr[use].min():.3f} .. {corr[use].max():.3f})",
          f"{np.median(ratio[use]):.2f}x ({ratio[use].min():.2f} .. {ratio[use].max():.2f})",
          f"{int((corr[use] > 0).sum())} of {int(use.sum())}"]])
    body = "\n".join([
        f"- Command: `.venv/bin/python benchmarks/exp_plasticity.py --csv {args.csv}`; date "
        f"(UTC) {utc_date()}; data: the last meta step of every iteration of that run "
        f"(iterations 1-{args.skip} left out of the summary: policy near its initialisation).",
        "- Per visited imagined state (every 10th step of 20 tasks x 50 rollouts): "
        "KL(pi_theta || pi_theta'_t) of the task's one-step adaptation, and the ensemble "
        "disagreement (std over the 5 members' predicted next states, mean over dims).",
        "",
        table,
        "",
        f"![plasticity]({results_link(png)})",
    ])
    print(body)
    if not args.no_write:
        update_section("plasticity", "Plasticity vs model disagreement (issue 13, claim 4)", body)
    return 0


def plot(steps, kl, dis, corr, use, stem: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("viridis")
    idx = np.flatnonzero(use)
    for j, i in enumerate(idx):
        a.plot(dis[i], kl[i], "o-", ms=3, color=cmap(j / max(1, len(idx) - 1)), alpha=0.8)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("ensemble disagreement (quintile mean)")
    a.set_ylabel("KL(pre || post) of the inner step (quintile mean)")
    a.set_title("one line per iteration (dark: early, light: late)")
    b.plot(steps[use], corr[use], "o-", ms=3)
    b.axhline(0, color="gray", ls=":")
    b.set_xlabel("real env steps")
    b.set_ylabel("Spearman(KL, disagreement) over visited states")
    fig.suptitle("MB-MPO HalfCheetah-v5: plasticity vs model disagreement (paper Fig. 3)")
    fig.tight_layout()
    name = f"plasticity_{stem}.png"
    out_dir = new_run_dir("exp_plasticity", taken=lambda d: (d / name).exists())
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / name
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
