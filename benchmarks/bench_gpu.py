"""The paper-size MB-MPO meta step on a GPU, against the same machine's CPU (issue 12's GPU lever).

Same setup as ``bench_meta_step.py`` (HalfCheetah-v5 data, K = 5 members of (512, 512), T = 20
tasks x N = 50 rollouts x H = 200, policy (32, 32), TRPO with 10 CG iterations, second-order
MAML), built once on the CPU and copied to the GPU, so both devices run the same weights and
start states. Variants, each timed with ``torch.cuda.synchronize()`` around it:

* ``meta_step`` on the GPU (float32), with bf16 imagination (``torch.autocast``), first order;
* one ``imagine`` call (float32 and bf16) and ``trpo_outer_step`` alone on the GPU;
* the same ``meta_step`` on this machine's CPU with each of ``--cpu-threads`` (the baseline of
  the ratios; one repetition each, they take tens of seconds);
* ``--profile``: one GPU meta step under ``torch.profiler``: kernel launches, the time the GPU
  is busy in kernels against the wall time (how launch-bound the step is), the top kernels.

Writes ``<out>/gpu_meta_step.json`` and prints a Markdown section; ``--report JSON`` renders a
saved JSON into BENCHMARKS.md (the GPU machine cannot write to the repository)::

    python benchmarks/bench_gpu.py --out /tmp/gpu --profile          # on a machine with CUDA
    .venv/bin/python benchmarks/bench_gpu.py --report benchmarks/results/gpu_meta_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import _common as C
import torch
from bench_meta_step import Setup, build_setup, detach, run_pieces

from mbmpo_ray.meta import meta_step, trpo_outer_step

SECTION = ("bench_gpu", "Meta step on a GPU (`benchmarks/bench_gpu.py`)")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def run_meta(s: Setup, seed: int, cfg=None, bf16: bool = False) -> dict:
    new, diag = meta_step(s.policy, detach(s.params0), s.sample_fn(seed, bf16=bf16),
                          cfg or s.cfg)
    return {"post_return": float(diag["post_return_mean"]),
            "pre_return": float(diag["pre_return_mean"]), "ls_steps": float(diag["ls_steps"]),
            "log_std": float(new["log_std"].float().mean())}


def gpu_variants(g: Setup, reps: int) -> tuple[dict[str, list[float]], dict]:
    keep: dict = {}
    run_pieces(g, 7, keep)  # batches for trpo_outer_step alone (and a warm-up)
    cfg_fo = dataclasses.replace(g.cfg, first_order=True)
    outcomes: dict[str, dict] = {}

    def record(name, fn):
        def go():
            outcomes[name] = fn()
        return go

    variants = {
        "meta_step": record("meta_step", lambda: run_meta(g, 101)),
        "meta_step_bf16": record("meta_step_bf16", lambda: run_meta(g, 101, bf16=True)),
        "meta_step_fo": record("meta_step_fo", lambda: run_meta(g, 101, cfg_fo)),
        "imagine": lambda: g.sample_fn(101)(g.theta_tasks()),
        "imagine_bf16": lambda: g.sample_fn(101, bf16=True)(g.theta_tasks()),
        "trpo_outer_step": lambda: trpo_outer_step(g.policy, detach(g.params0), [keep["tb"]],
                                                   keep["post"], g.cfg),
    }
    for fn in variants.values():  # warm-up (kernels, cuBLAS handles, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(variants[name]))
        print(f"gpu rep {r + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.3f} s"
                                                     for k, v in times.items()), flush=True)
    return times, outcomes


def cpu_baseline(s: Setup, threads: list[int]) -> dict[str, dict]:
    out = {}
    for nt in threads:
        torch.set_num_threads(nt)
        res: dict = {}
        t = timed(lambda: res.update(run_meta(s, 101)))  # noqa: B023
        out[str(nt)] = {"seconds": t, **res}
        print(f"cpu meta_step with {nt} threads: {t:.1f} s", flush=True)
    return out


def profile_gpu(g: Setup) -> dict:
    from torch.profiler import ProfilerActivity, profile

    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_meta(g, 101)
        sync()
    wall = time.perf_counter() - t0
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6  # us -> s (overlaps ignored)
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        v = by_name.setdefault(e.name[:70], [0, 0.0])
        v[0] += 1
        v[1] += e.device_time / 1e6
    top = sorted(by_name.items(), key=lambda kv: kv[1][1], reverse=True)[:10]
    return {"wall_s_under_profiler": wall, "kernel_launches": len(kernels),
            "kernel_busy_s": busy, "top_kernels": [[k, n, s] for k, (n, s) in top]}


def measure(args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); "
                 "--device cpu runs its variants on the CPU as a smoke test")
    s = build_setup(args.quick)
    g = s.to(args.device)
    reps = args.reps or (2 if args.quick else 5)
    t0 = time.perf_counter()
    times, outcomes = gpu_variants(g, reps)
    result = {
        "date": C.utc_date(), "command": C.command_line(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "none (--device cpu)",
        "torch": torch.__version__,
        "cpu": platform.processor() or C.cpu_model(), "cpu_count": os.cpu_count(),
        "sizes": {"K": 5, "hidden": list(s.hidden), "tasks": s.cfg.num_tasks,
                  "rollouts": s.rollouts, "horizon": s.horizon, "source": s.source},
        "reps": reps, "gpu_times": times, "gpu_outcomes": outcomes,
        "gpu_seconds_measuring": time.perf_counter() - t0,
    }
    threads = [int(t) for t in args.cpu_threads.split(",") if t.strip()]
    result["cpu"] = cpu_baseline(s, threads) if threads else {}
    if args.profile and args.device == "cuda":
        result["profile"] = profile_gpu(g)
    if args.sac:
        result["sac"] = sac_blocks(args)
    return result


def sac_blocks(args) -> dict:
    """ms per MBPO SAC update (mbrl-lib's HalfCheetah sizes: SAC 512 x 512, batch 256) in
    blocks of ``--sac-updates`` on one Learner, three ways, interleaved: the CUDA graph
    (default), the same quiet update eagerly, and RLlib's ``_update`` for every step."""
    import ray
    from bench_mbpo import MBRL_LIB_SETTINGS

    import tune_configs

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    settings = {**MBRL_LIB_SETTINGS, "initial_random_steps": 1000}
    cfg = tune_configs.load_config("halfcheetah", "mbrl_lib", algo="mbpo",
                                   model_device=args.device, sac_cuda_graph=True, **settings)
    cfg.learners(num_gpus_per_learner=1 if args.device == "cuda" else 0)
    algo = cfg.build_algo()
    try:
        algo.train()  # random steps, first fit and rollouts, one block (captures the graph)
        lrn = algo.learner_group._learner
        quiet = lrn._quiet_update
        graphed = lrn._graph is not None

        def run(mode: str):
            def go():
                lrn._graph_failed = mode != "graph"
                lrn._quiet_update = lrn._update if mode == "rllib_update" else quiet
                lrn.train_block(new_real=None, num_updates=args.sac_updates, seed=3)
            return go

        modes = (["graph"] if graphed else []) + ["quiet_eager", "rllib_update"]
        variants = {m: run(m) for m in modes}
        for fn in variants.values():
            fn()
        times = {m: [] for m in modes}
        for r in range(args.reps or 3):
            for m in modes[r % len(modes):] + modes[:r % len(modes)]:
                times[m].append(timed(variants[m]) * 1e3 / args.sac_updates)
            print("sac rep: " + ", ".join(f"{m} {v[-1]:.2f} ms" for m, v in times.items()),
                  flush=True)
        lrn._graph_failed, lrn._quiet_update = False, quiet
        return {"updates_per_block": args.sac_updates, "graph_captured": graphed,
                "ms_per_update": times}
    finally:
        algo.stop()
        ray.shutdown()


def sac_report(res: dict) -> str:
    t = res["ms_per_update"]
    base = t["rllib_update"]
    rows = [[m, f"{C.median(v):.2f}", C.spread(v), f"{C.median_ratio(base, v):.2f}x"]
            for m, v in t.items()]
    return "\n".join([
        f"- MBPO SAC updates on the same Learner (mbrl-lib's HalfCheetah sizes: SAC 512 x 512, "
        f"batch 256), blocks of {res['updates_per_block']} updates, interleaved; graph "
        f"captured: {res['graph_captured']}.",
        "",
        C.markdown_table(["update path", "ms per update (median)", "min-max",
                          "speed-up vs RLlib's `_update` per step"], rows),
    ])


def report(res: dict) -> str:
    t = res["gpu_times"]
    med = {k: C.median(v) for k, v in t.items()}
    rows = [
        ["`meta_step`, float32 (paper config: second order, TRPO)", f"{med['meta_step']:.3f}",
         C.spread(t["meta_step"]), "1 (reference)"],
        ["`meta_step`, bf16 imagination (autocast)", f"{med['meta_step_bf16']:.3f}",
         C.spread(t["meta_step_bf16"]),
         f"{C.median_ratio(t['meta_step'], t['meta_step_bf16']):.2f}x"],
        ["`meta_step`, first order", f"{med['meta_step_fo']:.3f}", C.spread(t["meta_step_fo"]),
         f"{C.median_ratio(t['meta_step'], t['meta_step_fo']):.2f}x"],
        ["one `imagine` call, float32", f"{med['imagine']:.3f}", C.spread(t["imagine"]), ""],
        ["one `imagine` call, bf16", f"{med['imagine_bf16']:.3f}", C.spread(t["imagine_bf16"]),
         f"{C.median_ratio(t['imagine'], t['imagine_bf16']):.2f}x vs float32 `imagine`"],
        ["`trpo_outer_step` alone", f"{med['trpo_outer_step']:.3f}",
         C.spread(t["trpo_outer_step"]), ""],
    ]
    for nt, c in res["cpu"].items():
        rows.append([f"`meta_step` on this machine's CPU, {nt} torch threads (1 run)",
                     f"{c['seconds']:.2f}", "",
                     f"GPU is **{c['seconds'] / med['meta_step']:.1f}x** faster"])
    o = res["gpu_outcomes"]
    sz = res["sizes"]
    lines = [
        f"- Command: `{res['command']}`, date {res['date']}, on a lent GPU machine: "
        f"{res['gpu']}, {res['cpu_count']} CPU cores, torch {res['torch']}. Sizes: K = "
        f"{sz['K']} members of {tuple(sz['hidden'])}, T = {sz['tasks']} x N = {sz['rollouts']} x "
        f"H = {sz['horizon']}; ensemble fitted on {sz['source']}; {res['reps']} interleaved "
        "repetitions on the GPU (median, min-max), each timed between `cuda.synchronize()`.",
        "",
        C.markdown_table(["variant", "median s", "min-max", "speed-up"], rows),
        "",
        f"- Outcomes (same seed): post-update imagined return float32 "
        f"{o['meta_step']['post_return']:.1f}, bf16 {o['meta_step_bf16']['post_return']:.1f}, "
        f"first order {o['meta_step_fo']['post_return']:.1f}"
        + "".join(f"; CPU ({nt} threads) {c['post_return']:.1f}" for nt, c in res["cpu"].items())
        + " (different RNG streams on the two devices, so equal only in distribution).",
    ]
    if "profile" in res:
        p = res["profile"]
        lines.append(
            f"- Profile of one GPU meta step: {p['kernel_launches']:,} kernel launches, kernels "
            f"busy {p['kernel_busy_s']:.3f} s of {p['wall_s_under_profiler']:.3f} s wall "
            f"({p['kernel_busy_s'] / p['wall_s_under_profiler']:.0%}; the rest is launch and "
            "Python overhead). Top kernels: " + ", ".join(
                f"`{k[:40]}` {n}x {s:.3f} s" for k, n, s in p["top_kernels"][:5]))
    if "sac" in res:
        lines += ["", sac_report(res["sac"])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--reps", type=int, default=None, help="GPU repetitions (default 5)")
    ap.add_argument("--cpu-threads", default="16",
                    help="torch thread counts of the CPU baseline ('' to skip)")
    ap.add_argument("--profile", action="store_true", help="profile one GPU meta step")
    ap.add_argument("--sac", action="store_true",
                    help="also time MBPO's SAC update block (graph, eager, RLlib's _update)")
    ap.add_argument("--sac-updates", type=int, default=500, help="SAC updates per timed block")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="where the 'GPU' variants run (cpu: a smoke test of this script)")
    ap.add_argument("--out", type=Path, default=Path("."), help="folder of the JSON")
    ap.add_argument("--report", type=Path, default=None,
                    help="render a saved JSON into BENCHMARKS.md instead of measuring")
    args = ap.parse_args()
    if args.report is not None:
        text = report(json.loads(args.report.read_text()))
        C.update_section(SECTION[0], SECTION[1], text)
        print(text)
        return
    res = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_meta_step.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"\nwrote {path}\n")
    print(report(res))


if __name__ == "__main__":
    main()
