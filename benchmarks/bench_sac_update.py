"""One MBPO SAC update at mbrl-lib's HalfCheetah shapes: where its time goes, what each lever
of issue 30 gives, and how it compares with the matmuls it must do.

Shapes: ``benchmarks/bench_mbpo.py``'s settings (``tune_configs/mbpo_halfcheetah.py``
``mbrl_lib``): HalfCheetah-v5 (18 observation dims, 17 seen by the networks; 6 actions), SAC
512 x 512 ReLU, batch 256, twin Q, target entropy -1. One "update" = the Learner's
``_quiet_update`` (losses, gradients, Adam steps) + its Polyak step: what ``train_block`` runs
for every update but the last of a block.

* **profile**: ``torch.profiler`` over ``--profile-updates`` updates, per op (self CPU time),
  split into matmuls (``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``) and everything else;
* **matmul floor**: every matmul the profile saw, replayed alone with the same shapes and
  dtype (contiguous operands, ``--reps`` repetitions); their sum per update is the update's
  "own matmul time" (the issue's target: update <= 1.5x it);
* **levers**: the update with one lever undone at a time, interleaved with the full update in
  the same run (the ratio is lever-off / full), plus the implementation before issue 30
  (git ``--baseline-rev``, the Learner and RLModule of that commit loaded from git history)
  and, for reference, a plain hand-written twin-critic update of the same shapes
  (:class:`PlainSAC`, float32 only).

Per ``--threads`` value and ``--precision`` value (bfloat16: the SAC autocast, where this CPU
has no fast bf16 it is emulated). Writes ``benchmarks/results/sac_update.json`` and the
BENCHMARKS.md section "SAC update speed (issue 30)".

    .venv/bin/python benchmarks/bench_sac_update.py --threads 1 2 --precision float32 bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    header_lines,
    load_average,
    markdown_table,
    median,
    median_ratio,
    spread,
    update_section,
)

RESULTS = REPO_ROOT / "benchmarks" / "results"
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
BASELINE_REV = "25ce9fb"  # main before issue 30: RLlib's module layout, RLlib's forward + loss
LEARNER = "mbmpo_ray.algorithm.mbpo.learner"
RL_MODULE = "mbmpo_ray.algorithm.mbpo.rl_module"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--precision", nargs="+", choices=("float32", "bfloat16"),
                   default=["float32"])
    p.add_argument("--updates", type=int, default=10, help="updates per timed call")
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    p.add_argument("--profile-updates", type=int, default=10)
    p.add_argument("--baseline-rev", default=BASELINE_REV,
                   help="git revision whose MBPO Learner/RLModule is the 'before' row "
                        "('' to skip)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile lever")
    p.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    return p.parse_args()


# ---------------------------------------------------------------------- learners
def make_config(precision: str, threads: int):
    import tune_configs

    return tune_configs.load_config(
        "halfcheetah", "mbrl_lib", algo="mbpo", learner_torch_threads=threads,
        sac_precision=precision, target_entropy=-1.0, sac_hidden_sizes=(512, 512))


def build_learner(config):
    from mbmpo_ray.envs.registry import make_env

    learner = config.build_learner(env=make_env("HalfCheetah-v5"))
    return learner


def batch_for(learner, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = learner.config.train_batch_size_per_learner
    rows = {"obs": torch.randn(b, 18, generator=g), "act": torch.rand(b, 6, generator=g) * 2 - 1,
            "next_obs": torch.randn(b, 18, generator=g), "reward": torch.randn(b, generator=g),
            "done": (torch.rand(b, generator=g) < 0.05).float()}
    return learner._sac_batch(rows)


def load_previous(rev: str) -> tuple[type, type] | None:
    """The MBPO Learner and RLModule classes of git revision ``rev`` (from history)."""
    mods = {}
    for name, path in (("rl_module", "mbmpo_ray/algorithm/mbpo/rl_module.py"),
                       ("learner", "mbmpo_ray/algorithm/mbpo/learner.py")):
        try:
            src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO_ROOT, check=True,
                                 capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"baseline {rev}: {e}", file=sys.stderr)
            return None
        mod = types.ModuleType(f"_previous_{name}")
        exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)  # noqa: S102
        mods[name] = mod
    return mods["learner"].MBPOTorchLearner, mods["rl_module"].MBPOTorchRLModule


def build_previous(config, rev: str):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    classes = load_previous(rev)
    if classes is None:
        return None
    learner_cls, module_cls = classes
    cfg = config.copy(copy_frozen=False)
    cfg.rl_module(rl_module_spec=RLModuleSpec(module_class=module_cls))
    cfg.learners(learner_class=learner_cls)
    return build_learner(cfg)


# ---------------------------------------------------------------------- levers
def separate_critics_mlp(x, weights, biases, activation):
    """:func:`stacked_mlp` as K separate chains of ``addmm`` (one per critic and layer, on
    views of the stacked weights): the lever 'one baddbmm for both critics' undone."""
    outs = []
    last = len(weights) - 1
    for k in range(weights[0].shape[0]):
        h = x if x.dim() == 2 else x[k]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            if i == last and torch.is_autocast_enabled(h.device.type):
                with torch.autocast(h.device.type, enabled=False):
                    h = torch.addmm(b[k], h.float(), w[k])
            else:
                h = torch.addmm(b[k], h, w[k])
                if i < last:
                    h = activation(h)
        outs.append(h)
    return torch.stack(outs)


def batched_actor_losses(original):
    """:func:`sac_losses` with the policy's two passes (s with gradient, s' without) as ONE
    pass over ``2B`` rows (the backward pass then covers all 2B rows)."""
    def losses(module, log_alpha, target_entropy, batch, noise, gamma):
        from ray.rllib.core.columns import Columns

        obs = batch[Columns.OBS]
        both = torch.cat((obs, batch[Columns.NEXT_OBS]))
        logits = module.policy_logits(module.policy_obs(both))
        saved = module.policy_logits
        calls = iter(logits.split(len(obs)))
        module.policy_logits = lambda _obs: next(calls)
        try:
            return original(module, log_alpha, target_entropy, batch, noise, gamma)
        finally:
            module.policy_logits = saved
    return losses


def adam_through_optimizers(learner):
    def step(params, grads):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        for optim in learner._optimizer_parameters:
            optim.step()
        for p in params:
            p.grad = None
    return step


def polyak_per_tensor(learner):
    def polyak():
        if learner._targets_mains is None:
            learner._targets_mains = learner._target_param_lists()
        tau = learner.config.tau
        with torch.no_grad():
            for t, m in zip(*learner._targets_mains, strict=True):
                t.mul_(1.0 - tau).add_(m, alpha=tau)
    return polyak


class PlainSAC:
    """A plain hand-written twin-critic SAC update of the learner's shapes, for reference (no
    RLlib, no autocast): the actor and the two critics as raw weight tensors (the critics
    stacked, one ``baddbmm`` per layer), the same loss terms as :func:`sac_losses`, one
    ``autograd.grad``, ``torch.optim.Adam(fused=True)`` over every parameter, a
    ``_foreach_lerp_`` Polyak step. What a careful user would write in plain PyTorch."""

    def __init__(self, learner, batch: dict):
        from ray.rllib.core.columns import Columns
        from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID

        cfg, module = learner.config, learner.module[DEFAULT_MODULE_ID]
        rows = batch[DEFAULT_MODULE_ID]
        self.obs = module.policy_obs(rows[Columns.OBS]).detach()
        self.next_obs = module.policy_obs(rows[Columns.NEXT_OBS]).detach()
        self.act, self.rew = rows[Columns.ACTIONS], rows[Columns.REWARDS]
        self.done = rows[Columns.TERMINATEDS].float()
        o, a = self.obs.shape[1], self.act.shape[1]
        hid = list(cfg.sac_hidden_sizes)
        self.gamma, self.tau, self.target_entropy = cfg.gamma, cfg.tau, -float(a)
        g = torch.Generator().manual_seed(0)

        def uniform(*shape, fan_in):
            bound = 1.0 / fan_in ** 0.5
            return (torch.rand(*shape, generator=g) * 2 - 1) * bound

        pi = list(itertools.pairwise([o, *hid, 2 * a]))
        q = list(itertools.pairwise([o + a, *hid, 1]))
        self.pi = [uniform(i, j, fan_in=i).requires_grad_() for i, j in pi]
        self.pi_b = [uniform(j, fan_in=i).requires_grad_() for i, j in pi]
        self.q = [uniform(2, i, j, fan_in=i).requires_grad_() for i, j in q]
        self.q_b = [uniform(2, 1, j, fan_in=i).requires_grad_() for i, j in q]
        self.tq = [w.detach().clone() for w in self.q + self.q_b]
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.params = [*self.pi, *self.pi_b, *self.q, *self.q_b, self.log_alpha]
        self.optim = torch.optim.Adam(self.params, lr=cfg.actor_lr, fused=True)

    def _policy(self, x):
        h = x
        for i, (w, b) in enumerate(zip(self.pi, self.pi_b, strict=True)):
            h = torch.addmm(b, h, w)
            h = torch.relu(h) if i < len(self.pi) - 1 else h
        loc, log_std = h.chunk(2, -1)
        log_std = log_std.clamp(-5.0, 2.0)
        eps = torch.randn_like(loc)
        z = loc + eps * log_std.exp()
        jac = 2.0 * (0.6931471805599453 - z - torch.nn.functional.softplus(-2.0 * z))
        return torch.tanh(z), (-0.5 * eps.square() - log_std - jac).sum(-1)

    @staticmethod
    def _critics(x, weights, biases):
        h = x.expand(2, *x.shape)
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            h = torch.relu(h) if i < len(weights) - 1 else h
        return h.squeeze(-1)

    def step(self) -> None:
        alpha = self.log_alpha.exp().detach()
        act_pi, logp = self._policy(self.obs)
        with torch.no_grad():
            act_next, logp_next = self._policy(self.next_obs)
            n = len(self.q)
            q_next = self._critics(torch.cat((self.next_obs, act_next), -1), self.tq[:n],
                                   self.tq[n:]).min(0).values - alpha * logp_next
            y = self.rew + self.gamma * (1.0 - self.done) * q_next
        q_pred = self._critics(torch.cat((self.obs, self.act), -1), self.q, self.q_b)
        q_curr = self._critics(torch.cat((self.obs, act_pi), -1),
                               [w.detach() for w in self.q],
                               [b.detach() for b in self.q_b]).min(0).values
        critic = torch.nn.functional.huber_loss(q_pred, y.expand_as(q_pred),
                                                reduction="none").mean(-1).sum()
        actor = (alpha * logp - q_curr).mean()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        grads = torch.autograd.grad(critic + actor + alpha_loss, self.params)
        for p, grad in zip(self.params, grads, strict=True):
            p.grad = grad
        self.optim.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.tq, [*self.q, *self.q_b], self.tau)

    def runner(self, n: int):
        def run():
            for _ in range(n):
                self.step()
        return run


@contextlib.contextmanager
def patched(obj, name, value):
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


def update_fn(learner, batch, n: int, *, quiet: bool = True, polyak=None):
    step = learner._quiet_update if quiet else learner._update
    polyak = polyak or learner._polyak

    def run():
        for _ in range(n):
            step(batch)
            polyak()
        if not quiet:
            learner.metrics.reduce()
    return run


# ---------------------------------------------------------------------- timing
def cpu_clock(threads: int):
    """The clock of the timings: with 1 torch thread the calling thread's CPU time (what the
    update costs, unaffected by other processes taking the core away on this shared
    machine), else the process's (all its threads, their spin-waits included)."""
    return time.thread_time if threads == 1 else time.process_time


