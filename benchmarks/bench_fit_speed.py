"""One MBPO model refit at mbrl-lib's HalfCheetah shapes: what the fused Adam step gives
(issue 30: "the model fit at mbrl-lib's speed or better per refit").

The refit of ``benchmarks/bench_mbpo.py`` (``tune_configs/mbpo_halfcheetah.py`` ``mbrl_lib`` with
mbrl-lib's settings: 7 Gaussian members of 4 x 200 SiLU, batch 256, lr 1e-3, weight decay
1e-5, holdout 0.2) on ``--rows`` real HalfCheetah-v5 transitions (random actions), for exactly
``--epochs`` epochs (no early stop, so every variant does the same steps), fresh members each
time. Variants, interleaved in a rotating order, ``--reps`` times, CPU time of the calling
thread (``--threads`` torch threads; 1 by default, immune to other processes on the other
core):

* ``fused Adam`` (what ``fit_ensemble`` uses): ``torch.optim.Adam(fused=True)``;
* ``for-loop Adam`` (before): ``torch.optim.Adam`` with its CPU default, one small kernel per
  parameter and operation.

Also a ``torch.profiler`` split of the fused variant into matmuls and the rest. Writes a
BENCHMARKS.md section.

    .venv/bin/python benchmarks/bench_fit_speed.py
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    collect_halfcheetah,
    header_lines,
    load_average,
    markdown_table,
    median,
    median_ratio,
    spread,
    update_section,
)

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


@contextlib.contextmanager
def for_loop_adam():
    """``torch.optim.Adam`` without ``fused`` (its CPU default: the for-loop step)."""
    original = torch.optim.Adam

    def adam(*args, fused=None, **kwargs):
        return original(*args, **kwargs)

    torch.optim.Adam = adam
    try:
        yield
    finally:
        torch.optim.Adam = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=7, help="epochs per refit (mbrl-lib's "
                   "refits in bench_mbpo took 7)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    load0 = load_average()
    torch.set_num_threads(args.threads)

    from bench_mbpo import MBRL_LIB_SETTINGS

    import tune_configs
    from mbmpo_ray.models import DynamicsEnsemble, fit_ensemble

    config = tune_configs.load_config("halfcheetah", "mbrl_lib", algo="mbpo", **MBRL_LIB_SETTINGS)
    fit_cfg = dataclasses.replace(config.fit_config, model_max_epochs=args.epochs,
                                  model_patience=args.epochs + 1)
    data = collect_halfcheetah(num_episodes=max(1, args.rows // 200))
    obs_dim, act_dim = data["obs"].shape[1], data["act"].shape[1]

    def refit():
        ens = DynamicsEnsemble(**config.ensemble_kwargs(obs_dim, act_dim))
        fit_ensemble(ens, data["obs"], data["act"], data["next_obs"], fit_cfg,
                     generator=torch.Generator().manual_seed(0))

    def with_for_loop_adam():
        with for_loop_adam():
            refit()

    variants = {"fused Adam": refit, "for-loop Adam": with_for_loop_adam}
    for run in variants.values():
        run()  # warm-up
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.reps):
        for name in names[r % 2:] + names[:r % 2]:
            t0 = time.thread_time()
            variants[name]()
            times[name].append(time.thread_time() - t0)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        refit()
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    matmul = sum(v for k, v in ops.items() if k in MATMUL_OPS)
    total = sum(ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]

    base = times["fused Adam"]
    rows = [(name, f"{median(t):.2f}", f"{median_ratio(t, base):.2f}x",
             spread([a / b for a, b in zip(t, base, strict=True)])) for name, t in times.items()]
    body = "\n".join([
        *header_lines([args.threads], load0),
        f"- Data: {data['source']}; {args.epochs} epochs per refit, "
        f"{args.reps} interleaved repetitions (medians); CPU seconds of the calling thread", "",
        markdown_table(("refit variant", "CPU s per refit", "ratio vs fused", "spread"), rows),
        "",
        f"Profile of one fused refit (self CPU time): matmuls {matmul:.2f} s of {total:.2f} s "
        f"({100 * matmul / total:.0f}%); top ops: "
        + ", ".join(f"`{k}` {v:.2f} s" for k, v in top) + ".", ""])
    print(body)
    if not args.no_write:
        update_section("bench_fit_speed", "Model refit speed (`benchmarks/bench_fit_speed.py`, "
                       "issue 30)", body)


if __name__ == "__main__":
    main()
