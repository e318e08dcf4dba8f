"""Wall time of one MB-MPO meta step at paper sizes (HalfCheetah-v5, CPU), split into pieces.

Paper sizes: K = 5 members of (512, 512), T = 20 tasks x N = 50 rollouts x H = 200 steps (so two
imaginations of 200,000 transitions each), policy (32, 32) tanh, TRPO outer step (10 CG
iterations, up to 15 line-search steps), second-order MAML.

Every repetition runs, interleaved (rotating order) and with the same seed:

* ``meta_step``: :func:`mbmpo_ray.meta.meta_step` end to end (the code path the learner runs);
* ``pieces``: the same ``meta_step`` with its phase hook (``phase=``, see
  :mod:`mbmpo_ray.meta.hooks` and ``META_STEP_PHASES``) timing each piece: imagination,
  ``estimate_advantages``, the inner gradient and step, diagnostics, and the TRPO outer step's
  setup, HVP setup, gradient, CG, step-size product and line search. Its new parameters are
  checked against the hook-less ``meta_step``'s (same seed: bit-identical);
* baselines: ``meta_step`` with ``first_order=True``, one ``imagine`` call alone, and
  ``meta_step`` with the other thread counts of ``--compare-threads``.

``--what-if`` also times, on each repetition's own batches, the other KL curvature settings
``MetaConfig`` offers (``hvp_method``, ``hvp_subsample``) with the cosine between their CG
directions and the exact full-batch one, bf16 imagination, and (in child processes) glibc
malloc settings that avoid page faults (adds ~3-4 min); ``--profile`` runs one meta step under
``torch.profiler``. Each part rewrites its own section of BENCHMARKS.md.

Run from the repo root::

    .venv/bin/python benchmarks/bench_meta_step.py                 # paper sizes (~2-4 min)
    .venv/bin/python benchmarks/bench_meta_step.py --what-if --profile
    .venv/bin/python benchmarks/bench_meta_step.py --quick --what-if --profile  # smoke test
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
from collections.abc import Iterator
from typing import Any

import _common as C
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from mbmpo_ray.envs import EnvSpec, get_env_spec
from mbmpo_ray.imagination import ImaginedBatch, bf16_is_fast, imagine
from mbmpo_ray.meta import (
    META_STEP_PHASES,
    GaussianMLPPolicy,
    MetaConfig,
    TaskBatch,
    conjugate_gradient,
    estimate_advantages,
    kl_hvp,
    meta_step,
    surrogate_gradient,
    trpo_outer_step,
    trpo_problem,
)

Params = dict[str, Tensor]
K = 5
POLICY_HIDDEN = (32, 32)

# the phases of meta_step (its phase hook) and what each one runs
PIECES = {
    "sample_pre": "imagination, pre-update (`imagine`)",
    "advantages_pre": "`estimate_advantages` pre (returns, linear baseline, GAE, old log-probs)",
    "inner_gradient": "inner gradient (`inner_gradients`, once, kept for the diagnostics)",
    "adapt": "inner step (`adapt` with that gradient, first order as in `meta_step`)",
    "diagnostics_pre": "pre-update diagnostics (returns, inner-gradient norms, expl. var.)",
    "sample_post": "imagination, post-update (`imagine`)",
    "advantages_post": "`estimate_advantages` post",
    "diagnostics_post": "post-update diagnostics (returns, adaptation gain, expl. var.)",
    "outer_setup": "TRPO: old adapted params (`trpo_problem`)",
    "hvp_setup": "TRPO: HVP setup (`kl_hvp` builds the graphs once)",
    "outer_gradient": "TRPO: surrogate gradient through the inner step",
    "cg": "TRPO: CG (`cg_iters` HVPs)",
    "step_size": "TRPO: step-size HVP (`s^T H s`)",
    "line_search": "TRPO: line search",
    "other": "rest (entropy, copies, hook)",
}
assert [k for k in PIECES if k != "other"] == list(META_STEP_PHASES), "meta_step's phases changed"
IMAGINATION = ("sample_pre", "sample_post")
INNER = ("advantages_pre", "inner_gradient", "adapt", "diagnostics_pre", "advantages_post",
         "diagnostics_post")
TRPO = ("outer_setup", "hvp_setup", "outer_gradient", "cg", "step_size", "line_search")

# glibc malloc settings that keep freed memory in the heap instead of returning it to the OS
# (every ~25 MB temporary otherwise comes back as fresh, zero-filled pages: page faults)
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
_MALLOC_VARS = (*MALLOC_TUNED, "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX")


def detach(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def make_policy(spec_obs_start: int) -> GaussianMLPPolicy:
    return GaussianMLPPolicy(C.OBS_DIM, C.ACT_DIM, POLICY_HIDDEN, "tanh", obs_start=spec_obs_start)


class PhaseTimer:
    """The phase hook of ``meta_step``: wall seconds per phase (summed over repeats)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


