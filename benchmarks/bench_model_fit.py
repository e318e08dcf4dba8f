"""Model fit with a step budget vs the paper's full-epoch fit, replayed on a run's real data
(issue 12: "bound the fit without losing model quality").

The real transitions of a paper-size HalfCheetah-v5 run (the buffer in a checkpoint of
``bench_iteration.py``, e.g. ``benchmarks/results/checkpoints/iteration_HalfCheetah-v5_v4``)
are replayed as the algorithm saw them: the first ``--start`` rows, then ``--step`` more per
iteration. At every iteration each variant refits its own ensemble (K = 5 of (512, 512), warm
started from its previous fit and Adam state, normalisers refitted on all rows, the fixed
row-id holdout the algorithm uses), exactly as ``EnsembleFitter`` does on the driver:

* ``full``: the paper's procedure (``model_fit_steps=0``: epochs over all training rows until
  early stopping, at most 50);
* ``budget``: ``model_fit_steps`` gradient steps (default 400) in rounds of
  ``model_check_steps`` (40), a share ``model_new_data_fraction`` (0.25) of each batch from the
  rows new since the last fit.

The variants alternate within each iteration (same process, same threads), so the time ratio
is a same-run ratio. Quality: the validation MSE (normalised next-state deltas) on the newest
5,000 held-out rows (the fit's own early-stopping set, identical for both variants) and on
*every* held-out row so far. Writes ``benchmarks/results/model_fit_replay.csv``, a PNG and a
BENCHMARKS.md section.

    .venv/bin/python benchmarks/bench_model_fit.py --until 100000
"""

from __future__ import annotations

import argparse
import csv
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    header_lines,
    load_average,
    markdown_table,
    update_section,
)

DEFAULT_CKPT = (REPO_ROOT / "benchmarks" / "results" / "checkpoints"
                / "iteration_HalfCheetah-v5_v4" / "checkpoint")
OUT = REPO_ROOT / "benchmarks" / "results" / "model_fit_replay"


def load_buffer(checkpoint: Path) -> dict[str, np.ndarray]:
    """``obs, act, next_obs, row_ids`` of the real buffer in an MBMPO checkpoint."""
    with open(checkpoint / "algorithm_state.pkl", "rb") as f:
        state = pickle.load(f)
    buf = state["mbmpo"]["buffer"]
    n = len(buf["reward"])
    ids = np.arange(buf["total_added"] - n, buf["total_added"], dtype=np.int64)
    return {"obs": buf["obs"], "act": buf["act"], "next_obs": buf["next_obs"], "row_ids": ids}


class Variant:
    """One ensemble refitted along the replay, as ``EnsembleFitter`` fits on the driver."""

    def __init__(self, name: str, fit_config, seed: int):
        from mbmpo_ray.models import DynamicsEnsemble

        torch.manual_seed(seed)
        self.name, self.fit_config, self.seed = name, fit_config, seed
        self.ensemble = DynamicsEnsemble(18, 6, 5, (512, 512))
        self.opt_state = None
        self.next_new_id = 0

    def fit(self, data: dict[str, np.ndarray], iteration: int) -> dict[str, float]:
        from mbmpo_ray.models import fit_ensemble

        self.ensemble.update_normalizers(data["obs"], data["act"], data["next_obs"])
        new_rows = int((data["row_ids"] >= self.next_new_id).sum())
        self.next_new_id = int(data["row_ids"][-1]) + 1
        t0 = time.perf_counter()
        result, self.opt_state = fit_ensemble(
            self.ensemble, data["obs"], data["act"], data["next_obs"], self.fit_config,
            generator=torch.Generator().manual_seed(self.seed * 1000 + iteration),
            optimizer_state=self.opt_state, row_ids=data["row_ids"], new_rows=new_rows)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "epochs": float(result.epochs.mean()),
                "val_newest": float(result.val_loss.mean()),
                "val_all": self.holdout_mse(data, self.all_held_out(data))}

    def all_held_out(self, data: dict[str, np.ndarray]) -> np.ndarray:
        """Every row the fixed id-keyed split holds out (the fit validates on the newest
        ``model_max_holdout`` of them)."""
        from mbmpo_ray.models.training import _stable_split

        ids = data["row_ids"]
        val, _ = _stable_split(ids, len(ids), self.fit_config.model_holdout_ratio, len(ids))
        return val.numpy()

    @torch.no_grad()
    def holdout_mse(self, data: dict[str, np.ndarray], holdout: np.ndarray) -> float:
        """Mean over members of the normalised-delta MSE on every held-out row."""
        ens = self.ensemble
        obs, act, nxt = (torch.from_numpy(data[k][holdout]) for k in ("obs", "act", "next_obs"))
        x = ens.input_normalizer.normalize(torch.cat((obs, act), -1))
        y = ens.delta_normalizer.normalize(nxt - obs)
        k = ens.ensemble_size
        sse = torch.zeros(k)
        for s in range(0, len(x), 4096):
            mean, _ = ens.forward_normalized(x[s:s + 4096].unsqueeze(0).expand(k, -1, -1))
            sse += (mean - y[s:s + 4096]).square().sum(dim=(1, 2))
        return float((sse / (len(x) * y.shape[1])).mean())


