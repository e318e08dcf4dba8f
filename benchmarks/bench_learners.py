"""One run on N = 1 and N = 2 learners (issue 31): MB-MPO's meta update and MBPO's SAC updates.

Both algorithms are built twice on a local Ray, with one learner actor and with two (1 CPU and
one torch thread each, ``num_cpus_per_learner=1``), trained one short iteration each (real
data, a fitted ensemble, a model buffer), then their update phase is timed, interleaved
(N=1, N=2, N=1, ...) on the same machine:

* MB-MPO, HalfCheetah-v5 ``--variant`` (``paper`` by default: the paper's meta step, 20 tasks x
  50 rollouts x 200 steps, TRPO with Gauss-Newton Hessian-vector products; ``fast``: the same
  with first-order ones and a 400-step budget fit); ``meta_steps_per_iter`` lowered to
  ``--meta-steps`` so a call takes seconds): one ``_meta_update`` (its meta steps plus the
  final adaptation) per repetition;
* MBPO, HalfCheetah-v5 ``mbrl_lib`` (SAC 512 x 512, G = 10): ``--updates`` SAC updates of one
  ``train_block`` call per repetition, the global batch of 256 rows split 128 + 128 on two
  learners (``train_batch_size_per_learner=128``), i.e. the same SAC as one learner's (the
  setup iteration is cut down: 1,000 random steps, a 100-step model fit, 20 rollouts per
  step; the update's cost does not depend on them).

Every ``torch.distributed.all_reduce`` in the learner processes is timed (its wall time
includes waiting for the slower learner), so the table says how much of N=2's time the
collectives took. Seconds per 1,000 real steps of MBPO's SAC updates = seconds per update x
G x 1,000. The projection to 8 and 32 learners is computed from these numbers with the
assumptions printed next to it. On two cores the two learners of N=2 have one core each only
when nothing else runs: the script refuses to start when the 1-minute load average is above
``--max-load``.

    .venv/bin/python benchmarks/bench_learners.py            # ~8 min on two cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from _common import (
    cpu_model,
    header_lines,
    load_average,
    markdown_table,
    median,
    new_run_dir,
    on_learners,
    read_collectives,
    results_link,
    time_collectives,
    update_section,
)

SECTION = "learners"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--meta-steps", type=int, default=2, help="MB-MPO meta steps per call")
    p.add_argument("--updates", type=int, default=60, help="MBPO SAC updates per call")
    p.add_argument("--max-load", type=float, default=0.8,
                   help="refuse to start above this 1-minute load average")
    p.add_argument("--variant", choices=("paper", "fast"), default="paper",
                   help="MB-MPO's HalfCheetah config variant (tune_configs/halfcheetah.py)")
    p.add_argument("--iteration", action="store_true",
                   help="also time one whole MB-MPO HalfCheetah iteration (30 meta steps), "
                        "twice each on 1 and 2 learners (about 9 (fast) to 15 (paper) more "
                        "minutes)")
    p.add_argument("--iteration-fit", choices=("driver", "trainers"), default="driver",
                   help="where that iteration fits the ensemble: on the driver (all five "
                        "members batched, torch's default threads: the faster here) or on "
                        "the config's five model-trainer actors")
    p.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    return p.parse_args()


def build(algo: str, num_learners: int):
    import tune_configs

    if algo == "mbmpo":
        config = tune_configs.load_config("halfcheetah", ARGS.variant, algo="mbmpo", seed=0,
                                          num_model_trainers=0, real_steps_per_iter=1000)
        config.training(meta_steps_per_iter=ARGS.meta_steps)
    else:
        config = tune_configs.load_config("halfcheetah", "mbrl_lib", algo="mbpo", seed=0,
                                          num_model_trainers=0, model_train_freq=50,
                                          env_steps_per_block=50, initial_random_steps=1000,
                                          model_fit_steps=100, model_check_steps=50,
                                          rollouts_per_step=20,
                                          train_batch_size_per_learner=256 // num_learners)
    config.learners(num_learners=num_learners, num_cpus_per_learner=1)
    a = config.build_algo()
    a.train()  # data, ensemble, model buffer
    on_learners(a, time_collectives)
    return a


def measure_iteration() -> dict:
    """Wall time of one whole MB-MPO HalfCheetah ``--variant`` iteration (the first: 5,000 random
    real steps, the model fit, 30 meta steps and the final adaptation) on 1 and on 2 learners
    of one thread each, run in the order 1, 2, 2, 1 (a fresh algorithm each time); the fit
    where ``--iteration-fit`` puts it. Per N: the runs and their phases."""
    import tune_configs

    fit = {} if ARGS.iteration_fit == "trainers" else {"num_model_trainers": 0}
    out = {1: [], 2: []}
    for n in (1, 2, 2, 1):
        config = tune_configs.load_config("halfcheetah", ARGS.variant, algo="mbmpo", seed=0,
                                          **fit)
        config.learners(num_learners=n, num_cpus_per_learner=1)
        algo = config.build_algo()
        try:
            t0 = time.perf_counter()
            result = algo.train()
            run = {"s": time.perf_counter() - t0,
                   "timers": {k: float(v) for k, v in result.get("timers", {}).items()
                              if isinstance(v, (int, float))}}
        finally:
            algo.stop()
        out[n].append(run)
        print(f"mbmpo iteration N={n}: {run['s']:.1f} s {run['timers']}", flush=True)
    return out


def timed_call(algo_name: str, algo, rep: int) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    if algo_name == "mbmpo":
        algo._meta_update(seed=1000 + rep)
    else:
        res = algo.learner_group.foreach_learner(
            lambda lr, **kw: lr.train_block(**kw), new_real=None, num_updates=ARGS.updates,
            seed=1000 + rep)
        algo.all_learners_results(res, "the SAC updates")
    secs = time.perf_counter() - t0
    coll = on_learners(algo, read_collectives)
    return secs, coll


def measure(algo_name: str) -> dict:
    algos = {n: build(algo_name, n) for n in (1, 2)}
    try:
        for a in algos.values():  # warm-up
            timed_call(algo_name, a, -1)
        times = {1: [], 2: []}
        coll = {1: [], 2: []}
        for r in range(ARGS.reps):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                secs, c = timed_call(algo_name, algos[n], r)
                times[n].append(secs)
                coll[n].append(c)
                print(f"{algo_name} N={n} rep {r}: {secs:.2f} s, all_reduce "
                      f"{[round(x['s'], 3) for x in c]} s in {[x['calls'] for x in c]} calls",
                      flush=True)
    finally:
        for a in algos.values():
            a.stop()
    t1, t2 = median(times[1]), median(times[2])
    # the collectives' time of N=2: mean over its learners, median over repetitions
    c2 = median([np.mean([x["s"] for x in c]) for c in coll[2]])
    calls = median([np.mean([x["calls"] for x in c]) for c in coll[2]])
    numel = median([np.mean([x["numel"] for x in c]) for c in coll[2]])
    return {"t1": t1, "t2": t2, "speedup": t1 / t2, "coll2": c2, "calls": calls,
            "numel_per_call": numel / max(calls, 1), "times": times}


def split_work(m: dict) -> tuple[float, float]:
    """(parallel, serial) seconds of one call on one learner: the work that halved at N=2
    (its time without the collectives) and the rest."""
    parallel = 2.0 * (m["t1"] - (m["t2"] - m["coll2"]))
    parallel = min(max(parallel, 0.0), m["t1"])
    return parallel, m["t1"] - parallel


def project(m: dict, units: int, n: int, scale: float = 1.0) -> tuple[float, float]:
    """(seconds on ``n`` learners, seconds on one) of a call with ``scale`` x the parallel
    work, split in ``units`` equal parts (see ASSUMPTIONS)."""
    parallel, serial = split_work(m)
    share = math.ceil(units / n) / units  # the largest learner's share of the work
    # ring all-reduce: 2 (n - 1) latency hops, 2 (n - 1) / n of the bytes per learner
    per_call = (2 * (n - 1) * LATENCY_S
                + 2 * (n - 1) / n * m["numel_per_call"] * 4 / BANDWIDTH_BPS)
    return (parallel * scale * share + serial + m["calls"] * per_call,
            parallel * scale + serial)


LATENCY_S, BANDWIDTH_BPS = 50e-6, 1.25e9
ASSUMPTIONS = (
    "parallel work = 2 x (t(1) - (t(2) - collectives(2))), the rest serial (replicated on "
    "every learner); the largest learner's share is ceil(units / N) / units (MB-MPO: 20 "
    "tasks, so at most 20 learners -- 32 learners need num_tasks >= 32 and are projected for "
    "32 tasks of the same per-task cost; MBPO: 256 batch rows); every collective a ring "
    "all-reduce over a 10 Gb/s network (1.25 GB/s) with 50 us per hop, the number and size "
    "of the collectives as measured at N=2; no stragglers")


def report(res: dict, load0: str, out_dir, iteration: dict | None = None) -> str:
    rows = []
    for name, m in res.items():
        unit = (f"meta update ({ARGS.variant})" if name == "mbmpo"
                else f"{ARGS.updates} SAC updates")
        rows.append([name.upper().replace("MBMPO", "MB-MPO"), unit, f"{m['t1']:.2f}",
                     f"{m['t2']:.2f}", f"**{m['speedup']:.2f}x**",
                     f"{m['coll2']:.2f} ({100 * m['coll2'] / m['t2']:.0f}%)",
                     f"{m['calls']:.0f} x {m['numel_per_call']:.0f}"])
    body = [*header_lines([1], load0), f"- Results: `{results_link(out_dir)}`", "",
            markdown_table(["algorithm", "timed call", "N=1 s", "N=2 s", "speed-up",
                            "all_reduce at N=2 s (share)", "collectives x numbers"], rows), ""]
    if iteration:
        def mean_of(n, key=None):
            runs = iteration[n]
            return float(np.mean([r["s"] if key is None else r["timers"].get(key, np.nan)
                                  for r in runs]))

        t1, t2 = mean_of(1), mean_of(2)
        meta = [mean_of(n, "meta_update") for n in (1, 2)]
        where = ("on the driver (five members batched, two threads)"
                 if ARGS.iteration_fit == "driver" else "on the config's five model-trainer actors")
        runs = "; ".join(f"N={n}: " + ", ".join(f"{r['s']:.0f}" for r in iteration[n]) + " s"
                         for n in (1, 2))
        body.append(f"One whole MB-MPO HalfCheetah `{ARGS.variant}` iteration (the first: "
                    f"5,000 random real steps, the model fit {where}, 30 meta steps; two runs "
                    f"per N in the order 1, 2, 2, 1: {runs}): {t1:.0f} s on one learner, "
                    f"{t2:.0f} s on two (**{t1 / t2:.2f}x**, means); its meta update "
                    f"{meta[0]:.0f} s and {meta[1]:.0f} s ({meta[0] / meta[1]:.2f}x).")
        if "mbmpo" in res and math.isfinite(meta[0]):
            # the iteration's meta update scales as the timed calls (same model, scaled to
            # its measured length); the rest of the iteration (sampling, fit) stays serial
            m, rest = res["mbmpo"], t1 - meta[0]
            cells = []
            for n in (8, 32):
                units, scale = max(20, n), max(20, n) / 20
                t, one = project(m, units, n, scale)
                it_n = rest + meta[0] * t / m["t1"]
                it_1 = rest + meta[0] * one / m["t1"]
                cells.append(f"{n} learners {it_n:.0f} s ({it_1 / it_n:.1f}x"
                             + (", 32 tasks" if n > 20 else "") + ")")
            body.append(f"Projected, this iteration (its sampling and fit, {rest:.0f} s, "
                        f"unchanged): " + "; ".join(cells) + ".")
        body.append("")
    if "mbpo" in res:
        m = res["mbpo"]
        per_k = {n: m[f"t{n}"] / ARGS.updates * 10 * 1000 for n in (1, 2)}
        body.append(f"MBPO's SAC updates per 1,000 real steps (G = 10): {per_k[1]:.0f} s on "
                    f"one learner, {per_k[2]:.0f} s on two ({per_k[1] / per_k[2]:.2f}x).")
        body.append("")
    proj = []
    for name, m in res.items():
        cells = [name.upper().replace("MBMPO", "MB-MPO"), f"{m['t1']:.2f}"]
        for n in (2, 8, 32):
            # MB-MPO: at most num_tasks learners, so 32 learners run 32 tasks
            units, scale = ((max(20, n), max(20, n) / 20) if name == "mbmpo" else (256, 1.0))
            t, one = project(m, units, n, scale)
            cells.append(f"{t:.2f} ({one / t:.1f}x)")
        proj.append(cells)
    body += ["Projection (seconds per timed call, speed-up against one learner on the same "
             "work):", "", markdown_table(["algorithm", "N=1 s", "N=2 (model)", "N=8",
                                           "N=32"], proj), "", f"Assumptions: {ASSUMPTIONS}."]
    return "\n".join(body)


def main() -> None:
    global ARGS
    ARGS = parse_args()
    load0 = load_average()
    if os.getloadavg()[0] > ARGS.max_load:
        sys.exit(f"load average {load0}: other work would share the learners' cores; stop it "
                 f"(or pass --max-load)")
    import ray

    import mbmpo_ray  # noqa: F401  (registers the algorithms)

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    res = {name: measure(name) for name in ("mbmpo", "mbpo")}
    iteration = measure_iteration() if ARGS.iteration else None
    ray.shutdown()
    out_dir = new_run_dir("bench_learners")
    out_dir.mkdir(parents=True)
    (out_dir / "results.json").write_text(json.dumps(
        {"cpu": cpu_model(), "args": vars(ARGS), "results": res, "iteration": iteration},
        indent=1, default=float))
    text = report(res, load0, out_dir, iteration)
    print(text)
    if not ARGS.no_write:
        update_section(SECTION, "One run on more learners (issue 31)", text)


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