def interleaved(variants: dict, reps: int, clock) -> dict[str, list[float]]:
    """``clock`` seconds of every variant, ``reps`` times, in a rotating order (as
    ``_common.interleaved``), after one untimed call each."""
    names = list(variants)
    for name in names:
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = clock()
            variants[name]()
            times[name].append(clock() - t0)
    return times


# ---------------------------------------------------------------------- profile + floor
def profile_update(run, n_updates: int) -> tuple[dict, list]:
    """Per-op self CPU ms per update and the matmul calls (name, shapes) of one update."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    per_op = {e.key: e.self_cpu_time_total / 1e3 / n_updates for e in prof.key_averages()}
    calls = defaultdict(int)
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in MATMUL_OPS:
            shapes = tuple(tuple(s) for s in e.input_shapes if s)
            calls[(e.key, shapes)] += e.count
    return per_op, [(k, s, c / n_updates) for (k, s), c in calls.items()]


def matmul_floor(calls: list, dtype: torch.dtype, reps: int, clock) -> float:
    """``clock`` ms per update of the update's matmuls replayed alone (median of ``reps``)."""
    total = 0.0
    for name, shapes, count in calls:
        args = [torch.randn(*s).to(dtype) for s in shapes]
        op = {"aten::mm": torch.mm, "aten::addmm": torch.addmm, "aten::bmm": torch.bmm,
              "aten::baddbmm": torch.baddbmm}[name]
        if name in ("aten::addmm", "aten::baddbmm") and len(args) == 2:
            continue  # (a shape list without the bias: not replayable)
        for _ in range(3):
            op(*args)
        times = []
        for _ in range(reps):
            t0 = clock()
            for _ in range(10):
                op(*args)
            times.append((clock() - t0) / 10)
        total += median(times) * count
    return total * 1e3