def main() -> int:
    from mbmpo_ray.models import FitConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT.relative_to(REPO_ROOT)))
    p.add_argument("--start", type=int, default=5000)
    p.add_argument("--step", type=int, default=4000)
    p.add_argument("--until", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit-steps", type=int, default=400)
    p.add_argument("--check-steps", type=int, default=40)
    p.add_argument("--new-fraction", type=float, default=0.25)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    data = load_buffer(REPO_ROOT / args.checkpoint)  # (an absolute path stays as it is)
    until = min(args.until, len(data["obs"]))
    print(f"{len(data['obs'])} real transitions in the checkpoint; replaying up to {until}")
    paper = FitConfig(update_normalizers=False)  # the driver fits the normalisers (as here)
    budget = FitConfig(update_normalizers=False, model_fit_steps=args.fit_steps,
                       model_check_steps=args.check_steps,
                       model_new_data_fraction=args.new_fraction)
    variants = [Variant("full", paper, 0), Variant("budget", budget, 0)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = list(range(args.start, until + 1, args.step))
    for it, n in enumerate(sizes):
        chunk = {k: v[:n] for k, v in data.items()}
        order = variants if it % 2 == 0 else variants[::-1]  # alternate who goes first
        for v in order:
            row = {"real_steps": n, "variant": v.name, **v.fit(chunk, it)}
            rows.append(row)
            print({k: round(x, 4) if isinstance(x, float) else x for k, x in row.items()},
                  flush=True)
        write(rows, args, load_before)
    print(write(rows, args, load_before))
    return 0


def write(rows: list[dict], args, load_before: str) -> str:
    with open(OUT.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by = {(r["real_steps"], r["variant"]): r for r in rows}
    sizes = sorted({r["real_steps"] for r in rows if (r["real_steps"], "budget") in by
                    and (r["real_steps"], "full") in by})
    png = plot(rows, sizes, by)
    marks = [n for n in sizes if n in (sizes[0], sizes[-1]) or n % 20_000 < args.step]
    table = markdown_table(
        ["real steps", "full: s", "budget: s", "time ratio full / budget",
         "full: val MSE newest 5k / all held-out", "budget: val MSE newest 5k / all held-out",
         "epochs (full) / rounds (budget)"],
        [[f"{n:,}", f"{by[n, 'full']['seconds']:.1f}", f"{by[n, 'budget']['seconds']:.1f}",
          f"{by[n, 'full']['seconds'] / by[n, 'budget']['seconds']:.2f}x",
          f"{by[n, 'full']['val_newest']:.4f} / {by[n, 'full']['val_all']:.4f}",
          f"{by[n, 'budget']['val_newest']:.4f} / {by[n, 'budget']['val_all']:.4f}",
          f"{by[n, 'full']['epochs']:.1f} / {by[n, 'budget']['epochs']:.1f}"] for n in marks])
    tot = {v: sum(by[n, v]["seconds"] for n in sizes) for v in ("full", "budget")}
    body = "\n".join([
        *header_lines([args.threads], load_before),
        f"- Data: the real buffer of `{args.checkpoint}` "
        f"(HalfCheetah-v5, paper run), replayed from {args.start:,} rows in steps of "
        f"{args.step:,}; budget: {args.fit_steps} steps in rounds of {args.check_steps}, "
        f"new-data fraction {args.new_fraction}; both warm-started along the replay, "
        "alternating which goes first.",
        "",
        table,
        "",
        f"Total fit time over {len(sizes)} refits: full {tot['full']:.0f} s, budget "
        f"{tot['budget']:.0f} s (**{tot['full'] / max(tot['budget'], 1e-9):.2f}x**). "
        "Validation MSE is in normalised next-state-delta units (lower is better).",
        "",
        f"![model fit replay](benchmarks/results/{png.name})",
    ])
    if not args.no_write:
        update_section("model-fit-replay", "Model fit: step budget vs full epochs (issue 12)",
                       body)
    return body


def plot(rows, sizes, by) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for v, style in (("full", "o-"), ("budget", "s-")):
        a.plot(sizes, [by[n, v]["val_all"] for n in sizes], style, ms=3,
               label=f"{v}: all held-out rows")
        a.plot(sizes, [by[n, v]["val_newest"] for n in sizes], style.replace("-", ":"), ms=3,
               label=f"{v}: newest 5k held-out")
        b.plot(sizes, [by[n, v]["seconds"] for n in sizes], style, ms=3, label=v)
    a.set_yscale("log")
    a.set_xlabel("real transitions")
    a.set_ylabel("validation MSE (normalised deltas)")
    a.legend(fontsize=8)
    b.set_xlabel("real transitions")
    b.set_ylabel("seconds per refit")
    b.legend(fontsize=8)
    fig.tight_layout()
    png = OUT.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
