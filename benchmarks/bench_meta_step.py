"""Wall time of one MB-MPO meta step at paper sizes (HalfCheetah-v5, CPU), split into pieces.

Paper sizes: K = 5 members of (512, 512), T = 20 tasks x N = 50 rollouts x H = 200 steps (so two
imaginations of 200,000 transitions each), policy (32, 32) tanh, TRPO outer step (10 CG
iterations, up to 15 line-search steps), second-order MAML.

Every repetition runs, interleaved (rotating order) and with the same seed:

* ``meta_step``: :func:`mbmpo_ray.meta.meta_step` end to end (the code path the learner runs);
* ``pieces``: the same meta step re-assembled from the public functions (``imagine``,
  ``process_batch``, ``inner_gradients``, ``adapt``, ``adapt_steps``, ``outer_surrogate``,
  ``mean_kl``, ``make_hvp``, ``conjugate_gradient``, ``backtracking_line_search``) the way
  ``meta_step`` / ``trpo_meta_update`` / ``trpo_step`` call them, with a stopwatch between calls.
  Its new parameters are checked against ``meta_step``'s (same seed, same result);
* baselines: ``meta_step`` with ``first_order=True`` and one ``imagine`` call alone.

``--what-if`` also times, on each repetition's own batches, the other TRPO curvature settings
``MetaConfig`` offers (``hvp_method``, ``hvp_subsample``) with the cosine between their search
directions and the default's, bf16 imagination, and (in child processes) glibc malloc settings
that avoid page faults (adds ~3-4 min); ``--profile`` runs one meta step under
``torch.profiler``.

Run from the repo root::

    .venv/bin/python benchmarks/bench_meta_step.py                 # paper sizes (~2-4 min)
    .venv/bin/python benchmarks/bench_meta_step.py --what-if --profile
    .venv/bin/python benchmarks/bench_meta_step.py --quick         # smoke test, small sizes
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common as C
import torch
from torch.profiler import ProfilerActivity, profile

import mbmpo_ray.meta.maml as maml_mod
import mbmpo_ray.meta.optim as optim_mod
from mbmpo_ray.envs import get_env_spec
from mbmpo_ray.imagination import imagine
from mbmpo_ray.meta import (
    GaussianMLPPolicy,
    MetaConfig,
    TaskBatch,
    adapt,
    explained_variance,
    imagined_return,
    inner_gradients,
    meta_step,
    process_batch,
    trpo_meta_update,
)

K = 5
HIDDEN = (512, 512)
POLICY_HIDDEN = (32, 32)

PIECES = {
    "imagine_pre": "imagination, pre-update (`imagine`)",
    "process_pre": "`process_batch` pre (returns, linear baseline, GAE, old log-probs)",
    "inner_diag": "inner-step diagnostics (`inner_gradients` norms, explained variance)",
    "adapt": "inner step (`adapt`, first order as in `meta_step`)",
    "imagine_post": "imagination, post-update (`imagine`)",
    "process_post": "`process_batch` post (+ return diagnostics)",
    "trpo_grad": "TRPO: surrogate gradient through the inner step (+ old adapted params)",
    "trpo_hvp_setup": "TRPO: HVP setup (graphs built once by the HVP builder)",
    "trpo_cg": "TRPO: CG (`cg_iters` HVPs)",
    "trpo_shs": "TRPO: step-size HVP (`s^T H s`)",
    "trpo_ls": "TRPO: line search",
    "other": "rest (entropy, copies)",
}
IMAGINATION = ("imagine_pre", "imagine_post")
INNER = ("process_pre", "inner_diag", "adapt", "process_post")
TRPO = ("trpo_grad", "trpo_hvp_setup", "trpo_cg", "trpo_shs", "trpo_ls")
HVP_BUILDERS = ("make_hvp", "make_gauss_newton_hvp")


class Stopwatch:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.t
        self.t = now


@contextlib.contextmanager
def instrument_trpo(acc: dict):
    """Time, from outside, what ``trpo_meta_update`` / ``trpo_step`` call: the HVP builders,
    every HVP product, ``conjugate_gradient`` and ``backtracking_line_search`` (by wrapping
    the module globals they are looked up through; restored on exit). Also keeps the CG
    right-hand side (the surrogate gradient) and solution (the search direction)."""
    acc.update(setup=0.0, cg=0.0, hvp=0.0, hvp_in_cg=0.0, ls=0.0, n_hvp=0, in_cg=False)

    def wrap_builder(fn):
        def builder(*a, **kw):
            t0 = time.perf_counter()
            hvp = fn(*a, **kw)
            acc["setup"] += time.perf_counter() - t0

            def timed_hvp(v):
                t1 = time.perf_counter()
                out = hvp(v)
                dt = time.perf_counter() - t1
                acc["hvp"] += dt
                acc["n_hvp"] += 1
                if acc["in_cg"]:
                    acc["hvp_in_cg"] += dt
                return out

            return timed_hvp

        return builder

    def wrap_cg(fn):
        def cg(avp, b, *a, **kw):
            acc["in_cg"] = True
            t0 = time.perf_counter()
            try:
                x = fn(avp, b, *a, **kw)
            finally:
                acc["in_cg"] = False
            acc["cg"] += time.perf_counter() - t0
            acc["grad"], acc["direction"] = b.detach().clone(), x.detach().clone()
            return x

        return cg

    def wrap_ls(fn):
        def ls(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            acc["ls"] += time.perf_counter() - t0
            return out

        return ls

    patches = []
    for module in (maml_mod, optim_mod):
        for name in HVP_BUILDERS:
            if hasattr(module, name):
                patches.append((module, name, wrap_builder))
    if hasattr(optim_mod, "conjugate_gradient"):
        patches.append((optim_mod, "conjugate_gradient", wrap_cg))
    if hasattr(optim_mod, "backtracking_line_search"):
        patches.append((optim_mod, "backtracking_line_search", wrap_ls))
    originals = [(m, n, getattr(m, n)) for m, n, _ in patches]
    try:
        for m, n, wrapper in patches:
            setattr(m, n, wrapper(getattr(m, n)))
        yield acc
    finally:
        for m, n, fn in originals:
            setattr(m, n, fn)


def detach(params):
    return {k: v.detach() for k, v in params.items()}


# glibc malloc settings that keep freed memory in the heap instead of returning it to the OS
# (every ~25 MB temporary otherwise comes back as fresh, zero-filled pages: page faults)
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
_MALLOC_VARS = (*MALLOC_TUNED, "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX")


def save_trpo_inputs(path: str, keep: dict, num_tasks: int) -> None:
    torch.save({"num_tasks": num_tasks,
                "tb": {f.name: getattr(keep["tb"], f.name) for f in dataclasses.fields(TaskBatch)},
                "post": {f.name: getattr(keep["post"], f.name)
                         for f in dataclasses.fields(TaskBatch)}}, path)


def child_trpo(path: str, threads: int) -> None:
    """Child process of the malloc what-if: time ``trpo_meta_update`` on saved batches (one
    warm-up call, then two timed calls) and print one JSON line."""
    torch.set_num_threads(threads)
    saved = torch.load(path)
    tb, post = TaskBatch(**saved["tb"]), TaskBatch(**saved["post"])
    policy = GaussianMLPPolicy(C.OBS_DIM, C.ACT_DIM, POLICY_HIDDEN, "tanh", obs_start=1)
    params = policy.init_params(torch.Generator().manual_seed(0))
    cfg = MetaConfig(num_tasks=saved["num_tasks"]).validate()
    trpo_meta_update(policy, params, [tb], post, cfg)
    times, sys_s, faults = [], 0.0, 0
    for _ in range(2):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        trpo_meta_update(policy, params, [tb], post, cfg)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        sys_s += r1.ru_stime - r0.ru_stime
        faults += r1.ru_minflt - r0.ru_minflt
    print(json.dumps({"times": times, "sys": sys_s / 2, "minflt": faults / 2}))


def malloc_whatif(keep: dict, num_tasks: int, threads: int, rounds: int = 2) -> dict:
    """``trpo_meta_update`` in child processes with the default and the tuned glibc malloc
    settings, alternating; returns the paired per-round times and fault counts."""
    out: dict = {"default": [], "tuned": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trpo_inputs.pt")
        save_trpo_inputs(path, keep, num_tasks)
        base_env = {k: v for k, v in os.environ.items() if k not in _MALLOC_VARS}
        for _ in range(rounds):
            for name, extra in (("default", {}), ("tuned", MALLOC_TUNED)):
                res = subprocess.run(
                    [sys.executable, __file__, "--_child-trpo", path, "--threads", str(threads)],
                    env={**base_env, **extra}, capture_output=True, text=True, check=True,
                )
                out[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke test: N=10, H=50, 2 reps")
    size.add_argument("--full", action="store_true",
                      help="5 repetitions, and a whole meta step per thread count")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the main table (default 1, see the threads table)")
    ap.add_argument("--compare-threads", default="1,2",
                    help="thread counts of the threads table ('' to skip)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--what-if", action="store_true",
                    help="time cheaper TRPO curvature products and bf16 imagination")
    ap.add_argument("--profile", action="store_true",
                    help="run one meta step under torch.profiler and report the top ops")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--_child-trpo", dest="child_trpo", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_trpo:
        child_trpo(args.child_trpo, args.threads)
        return

    load_before = C.load_average()
    reps = args.reps or (2 if args.quick else 5 if args.full else 3)
    num_tasks, rollouts, horizon = (20, 10, 50) if args.quick else (20, 50, 200)
    cmp_threads = [int(t) for t in args.compare_threads.split(",") if t.strip()]
    torch.set_num_threads(args.threads)

    spec = get_env_spec(C.ENV_ID)
    t_setup = time.perf_counter()
    data = C.collect_halfcheetah(num_episodes=50)
    ens = C.fitted_ensemble(data, epochs=1 if args.quick else 3, hidden=HIDDEN, k=K)
    print(f"setup: {data['source']}, ensemble fitted ({time.perf_counter() - t_setup:.1f} s)")
    start_pool = torch.from_numpy(data["obs"])
    low, high = torch.as_tensor(data["low"]), torch.as_tensor(data["high"])

    policy = GaussianMLPPolicy(
        C.OBS_DIM, C.ACT_DIM, POLICY_HIDDEN, "tanh", obs_start=spec.policy_obs_start
    )
    params0 = policy.init_params(torch.Generator().manual_seed(0))
    cfg = MetaConfig(num_tasks=num_tasks).validate()
    cfg_fo = dataclasses.replace(cfg, first_order=True)
    assert cfg.num_inner_steps == 1 and cfg.outer_optimizer == "trpo"

    def make_sample_fn(seed: int, steps: int = horizon, bf16: bool = False):
        """Like the learner's ``sample_fn``: random real start states, then ``imagine``."""
        gen = torch.Generator().manual_seed(seed)

        def sample_fn(task_params, generator=None):
            idx = torch.randint(len(start_pool), (num_tasks, rollouts), generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return imagine(
                    ens,
                    lambda obs, g: policy.sample(task_params, obs, g, batched=True),
                    start_pool[idx],
                    steps,
                    spec.reward_fn,
                    spec.termination_fn,
                    action_low=low,
                    action_high=high,
                    generator=gen,
                    deterministic_model=True,
                )

        return sample_fn

    def process(task_params, raw):
        return process_batch(policy, task_params, raw, cfg.gamma, cfg.gae_lambda,
                             cfg.normalize_advantages, cfg.baseline_reg_coeff)

    # ------------------------------------------------------------------ the pieces
    def run_pieces(seed: int, config: MetaConfig = cfg, keep: dict | None = None):
        """``meta_step``'s calls made one by one, with a stopwatch between them; TRPO is the
        library's ``trpo_meta_update``, split by :func:`instrument_trpo`."""
        sample = make_sample_fn(seed)
        sw = Stopwatch()
        params = detach(params0)
        task_params = policy.expand_params(params, num_tasks)
        raw = sample(task_params)
        sw.lap("imagine_pre")
        tb = process(task_params, raw)
        sw.lap("process_pre")
        pre_ret = imagined_return(raw).detach().double().numpy()
        explained_variance(tb.values, tb.returns, tb.mask)
        _, g = inner_gradients(policy, task_params, tb, create_graph=False)
        sq = sum(v.detach().pow(2).reshape(num_tasks, -1).sum(-1) for v in g.values())
        torch.sqrt(sq).double().numpy()
        sw.lap("inner_diag")
        task_params = detach(
            adapt(policy, task_params, tb, config.alpha, first_order=True, batched_params=True)
        )
        sw.lap("adapt")
        raw_post = sample(task_params)
        sw.lap("imagine_post")
        post = process(task_params, raw_post)
        post_ret = imagined_return(raw_post).detach().double().numpy()
        explained_variance(post.values, post.returns, post.mask)
        sw.lap("process_post")
        with instrument_trpo({}) as acc:
            new_params, info = trpo_meta_update(policy, params, [tb], post, config)
        t_trpo = time.perf_counter() - sw.t
        shs = acc["hvp"] - acc["hvp_in_cg"]
        sw.times["trpo_hvp_setup"] = acc["setup"]
        sw.times["trpo_cg"] = acc["cg"]
        sw.times["trpo_shs"] = shs
        sw.times["trpo_ls"] = acc["ls"]
        sw.times["trpo_grad"] = t_trpo - acc["setup"] - acc["cg"] - shs - acc["ls"]
        sw.t += t_trpo
        float(new_params["log_std"].exp().mean())
        float(policy.entropy(new_params))
        sw.lap("other")
        if keep is not None:
            keep.update(new_params=new_params, tb=tb, post=post, info=info,
                        grad=acc.get("grad"), direction=acc.get("direction"),
                        n_hvp=acc["n_hvp"], adaptation_gain=float(post_ret.mean() - pre_ret.mean()))
        return sw.times

    # ------------------------------------------------------------------ what-ifs
    cfg_fields = {f.name for f in dataclasses.fields(MetaConfig)}

    def describe(config: MetaConfig) -> str:
        keys = [k for k in ("hvp_method", "hvp_subsample") if k in cfg_fields]
        return ", ".join(f"{k}={getattr(config, k)!r}" for k in keys) or "library default"

    # TRPO curvature variants: every other hvp_method, the other subsampling, and the original
    # implementation (exact 3rd-order autodiff on all rollouts), as far as MetaConfig has them
    whatif_changes: list[dict] = []
    if "hvp_method" in cfg_fields:
        whatif_changes += [{"hvp_method": m} for m in ("gauss_newton", "exact", "first_order")
                           if m != cfg.hvp_method]
    if "hvp_subsample" in cfg_fields:
        whatif_changes.append({"hvp_subsample": 1 if cfg.hvp_subsample != 1 else 5})
        if "hvp_method" in cfg_fields and cfg.hvp_subsample != 1:
            whatif_changes.append({"hvp_method": "first_order", "hvp_subsample": 1})
            whatif_changes.append({"hvp_method": "exact", "hvp_subsample": 1})
    exact_label = describe(dataclasses.replace(
        cfg, **{k: v for k, v in (("hvp_method", "exact"), ("hvp_subsample", 1)) if k in cfg_fields}
    ))
    whatif_configs = {
        describe(dataclasses.replace(cfg, **ch)): dataclasses.replace(cfg, **ch)
        for ch in whatif_changes
    }

    def curvature_whatif(keep: dict, config: MetaConfig):
        """``trpo_meta_update`` on this repetition's batches with another curvature setting:
        time of HVP setup + CG + step-size HVP, and its search direction."""
        with instrument_trpo({}) as acc:
            trpo_meta_update(policy, detach(params0), [keep["tb"]], keep["post"], config)
        return acc["setup"] + acc["cg"] + (acc["hvp"] - acc["hvp_in_cg"]), acc["direction"]

    def cosine(a, b) -> float:
        return float(torch.dot(a, b) / (a.norm() * b.norm()))

    # ------------------------------------------------------------------ measure
    def run_meta_step(seed: int, config: MetaConfig, out: dict | None = None):
        new, diag = meta_step(policy, detach(params0), make_sample_fn(seed), config)
        if out is not None:
            out.update(new_params=new, diag=diag)

    other_threads = [nt for nt in cmp_threads if nt != args.threads]
    too_slow: set[int] = set()  # thread counts whose meta step took > 40 s (busy machine)

    def run_meta_step_threads(seed: int, nt: int):
        torch.set_num_threads(nt)
        t0 = time.perf_counter()
        try:
            run_meta_step(seed, cfg)
        finally:
            torch.set_num_threads(args.threads)
        if time.perf_counter() - t0 > 40.0:
            too_slow.add(nt)

    # warm-up at small sizes (allocators, oneDNN kernel choice)
    make_sample_fn(0, steps=2)(policy.expand_params(params0, num_tasks))

    records: list[dict] = []
    what_if: list[dict] = []
    t_meas = time.perf_counter()
    for r in range(reps):
        seed = 100 + r
        rec: dict = {}
        keep: dict = {}
        ms_out: dict = {}
        variants = {
            "meta_step": lambda: run_meta_step(seed, cfg, ms_out),  # noqa: B023
            "pieces": lambda: rec.update(split=run_pieces(seed, cfg, keep)),  # noqa: B023
            "meta_step_fo": lambda: run_meta_step(seed, cfg_fo),  # noqa: B023
            "imagine": lambda: make_sample_fn(seed)(  # noqa: B023
                policy.expand_params(params0, num_tasks)
            ),
        }
        for nt in other_threads:
            if nt not in too_slow:
                variants[f"meta_step_t{nt}"] = lambda nt=nt: run_meta_step_threads(seed, nt)  # noqa: B023
        names = list(variants)
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            variants[name]()
            rec[name] = time.perf_counter() - t0
        diff = max(
            float((ms_out["new_params"][k] - keep["new_params"][k]).abs().max())
            for k in keep["new_params"]
        )
        rec["param_diff"] = diff
        rec["n_hvp"] = keep["n_hvp"]
        rec["ls_steps_meta"] = ms_out["diag"]["ls_steps"]
        rec["accepted"] = ms_out["diag"]["ls_accepted"]
        records.append(rec)
        print(f"rep {r + 1}/{reps}: meta_step {rec['meta_step']:.2f} s, pieces "
              f"{sum(rec['split'].values()):.2f} s, first-order {rec['meta_step_fo']:.2f} s, "
              f"imagine {rec['imagine']:.2f} s, |param diff| {diff:.1e}")
        if args.what_if and keep["direction"] is not None:
            w = {"current": sum(rec["split"][k] for k in ("trpo_hvp_setup", "trpo_cg",
                                                            "trpo_shs"))}
            dirs = {"current": keep["direction"]}
            for label, config in whatif_configs.items():
                w[label], dirs[label] = curvature_whatif(keep, config)
            ref = dirs.get(exact_label, keep["direction"])
            for label, d in dirs.items():
                w[label + "_cos"] = cosine(d, ref)
            t0 = time.perf_counter()
            make_sample_fn(seed, bf16=True)(policy.expand_params(params0, num_tasks))
            w["bf16_imagine"] = time.perf_counter() - t0
            w["fp32_imagine"] = rec["imagine"]
            what_if.append(w)
            print("  what-if: " + "; ".join(f"{k} {v:.3g}" for k, v in w.items()))
    print(f"measured in {time.perf_counter() - t_meas:.0f} s")

    malloc = None
    if args.what_if and keep.get("tb") is not None:
        t0 = time.perf_counter()
        malloc = malloc_whatif(keep, num_tasks, args.threads)
        print(f"malloc what-if measured in {time.perf_counter() - t0:.0f} s")

    # ------------------------------------------------------------------ threads table
    rows_t = []
    if len(cmp_threads) > 1:
        keep_t: dict = {}
        torch.set_num_threads(args.threads)
        run_pieces(7, cfg, keep_t)  # batches for the TRPO timing
        thread_vars = {}
        cmp_h = max(horizon // 4, 2)
        for nt in cmp_threads:
            def set_nt(nt=nt):
                torch.set_num_threads(nt)

            thread_vars[(nt, "imagine")] = lambda set_nt=set_nt: (
                set_nt(), make_sample_fn(1, steps=cmp_h)(policy.expand_params(params0, num_tasks))
            )
            thread_vars[(nt, "trpo")] = lambda set_nt=set_nt: (
                set_nt(),
                trpo_meta_update(policy, detach(params0), [keep_t["tb"]], keep_t["post"], cfg),
            )
            if args.full:
                thread_vars[(nt, "meta_step")] = lambda set_nt=set_nt: (
                    set_nt(), run_meta_step(1, cfg)
                )
        t0 = time.perf_counter()
        tt = C.interleaved(thread_vars, 1 if args.full else 2, warmup=False)
        print(f"threads table measured in {time.perf_counter() - t0:.0f} s")
        base = cmp_threads[0]
        for nt in cmp_threads:
            cells = [nt]
            for name in ("imagine", "trpo") + (("meta_step",) if args.full else ()):
                rs = [a / b for a, b in zip(tt[(nt, name)], tt[(base, name)], strict=True)]
                cells.append(f"{C.median(rs):.2f} ({C.spread(rs)})")
            rows_t.append(cells)
        torch.set_num_threads(args.threads)

    # ------------------------------------------------------------------ profile
    prof_rows = []
    if args.profile:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            run_meta_step(1, cfg)
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        for e in top:
            shapes = str(e.input_shapes)[:60]
            prof_rows.append([f"`{e.key}`", shapes, e.count,
                              f"{e.self_cpu_time_total / 1e6:.2f}",
                              f"{e.self_cpu_time_total / total:.0%}"])
        by_op: dict[str, float] = {}
        for e in events:
            by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total
        prof_total_s = total / 1e6
        top_ops = sorted(by_op.items(), key=lambda kv: kv[1], reverse=True)[:8]

    # ------------------------------------------------------------------ tables
    ms = [r["meta_step"] for r in records]
    im = [r["imagine"] for r in records]
    fo = [r["meta_step_fo"] for r in records]
    pieces_sum = [sum(r["split"].values()) for r in records]
    med_ms = C.median(ms)

    def piece_row(label, key_times):
        rel_meta = [t / m for t, m in zip(key_times, ms, strict=True)]
        rel_im = [t / i for t, i in zip(key_times, im, strict=True)]
        return [label, f"{C.median(key_times):.2f}", f"{C.median(rel_meta):.1%}",
                f"{C.median(rel_im):.2f} ({C.spread(rel_im)})"]

    rows = []
    for key, label in PIECES.items():
        rows.append(piece_row(label, [r["split"].get(key, 0.0) for r in records]))
    group_rows = [
        piece_row("**imagination (pre + post)**",
                  [sum(r["split"][k] for k in IMAGINATION) for r in records]),
        piece_row("**inner step (process, diagnostics, adapt)**",
                  [sum(r["split"][k] for k in INNER) for r in records]),
        piece_row("**TRPO (gradient, CG, line search)**",
                  [sum(r["split"].get(k, 0.0) for k in TRPO) for r in records]),
        piece_row("**sum of the pieces**", pieces_sum),
        piece_row("**`meta_step` end to end (second order, paper config)**", ms),
        piece_row("`meta_step` with `first_order=True` (baseline)", fo),
        piece_row("one `imagine` call alone (baseline)", im),
    ]
    thread_lines = []
    for nt in other_threads:
        pairs = [(r[f"meta_step_t{nt}"], r["meta_step"], r["imagine"]) for r in records
                 if f"meta_step_t{nt}" in r]
        if not pairs:
            continue
        t_nt = [a for a, _, _ in pairs]
        rel = [a / b for a, b, _ in pairs]
        group_rows.append([f"**`meta_step` end to end with {nt} threads**",
                           f"{C.median(t_nt):.2f}", f"{C.median(rel):.1%}",
                           f"{C.median([a / c for a, _, c in pairs]):.2f} "
                           f"({C.spread([a / c for a, _, c in pairs])})"])
        thread_lines.append(
            f"- With {nt} threads (interleaved in the same repetitions, {len(pairs)} of {reps}): "
            f"median {C.median(t_nt):.2f} s, **{C.median(rel):.2f}x** the {args.threads}-thread "
            f"time ({C.spread(rel)}); target < 4 s **{C.verdict(C.median(t_nt) < 4.0)}** with "
            f"{nt} threads. Which thread count wins depends on what else runs on the machine "
            "(load average above)."
        )
    ratio_fo = C.median_ratio(ms, fo)
    ratio_im = C.median_ratio(ms, im)
    ok = med_ms < 4.0
    max_diff = max(r["param_diff"] for r in records)
    ls = sorted({int(r["ls_steps_meta"]) for r in records})
    head = ["piece", "median s", "share of `meta_step`", "x one `imagine` call (median, min-max)"]
    body = [
        *C.header_lines([args.threads], load_before),
        f"- Sizes: K = {K} members of {HIDDEN}, T = {num_tasks} tasks x N = {rollouts} rollouts "
        f"x H = {horizon} (= {num_tasks * rollouts * horizon:,} imagined transitions per "
        f"imagination, twice per meta step), {C.ENV_ID} dims (obs {C.OBS_DIM}, act "
        f"{C.ACT_DIM}), policy {POLICY_HIDDEN} tanh, `MetaConfig` defaults (TRPO, second "
        f"order, alpha {cfg.alpha}, {cfg.cg_iters} CG iterations, max KL {cfg.max_kl}, "
        f"KL curvature {describe(cfg)}); "
        f"ensemble fitted on {data['source']}; {reps} interleaved repetitions.",
        f"- Line-search candidates evaluated per meta step: {ls}; the re-assembled pieces "
        f"reproduce `meta_step`'s new parameters to {max_diff:.1e} (max abs difference).",
        "",
        C.markdown_table(head, rows + group_rows),
        "",
        f"- **Target < 4 s per meta step: {C.verdict(ok)}** - median {med_ms:.2f} s with "
        f"{args.threads} thread(s) (min {min(ms):.2f}, max {max(ms):.2f}). Same-run ratios: "
        f"`meta_step` = **{ratio_im:.1f}x** one `imagine` call and **{ratio_fo:.2f}x** the "
        f"first-order meta step.",
        *thread_lines,
    ]
    if rows_t:
        head_t = ["threads", f"`imagine` (H={max(horizon // 4, 2)})",
                  "`trpo_meta_update` (full batch)"]
        if args.full:
            head_t.append("`meta_step`")
        body += [
            "",
            f"Threads: wall time relative to {cmp_threads[0]} thread(s) (> 1 = slower):",
            "",
            C.markdown_table(head_t, rows_t),
        ]
    text = "\n".join(body)
    print()
    print(text)

    whatif_text = ""
    if what_if:
        cur = [w["current"] for w in what_if]
        ref_label = exact_label if exact_label in whatif_configs else "current"
        wrows = [[f"{describe(cfg)} (current default)", f"{C.median(cur):.2f}",
                  "1 (reference)", f"{C.median([w['current_cos'] for w in what_if]):.6f}",
                  f"{med_ms:.2f}"]]
        for label in whatif_configs:
            t = [w[label] for w in what_if]
            sp = [c / x for c, x in zip(cur, t, strict=True)]
            cos = C.median([w[label + "_cos"] for w in what_if])
            proj = med_ms - C.median(cur) + C.median(t)
            wrows.append([label, f"{C.median(t):.2f}", f"{C.median(sp):.2f}x ({C.spread(sp)})",
                          f"{cos:.6f}", f"{proj:.2f}"])
        bf = [w["fp32_imagine"] / w["bf16_imagine"] for w in what_if]
        im_share = C.median([sum(r["split"][k] for k in IMAGINATION) for r in records])
        proj_bf = med_ms - im_share + im_share / C.median(bf)
        wrows.append(["imagination under bf16 autocast (AMX), pre and post",
                      f"{C.median([w['bf16_imagine'] for w in what_if]):.2f} per call",
                      f"{C.median(bf):.2f}x ({C.spread(bf)})", "n/a", f"{proj_bf:.2f}"])
        if malloc is not None:
            t_def = [C.median(m["times"]) for m in malloc["default"]]
            t_tun = [C.median(m["times"]) for m in malloc["tuned"]]
            sp = [a / b for a, b in zip(t_def, t_tun, strict=True)]
            trpo_med = C.median([sum(r["split"][k] for k in TRPO) for r in records])
            proj = med_ms - trpo_med + trpo_med / C.median(sp)
            f_def = C.median([m["minflt"] for m in malloc["default"]])
            f_tun = C.median([m["minflt"] for m in malloc["tuned"]])
            s_def = C.median([m["sys"] for m in malloc["default"]])
            s_tun = C.median([m["sys"] for m in malloc["tuned"]])
            wrows.append([
                "glibc malloc tuned (note below), whole `trpo_meta_update` in child processes",
                f"{C.median(t_def):.2f} -> {C.median(t_tun):.2f} (whole TRPO)",
                f"{C.median(sp):.2f}x ({C.spread(sp)})", "same maths", f"{proj:.2f}",
            ])
            malloc_note = (
                "- malloc what-if: "
                + ", ".join(f"`{k}={v}`" for k, v in MALLOC_TUNED.items())
                + f" in the environment of a child process that times `trpo_meta_update` on "
                f"the saved batches, alternating with an untuned child: minor page faults per "
                f"call {f_def:,.0f} -> {f_tun:,.0f}, kernel (sys) time {s_def:.2f} s -> "
                f"{s_tun:.2f} s."
            )
        whatif_text = "\n".join([
            f"- Command: `{C.command_line()}`, date {C.utc_date()}, {C.MACHINE_NOTE}, "
            f"{args.threads} torch thread(s); every what-if runs on the repetition's own "
            "batches right after the `pieces` variant and is paired with it.",
            "",
            C.markdown_table(
                ["what-if", "HVP setup + CG + step-size HVP, median s",
                 "speed-up vs current (paired, min-max)",
                 f"cos(CG direction, direction of {ref_label})",
                 "projected meta step s"],
                wrows,
            ),
            "",
            "- Projected meta step = measured median meta step - median of the replaced piece "
            "+ median of the replacement.",
            *([malloc_note] if malloc is not None else []),
        ])
        print()
        print(whatif_text)

    prof_text = ""
    if prof_rows:
        prof_text = "\n".join([
            f"- Command: `{C.command_line()}`, date {C.utc_date()}, {C.MACHINE_NOTE}, "
            f"{args.threads} torch thread(s). One `meta_step` under `torch.profiler`: "
            f"{prof_total_s:.1f} s of self CPU time in ops.",
            "- By op: " + ", ".join(f"`{k}` {v / 1e6 / prof_total_s:.0%}" for k, v in top_ops),
            "",
            C.markdown_table(["op", "input shapes", "calls", "self CPU s", "share"], prof_rows),
        ])
        print()
        print(prof_text)

    if not args.no_write:
        C.update_section("bench_meta_step", "Meta step (`benchmarks/bench_meta_step.py`)", text)
        if whatif_text:
            C.update_section("bench_meta_step_whatif",
                             "Meta step what-ifs (`bench_meta_step.py --what-if`)", whatif_text)
        if prof_text:
            C.update_section("bench_meta_step_profile",
                             "Meta step profile (`bench_meta_step.py --profile`)", prof_text)
        print(f"\nupdated {C.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