# ---------------------------------------------------------------------- one setting
def run_setting(args, precision: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    learner_mod = importlib.import_module(LEARNER)
    module_mod = importlib.import_module(RL_MODULE)
    config = make_config(precision, threads)
    ours = build_learner(config)
    torch.set_num_threads(threads)
    batch = batch_for(ours)
    n = args.updates
    full = update_fn(ours, batch, n)
    variants = {"full": full}

    def with_patch(obj, name, value, run):
        def go():
            with patched(obj, name, value):
                run()
        return go

    variants["critics as 2 separate addmm chains"] = with_patch(
        module_mod, "stacked_mlp", separate_critics_mlp, full)
    variants["actor: s and s' in one 2B pass"] = with_patch(
        learner_mod, "sac_losses", batched_actor_losses(learner_mod.sac_losses), full)
    variants["Adam: optimizer.step() x3"] = with_patch(
        ours, "_adam_step", adam_through_optimizers(ours), full)
    variants["Polyak: per tensor"] = update_fn(ours, batch, n, polyak=polyak_per_tensor(ours))
    variants["metrics + host reads every update"] = update_fn(ours, batch, n, quiet=False)
    if precision == "float32":
        variants["plain hand-written update (reference)"] = PlainSAC(ours, batch).runner(n)
    compile_note = ""
    if not args.no_compile and precision == "float32":  # (bf16 is emulated here)
        compiled = torch.compile(learner_mod.sac_losses, dynamic=False)
        t0 = time.perf_counter()
        try:
            with patched(learner_mod, "sac_losses", compiled):
                full()
            compile_note = f"compiled in {time.perf_counter() - t0:.0f} s"
            variants["torch.compile(sac_losses)"] = with_patch(
                learner_mod, "sac_losses", compiled, full)
        except Exception as e:  # noqa: BLE001 - report, go on
            compile_note = f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}"
    previous = build_previous(config, args.baseline_rev) if args.baseline_rev else None
    torch.set_num_threads(threads)
    if previous is not None:
        prev_batch = batch_for(previous)
        variants[f"before issue 30 ({args.baseline_rev}), quiet update"] = update_fn(
            previous, prev_batch, n)
        variants[f"before issue 30 ({args.baseline_rev}), RLlib _update"] = update_fn(
            previous, prev_batch, n, quiet=False)
    clock = cpu_clock(threads)
    times = interleaved(variants, args.reps, clock)
    ms = {k: 1e3 * median(v) / n for k, v in times.items()}
    ratios = {k: (median_ratio(v, times["full"]), spread(
        [a / b for a, b in zip(v, times["full"], strict=True)])) for k, v in times.items()}
    # profile and matmul floor of ours (and of the previous implementation)
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    prof = {}
    for name, learner in (("ours", ours), ("before", previous)):
        if learner is None:
            continue
        b = batch if learner is ours else prev_batch
        per_op, calls = profile_update(update_fn(learner, b, args.profile_updates),
                                       args.profile_updates)
        prof[name] = {"per_op": per_op, "calls": calls,
                      "floor_ms": matmul_floor(calls, dtype, args.reps, clock)}
    return {"precision": precision, "threads": threads, "ms": ms, "ratios": ratios,
            "profile": prof, "compile": compile_note}