# ------------------------------------------------------------------------------------ setup
@dataclasses.dataclass
class Setup:
    """The fitted ensemble, the real start states, the policy and the meta-step config."""

    spec: EnvSpec
    ensemble: Any
    start_pool: Tensor
    low: Tensor
    high: Tensor
    policy: GaussianMLPPolicy
    params0: Params
    cfg: MetaConfig
    rollouts: int
    horizon: int
    source: str
    hidden: tuple[int, ...]

    def sample_fn(self, seed: int, steps: int | None = None, bf16: bool = False):
        """Like the learner's sampler: random real start states, then ``imagine`` (on the
        device of the start states, with a generator there)."""
        dev = self.start_pool.device
        gen = torch.Generator(device=dev).manual_seed(seed)
        policy, num_tasks = self.policy, self.cfg.num_tasks

        def sample_fn(task_params: Params) -> ImaginedBatch:
            idx = torch.randint(len(self.start_pool), (num_tasks, self.rollouts), generator=gen,
                                device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                return imagine(
                    self.ensemble,
                    lambda obs, g: policy.sample(task_params, obs, g, batched=True),
                    self.start_pool[idx],
                    steps or self.horizon,
                    self.spec.reward_fn,
                    self.spec.termination_fn,
                    action_low=self.low,
                    action_high=self.high,
                    generator=gen,
                    deterministic_model=True,
                )

        return sample_fn

    def advantages(self, task_params: Params, raw: ImaginedBatch) -> TaskBatch:
        c = self.cfg
        return estimate_advantages(self.policy, task_params, raw, c.gamma, c.gae_lambda,
                                   c.normalize_advantages, c.baseline_reg_coeff)

    def to(self, device: str | torch.device) -> Setup:
        """A copy with the ensemble, start states, bounds and parameters on ``device``."""
        import copy

        return dataclasses.replace(
            self, ensemble=copy.deepcopy(self.ensemble).to(device),
            start_pool=self.start_pool.to(device), low=self.low.to(device),
            high=self.high.to(device), params0={k: v.to(device) for k, v in self.params0.items()})

    def theta_tasks(self) -> Params:
        return self.policy.expand_params(self.params0, self.cfg.num_tasks)


def build_setup(quick: bool) -> Setup:
    num_tasks, rollouts, horizon = (10, 4, 10) if quick else (20, 50, 200)
    hidden = (32, 32) if quick else (512, 512)
    spec = get_env_spec(C.ENV_ID)
    t0 = time.perf_counter()
    data = (C.collect_halfcheetah(num_episodes=2, horizon=50) if quick
            else C.collect_halfcheetah(num_episodes=50))
    ens = C.fitted_ensemble(data, epochs=1 if quick else 3, hidden=hidden, k=K)
    print(f"setup: {data['source']}, ensemble fitted ({time.perf_counter() - t0:.1f} s)")
    policy = make_policy(spec.policy_obs_start)
    cfg = MetaConfig(num_tasks=num_tasks).validate()
    assert cfg.num_inner_steps == 1 and cfg.outer_optimizer == "trpo"
    return Setup(spec, ens, torch.from_numpy(data["obs"]), torch.as_tensor(data["low"]),
                 torch.as_tensor(data["high"]), policy,
                 policy.init_params(torch.Generator().manual_seed(0)), cfg, rollouts, horizon,
                 data["source"], hidden)


# ------------------------------------------------------------------------------------ pieces
def run_pieces(s: Setup, seed: int, keep: dict | None = None) -> dict[str, float]:
    """``meta_step`` timed through its phase hook: seconds per phase, and ``other`` (the rest).

    ``keep`` receives the new parameters and the pre- / post-update :class:`TaskBatch` (the
    advantages recomputed, after the timing, from what ``sample_fn`` was given and returned).
    """
    timer, calls, sample = PhaseTimer(), [], s.sample_fn(seed)

    def recording_sample_fn(task_params: Params) -> ImaginedBatch:
        raw = sample(task_params)
        calls.append((task_params, raw))
        return raw

    t0 = time.perf_counter()
    new_params, _ = meta_step(s.policy, detach(s.params0), recording_sample_fn, s.cfg,
                              phase=timer)
    total = time.perf_counter() - t0
    times = {**timer.times, "other": total - sum(timer.times.values())}
    if keep is not None:
        (pre_params, pre_raw), (post_params, post_raw) = calls
        keep.update(new_params=new_params, tb=s.advantages(pre_params, pre_raw),
                    post=s.advantages(post_params, post_raw))
    return times


# ------------------------------------------------------------------------------------ what-ifs
def describe(config: MetaConfig) -> str:
    return f"hvp_method={config.hvp_method!r}, hvp_subsample={config.hvp_subsample!r}"


def whatif_configs(cfg: MetaConfig) -> tuple[dict[str, MetaConfig], str]:
    """The other curvature settings (every other ``hvp_method``, the other subsampling, and
    the original exact third-order product on all rollouts); and the reference's label."""
    changes = [{"hvp_method": m} for m in ("gauss_newton", "exact", "first_order")
               if m != cfg.hvp_method]
    changes.append({"hvp_subsample": 1 if cfg.hvp_subsample != 1 else 5})
    if cfg.hvp_subsample != 1:
        changes += [{"hvp_method": "first_order", "hvp_subsample": 1},
                    {"hvp_method": "exact", "hvp_subsample": 1}]
    configs = [dataclasses.replace(cfg, **ch) for ch in changes]
    exact = dataclasses.replace(cfg, hvp_method="exact", hvp_subsample=1)
    return {describe(c): c for c in configs}, describe(exact)


def curvature_cost(s: Setup, keep: dict, config: MetaConfig, grad: Tensor):
    """Seconds of HVP setup + CG + step-size HVP with ``config``'s curvature, and the CG
    direction (on the repetition's own batches)."""
    pre, post = [keep["tb"]], keep["post"]
    problem = trpo_problem(s.policy, detach(s.params0), pre, post, config)
    t0 = time.perf_counter()
    hvp = kl_hvp(s.policy, problem, pre, post, config)
    direction = conjugate_gradient(hvp, grad, iters=config.cg_iters)
    float(torch.dot(direction, hvp(direction)))
    return time.perf_counter() - t0, direction


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def curvature_whatifs(s: Setup, keep: dict, configs: dict[str, MetaConfig], ref: str) -> dict:
    problem = trpo_problem(s.policy, detach(s.params0), [keep["tb"]], keep["post"], s.cfg)
    grad = surrogate_gradient(problem.surrogate, problem.theta0)[1]
    out, dirs = {}, {}
    for label, config in {"current": s.cfg, **configs}.items():
        out[label], dirs[label] = curvature_cost(s, keep, config, grad)
    ref_dir = dirs.get(ref, dirs["current"])  # the current setting may be the reference
    for label, d in dirs.items():
        out[label + "_cos"] = cosine(d, ref_dir)
    return out


def child_trpo(path: str, threads: int) -> None:
    """Child process of the malloc what-if: time ``trpo_outer_step`` on saved batches (one
    warm-up call, then two timed calls) and print one JSON line."""
    torch.set_num_threads(threads)
    saved = torch.load(path)
    tb, post = TaskBatch(**saved["tb"]), TaskBatch(**saved["post"])
    policy = make_policy(saved["obs_start"])
    params = policy.init_params(torch.Generator().manual_seed(0))
    cfg = MetaConfig(num_tasks=saved["num_tasks"]).validate()
    trpo_outer_step(policy, params, [tb], post, cfg)
    times, sys_s, faults = [], 0.0, 0
    for _ in range(2):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        trpo_outer_step(policy, params, [tb], post, cfg)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        sys_s += r1.ru_stime - r0.ru_stime
        faults += r1.ru_minflt - r0.ru_minflt
    print(json.dumps({"times": times, "sys": sys_s / 2, "minflt": faults / 2}))


def malloc_whatif(s: Setup, keep: dict, threads: int, rounds: int) -> dict:
    """``trpo_outer_step`` in child processes with the default and the tuned glibc malloc
    settings, alternating; returns the per-round times, fault counts and system time."""
    fields = [f.name for f in dataclasses.fields(TaskBatch)]
    out: dict = {"default": [], "tuned": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trpo_inputs.pt")
        torch.save({"num_tasks": s.cfg.num_tasks, "obs_start": s.spec.policy_obs_start,
                    "tb": {f: getattr(keep["tb"], f) for f in fields},
                    "post": {f: getattr(keep["post"], f) for f in fields}}, path)
        base_env = {k: v for k, v in os.environ.items() if k not in _MALLOC_VARS}
        for _ in range(rounds):
            for name, extra in (("default", {}), ("tuned", MALLOC_TUNED)):
                res = subprocess.run(
                    [sys.executable, __file__, "--_child-trpo", path, "--threads", str(threads)],
                    env={**base_env, **extra}, capture_output=True, text=True, check=True,
                )
                out[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


# ------------------------------------------------------------------------------------ measure
def run_meta_step(s: Setup, seed: int, cfg: MetaConfig, out: dict | None = None) -> None:
    new, diag = meta_step(s.policy, detach(s.params0), s.sample_fn(seed), cfg)
    if out is not None:
        out.update(new_params=new, diag=diag)


def measure(s: Setup, args, reps: int, other_threads: list[int]) -> tuple[list, list, dict]:
    """The interleaved repetitions of the main table (and the what-ifs on their batches)."""
    cfg_fo = dataclasses.replace(s.cfg, first_order=True)
    configs, ref = whatif_configs(s.cfg)
    too_slow: set[int] = set()  # thread counts whose meta step took > 40 s (busy machine)

    def with_threads(seed: int, nt: int) -> None:
        torch.set_num_threads(nt)
        t0 = time.perf_counter()
        try:
            run_meta_step(s, seed, s.cfg)
        finally:
            torch.set_num_threads(args.threads)
        if time.perf_counter() - t0 > 40.0:
            too_slow.add(nt)

    s.sample_fn(0, steps=2)(s.theta_tasks())  # warm-up (allocators, oneDNN kernel choice)
    records, what_if, keep = [], [], {}
    for r in range(reps):
        seed, rec, ms_out, keep = 100 + r, {}, {}, {}
        variants = {
            "meta_step": lambda: run_meta_step(s, seed, s.cfg, ms_out),  # noqa: B023
            "pieces": lambda: rec.update(split=run_pieces(s, seed, keep)),  # noqa: B023
            "meta_step_fo": lambda: run_meta_step(s, seed, cfg_fo),  # noqa: B023
            "imagine": lambda: s.sample_fn(seed)(s.theta_tasks()),  # noqa: B023
        }
        for nt in other_threads:
            if nt not in too_slow:
                variants[f"meta_step_t{nt}"] = lambda nt=nt: with_threads(seed, nt)  # noqa: B023
        names = list(variants)
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            variants[name]()
            rec[name] = time.perf_counter() - t0
        rec["param_diff"] = max(float((ms_out["new_params"][k] - v).abs().max())
                                for k, v in keep["new_params"].items())
        rec["ls_steps_meta"] = ms_out["diag"]["ls_steps"]
        records.append(rec)
        print(f"rep {r + 1}/{reps}: meta_step {rec['meta_step']:.2f} s, pieces "
              f"{sum(rec['split'].values()):.2f} s, first-order {rec['meta_step_fo']:.2f} s, "
              f"imagine {rec['imagine']:.2f} s, |param diff| {rec['param_diff']:.1e}")
        if args.what_if:
            w = curvature_whatifs(s, keep, configs, ref)
            # CPUs without bf16 units emulate it 10-70x slower: time a tenth of the horizon
            steps = None if bf16_is_fast("cpu") else max(1, s.horizon // 10)
            t0 = time.perf_counter()
            s.sample_fn(seed, steps=steps, bf16=True)(s.theta_tasks())
            scale = 1 if steps is None else s.horizon / steps
            w["bf16_imagine"] = (time.perf_counter() - t0) * scale
            w["fp32_imagine"] = rec["imagine"]
            what_if.append(w)
            print("  what-if: " + "; ".join(f"{k} {v:.3g}" for k, v in w.items()))
    return records, what_if, keep


def threads_table(s: Setup, args, cmp_threads: list[int]) -> list[list]:
    """``imagine`` (H/4) and ``trpo_outer_step`` (and ``meta_step`` with ``--full``) with each
    thread count, relative to the first."""
    keep: dict = {}
    torch.set_num_threads(args.threads)
    run_pieces(s, 7, keep)  # batches for the TRPO timing
    cmp_h = max(s.horizon // 4, 2)

    def imagine_part() -> None:
        s.sample_fn(1, steps=cmp_h)(s.theta_tasks())

    def trpo_part() -> None:
        trpo_outer_step(s.policy, detach(s.params0), [keep["tb"]], keep["post"], s.cfg)

    parts = {"imagine": imagine_part, "trpo": trpo_part}
    if args.full:
        parts["meta_step"] = lambda: run_meta_step(s, 1, s.cfg)
    variants = {
        (nt, name): lambda nt=nt, fn=fn: (torch.set_num_threads(nt), fn())
        for nt in cmp_threads for name, fn in parts.items()
    }
    t0 = time.perf_counter()
    tt = C.interleaved(variants, 1 if args.full else 2, warmup=False)
    print(f"threads table measured in {time.perf_counter() - t0:.0f} s")
    torch.set_num_threads(args.threads)
    rows = []
    for nt in cmp_threads:
        cells: list = [nt]
        for name in parts:
            rs = [a / b for a, b in zip(tt[(nt, name)], tt[(cmp_threads[0], name)], strict=True)]
            cells.append(f"{C.median(rs):.2f} ({C.spread(rs)})")
        rows.append(cells)
    return rows


# ------------------------------------------------------------------------------------ report
def piece_row(label: str, times: list[float], records: list[dict]) -> list:
    ms = [r["meta_step"] for r in records]
    rel_meta = [t / m for t, m in zip(times, ms, strict=True)]
    rel_im = [t / r["imagine"] for t, r in zip(times, records, strict=True)]
    return [label, f"{C.median(times):.2f}", f"{C.median(rel_meta):.1%}",
            f"{C.median(rel_im):.2f} ({C.spread(rel_im)})"]


def main_table(records: list[dict], other_threads: list[int], threads: int) -> tuple[list, list]:
    """Rows of the pieces table (and the lines on the other thread counts)."""
    split = lambda keys: [sum(r["split"].get(k, 0.0) for k in keys) for r in records]  # noqa: E731
    rows = [piece_row(label, split([key]), records) for key, label in PIECES.items()]
    rows += [
        piece_row("**imagination (pre + post)**", split(IMAGINATION), records),
        piece_row("**inner step (advantages, gradient + diagnostics, adapt)**", split(INNER),
                  records),
        piece_row("**TRPO (gradient, CG, line search)**", split(TRPO), records),
        piece_row("**sum of the pieces**", split(PIECES), records),
        piece_row("**`meta_step` end to end (second order, paper config)**",
                  [r["meta_step"] for r in records], records),
        piece_row("`meta_step` with `first_order=True` (baseline)",
                  [r["meta_step_fo"] for r in records], records),
        piece_row("one `imagine` call alone (baseline)", [r["imagine"] for r in records], records),
    ]
    lines = []
    for nt in other_threads:
        rs = [r for r in records if f"meta_step_t{nt}" in r]
        if not rs:
            continue
        t_nt = [r[f"meta_step_t{nt}"] for r in rs]
        rel = [r[f"meta_step_t{nt}"] / r["meta_step"] for r in rs]
        rows.append(piece_row(f"**`meta_step` end to end with {nt} threads**", t_nt, rs))
        lines.append(
            f"- With {nt} threads (interleaved in the same repetitions, {len(rs)} of "
            f"{len(records)}): median {C.median(t_nt):.2f} s, **{C.median(rel):.2f}x** the "
            f"{threads}-thread time ({C.spread(rel)}); target < 4 s "
            f"**{C.verdict(C.median(t_nt) < 4.0)}** with {nt} threads. Which thread count wins "
            "depends on what else runs on the machine (load average above).")
    return rows, lines


def main_text(s: Setup, args, records, reps, other_threads, rows_t, cmp_threads, load) -> str:
    ms = [r["meta_step"] for r in records]
    med = C.median(ms)
    rows, thread_lines = main_table(records, other_threads, args.threads)
    cfg, n_tr = s.cfg, s.cfg.num_tasks * s.rollouts * s.horizon
    ls = sorted({int(r["ls_steps_meta"]) for r in records})
    body = [
        *C.header_lines([args.threads], load),
        f"- Sizes: K = {K} members of {s.hidden}, T = {cfg.num_tasks} tasks x N = {s.rollouts} "
        f"rollouts x H = {s.horizon} (= {n_tr:,} imagined transitions per imagination, twice "
        f"per meta step), {C.ENV_ID} dims (obs {C.OBS_DIM}, act {C.ACT_DIM}), policy "
        f"{POLICY_HIDDEN} tanh, `MetaConfig` defaults (TRPO, second order, inner_lr "
        f"{cfg.inner_lr}, {cfg.cg_iters} CG iterations, max KL {cfg.max_kl}, KL curvature "
        f"{describe(cfg)}); ensemble fitted on {s.source}; {reps} interleaved repetitions.",
        f"- Line-search candidates evaluated per meta step: {ls}; timed through its phase "
        "hook, `meta_step` reproduces the hook-less `meta_step`'s new parameters to "
        f"{max(r['param_diff'] for r in records):.1e} (max abs difference).",
        "",
        C.markdown_table(["piece", "median s", "share of `meta_step`",
                          "x one `imagine` call (median, min-max)"], rows),
        "",
        f"- **Target < 4 s per meta step: {C.verdict(med < 4.0)}** - median {med:.2f} s with "
        f"{args.threads} thread(s) (min {min(ms):.2f}, max {max(ms):.2f}). Same-run ratios: "
        f"`meta_step` = **{C.median_ratio(ms, [r['imagine'] for r in records]):.1f}x** one "
        f"`imagine` call and **{C.median_ratio(ms, [r['meta_step_fo'] for r in records]):.2f}x**"
        " the first-order meta step.",
        *thread_lines,
    ]
    if rows_t:
        head = ["threads", f"`imagine` (H={max(s.horizon // 4, 2)})",
                "`trpo_outer_step` (full batch)"] + (["`meta_step`"] if args.full else [])
        body += ["", f"Threads: wall time relative to {cmp_threads[0]} thread(s) (> 1 = slower):",
                 "", C.markdown_table(head, rows_t)]
    return "\n".join(body)


def whatif_text(s: Setup, args, records, what_if, malloc) -> str:
    configs, ref = whatif_configs(s.cfg)
    ref = ref if ref in configs else describe(s.cfg)
    med_ms = C.median([r["meta_step"] for r in records])
    cur = [w["current"] for w in what_if]
    rows = [[f"{describe(s.cfg)} (current default)", f"{C.median(cur):.2f}", "1 (reference)",
             f"{C.median([w['current_cos'] for w in what_if]):.6f}", f"{med_ms:.2f}"]]
    for label in configs:
        t = [w[label] for w in what_if]
        sp = [c / x for c, x in zip(cur, t, strict=True)]
        rows.append([label, f"{C.median(t):.2f}", f"{C.median(sp):.2f}x ({C.spread(sp)})",
                     f"{C.median([w[label + '_cos'] for w in what_if]):.6f}",
                     f"{med_ms - C.median(cur) + C.median(t):.2f}"])
    bf = [w["fp32_imagine"] / w["bf16_imagine"] for w in what_if]
    im = C.median([sum(r["split"][k] for k in IMAGINATION) for r in records])
    label = ("imagination under bf16 autocast (fast bf16 here), pre and post"
             if bf16_is_fast("cpu") else
             "imagination under bf16 autocast (no fast bf16 here: H/10 steps, scaled)")
    rows.append([label,
                 f"{C.median([w['bf16_imagine'] for w in what_if]):.2f} per call",
                 f"{C.median(bf):.2f}x ({C.spread(bf)})", "n/a",
                 f"{med_ms - im + im / C.median(bf):.2f}"])
    notes = []
    if malloc is not None:
        med = lambda name, key: C.median([m[key] for m in malloc[name]])  # noqa: E731
        t_def = [C.median(m["times"]) for m in malloc["default"]]
        t_tun = [C.median(m["times"]) for m in malloc["tuned"]]
        sp = [a / b for a, b in zip(t_def, t_tun, strict=True)]
        trpo = C.median([sum(r["split"][k] for k in TRPO) for r in records])
        rows.append(["glibc malloc tuned (note below), whole `trpo_outer_step` in child processes",
                     f"{C.median(t_def):.2f} -> {C.median(t_tun):.2f} (whole TRPO)",
                     f"{C.median(sp):.2f}x ({C.spread(sp)})", "same maths",
                     f"{med_ms - trpo + trpo / C.median(sp):.2f}"])
        notes.append(
            "- malloc what-if: " + ", ".join(f"`{k}={v}`" for k, v in MALLOC_TUNED.items())
            + " in the environment of a child process that times `trpo_outer_step` on the saved "
            "batches, alternating with an untuned child: minor page faults per call "
            f"{med('default', 'minflt'):,.0f} -> {med('tuned', 'minflt'):,.0f}, kernel (sys) "
            f"time {med('default', 'sys'):.2f} s -> {med('tuned', 'sys'):.2f} s.")
    return "\n".join([
        f"- Command: `{C.command_line()}`, date {C.utc_date()}, {C.MACHINE_NOTE}, "
        f"{args.threads} torch thread(s); every what-if runs on the repetition's own batches "
        "right after the `pieces` variant and is paired with it.",
        "",
        C.markdown_table(["what-if", "HVP setup + CG + step-size HVP, median s",
                          "speed-up vs current (paired, min-max)",
                          f"cos(CG direction, direction of {ref})", "projected meta step s"],
                         rows),
        "",
        "- Projected meta step = measured median meta step - median of the replaced piece "
        "+ median of the replacement.",
        *notes,
    ])


def profile_text(s: Setup, args) -> str:
    """One ``meta_step`` under ``torch.profiler``: the top ops by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run_meta_step(s, 1, s.cfg)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    by_op: dict[str, float] = {}
    for e in events:
        by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total
    top_ops = sorted(by_op.items(), key=lambda kv: kv[1], reverse=True)[:8]
    rows = [[f"`{e.key}`", str(e.input_shapes)[:60], e.count,
             f"{e.self_cpu_time_total / 1e6:.2f}", f"{e.self_cpu_time_total / total:.0%}"]
            for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]]
    return "\n".join([
        f"- Command: `{C.command_line()}`, date {C.utc_date()}, {C.MACHINE_NOTE}, "
        f"{args.threads} torch thread(s). One `meta_step` under `torch.profiler`: "
        f"{total / 1e6:.1f} s of self CPU time in ops.",
        "- By op: " + ", ".join(f"`{k}` {v / total:.0%}" for k, v in top_ops),
        "",
        C.markdown_table(["op", "input shapes", "calls", "self CPU s", "share"], rows),
    ])


# ------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="smoke test: tiny sizes, 2 reps, seconds; never writes BENCHMARKS.md")
    size.add_argument("--full", action="store_true",
                      help="5 repetitions, and a whole meta step per thread count")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the main table (default 1, see the threads table)")
    ap.add_argument("--compare-threads", default="1,2",
                    help="thread counts of the threads table ('' to skip)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--what-if", action="store_true",
                    help="time the other TRPO curvature settings, bf16 imagination and malloc")
    ap.add_argument("--profile", action="store_true",
                    help="run one meta step under torch.profiler and report the top ops")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--_child-trpo", dest="child_trpo", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.child_trpo:
        child_trpo(args.child_trpo, args.threads)
        return
    load_before = C.load_average()
    reps = args.reps or (2 if args.quick else 5 if args.full else 3)
    cmp_threads = [int(t) for t in args.compare_threads.split(",") if t.strip()]
    other_threads = [nt for nt in cmp_threads if nt != args.threads]
    torch.set_num_threads(args.threads)
    s = build_setup(args.quick)

    t0 = time.perf_counter()
    records, what_if, keep = measure(s, args, reps, other_threads)
    print(f"measured in {time.perf_counter() - t0:.0f} s")
    malloc = None
    if args.what_if:
        t0 = time.perf_counter()
        malloc = malloc_whatif(s, keep, args.threads, rounds=1 if args.quick else 2)
        print(f"malloc what-if measured in {time.perf_counter() - t0:.0f} s")
    rows_t = threads_table(s, args, cmp_threads) if len(cmp_threads) > 1 else []

    texts = {"bench_meta_step": ("Meta step (`benchmarks/bench_meta_step.py`)", main_text(
        s, args, records, reps, other_threads, rows_t, cmp_threads, load_before))}
    if what_if:
        texts["bench_meta_step_whatif"] = ("Meta step what-ifs (`bench_meta_step.py --what-if`)",
                                           whatif_text(s, args, records, what_if, malloc))
    if args.profile:
        texts["bench_meta_step_profile"] = ("Meta step profile (`bench_meta_step.py --profile`)",
                                            profile_text(s, args))
    for _, text in texts.values():
        print()
        print(text)
    if not (args.no_write or args.quick):
        for name, (title, text) in texts.items():
            C.update_section(name, title, text)
        print(f"\nupdated {C.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