# ---------------------------------------------------------------------- report
def split(per_op: dict) -> tuple[float, float]:
    mm = sum(v for k, v in per_op.items() if k in MATMUL_OPS)
    return mm, sum(per_op.values()) - mm


def report(results: list[dict], args, load0: str) -> str:
    lines = header_lines(args.threads, load0)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fast = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    lines.append(f"- CPU bf16 units: {', '.join(fast) if fast else 'none (bf16 is emulated)'}"
                 f"; {args.updates} updates per timed call, {args.reps} interleaved "
                 "repetitions (medians). Times are CPU time: of the calling thread with 1 "
                 "torch thread (immune to other processes taking the core), of the process "
                 "with 2 (its threads' spin-waits included); the profile's split is wall "
                 "time per op")
    out = ["\n".join(lines), ""]
    rows = []
    for r in results:
        for name, p in r["profile"].items():
            mm, rest = split(p["per_op"])
            full = r["ms"]["full"] if name == "ours" else next(
                v for k, v in r["ms"].items() if k.endswith("quiet update"))
            rows.append((f"{name} {r['precision']} x{r['threads']}", f"{full:.2f}",
                         f"{mm:.2f}", f"{rest:.2f}", f"{mm / (mm + rest):.0%}",
                         f"{p['floor_ms']:.2f}", f"**{full / p['floor_ms']:.2f}x**"))
    out.append("Where one update's time goes (profiled: ms of self CPU time per update, "
               "matmul ops vs the rest; the floor: the same matmuls replayed alone):\n")
    out.append(markdown_table(("update", "CPU ms per update", "matmul ms (profiled)",
                               "other ms (profiled)", "matmul share", "matmul floor ms",
                               "update / floor"), rows))
    for r in results:
        out.append(f"\nLevers, {r['precision']}, {r['threads']} thread(s): each row undoes one "
                   "lever of the full update (or is the implementation before issue 30); "
                   "ratio = its time / the full update's, same repetitions. "
                   f"{r['compile']}\n")
        lever_rows = [(k, f"{r['ms'][k]:.2f}", f"{r['ratios'][k][0]:.2f}x",
                       r["ratios"][k][1]) for k in r["ms"]]
        out.append(markdown_table(("variant", "CPU ms per update", "ratio vs full", "spread"),
                                  lever_rows))
        top = sorted(r["profile"]["ours"]["per_op"].items(), key=lambda kv: -kv[1])[:12]
        out.append("\nTop ops of the full update (self CPU ms per update): "
                   + ", ".join(f"`{k}` {v:.2f}" for k, v in top))
    return "\n".join(out) + "\n"


def main() -> None:
    args = parse_args()
    load0 = load_average()
    results = []
    for precision in args.precision:
        for threads in args.threads:
            r = run_setting(args, precision, threads)
            print(json.dumps({k: r[k] for k in ("precision", "threads", "ms", "ratios",
                                                "compile")}, indent=1), file=sys.stderr)
            results.append(r)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sac_update.json").write_text(json.dumps(
        [{**r, "profile": {k: {"floor_ms": v["floor_ms"], "calls": v["calls"],
                               "per_op": v["per_op"]} for k, v in r["profile"].items()}}
         for r in results], indent=1, default=str))
    body = report(results, args, load0)
    print(body)
    if not args.no_write:
        update_section("bench_sac_update", "SAC update speed (issue 30)", body)


if __name__ == "__main__":
    main()
