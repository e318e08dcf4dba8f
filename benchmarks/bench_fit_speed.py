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

With ``--peer-python`` (the mbrl-lib venv's python, see ``peers/mbrl_mbpo_timing.py``), the
same rows, epochs and thread count through mbrl-lib 0.2.0's own refit
(``peers/mbrl_fit_timing.py``: its bootstrap iterators, normaliser update and ``ModelTrainer``,
in a subprocess, run between the repetitions of ours), its median against ours.

Also a ``torch.profiler`` split of the fused variant into matmuls and the rest.

Then MBPO's refits as they happen in a run (``--refits``, 0 to skip): a fit from scratch on the
``--rows`` transitions, then warm-started refits (Adam state kept), each on 250 more rows, with
the config's early stopping (patience 5 per member). Two variants from the same initial
weights, refit by refit in alternating order (CPU time of the calling thread):

* ``members still training`` (what ``fit_ensemble`` does): once a member has stopped, a round
  trains and validates only the others (a sub-ensemble of the active members);
* ``every member every step`` (before): all ``K`` members computed until the last one stops,
  the stopped ones with loss weight 0 and reset to their best weights after every step.

Their epochs per member are reported next to the times (the variants see the same data and
seeds, but a stopped member's Adam state differs between them, so later refits may stop at
other epochs). Writes a BENCHMARKS.md section.

    .venv/bin/python benchmarks/bench_fit_speed.py
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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
def every_member_every_step():
    """``fit_ensemble`` as before its rounds left stopped members out: every step computes all
    ``K`` members (stopped ones weighted 0) and resets the stopped ones to their best weights;
    the validation runs every member."""
    from mbmpo_ray.models import training

    def train_all(ensemble, optimizer, data, order, stop, cfg, autocast):
        active = stop.active
        weight, frozen = active.to(stop.train_loss.dtype), not bool(active.all())
        params = ensemble.member_parameters()
        loss_sum, n_steps = torch.zeros_like(stop.train_loss), 0
        for start in range(0, order.shape[1], cfg.model_batch_size):
            rows = order[:, start : start + cfg.model_batch_size]
            loss_sum += training.train_step(ensemble, optimizer, data.x_tr[rows],
                                            data.y_tr[rows], weight, autocast)
            if frozen:
                training._copy_members(params, stop.best_params, ~active)
            n_steps += 1
        val = training._member_mse(ensemble, data.x_val, data.y_val, cfg.eval_batch_size,
                                   cfg.model_val_space)
        return loss_sum / max(n_steps, 1), val

    original = training._train_active
    training._train_active = train_all
    try:
        yield
    finally:
        training._train_active = original


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
    p.add_argument("--refits", type=int, default=12,
                   help="warm-started refits of 250 new rows each after a fit from scratch "
                        "(0: skip that part)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and fit seeds")
    p.add_argument("--peer-python", type=Path,
                   help="python of the mbrl-lib venv: adds mbrl-lib's refit of the same rows")
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
    sequence = refit_sequence(config, args) if args.refits else ""
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
    peer = []
    for r in range(args.reps):
        for name in names[r % 2:] + names[:r % 2]:
            t0 = time.thread_time()
            variants[name]()
            times[name].append(time.thread_time() - t0)
        if args.peer_python and r % 2 == 0:  # the peer between our repetitions
            peer += peer_refits(args, data, reps=2)

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
    if peer:
        rows.append(("mbrl-lib 0.2.0 (its refit, same rows)", f"{median(peer):.2f}",
                     f"{median(peer) / median(base):.2f}x",
                     f"{min(peer) / median(base):.2f}-{max(peer) / median(base):.2f}"))
    body = "\n".join([
        *header_lines([args.threads], load0),
        f"- Data: {data['source']}; {args.epochs} epochs per refit, "
        f"{args.reps} interleaved repetitions (medians); CPU seconds of the calling thread", "",
        markdown_table(("refit variant", "CPU s per refit", "ratio vs fused", "spread"), rows),
        "",
        f"Profile of one fused refit (self CPU time): matmuls {matmul:.2f} s of {total:.2f} s "
        f"({100 * matmul / total:.0f}%); top ops: "
        + ", ".join(f"`{k}` {v:.2f} s" for k, v in top) + ".", "", sequence])
    print(body)
    if not args.no_write:
        update_section("bench_fit_speed", "Model refit speed (`benchmarks/bench_fit_speed.py`, "
                       "issue 30)", body)


def peer_refits(args: argparse.Namespace, data: dict, reps: int) -> list[float]:
    """CPU seconds of ``reps`` refits by mbrl-lib on ``data`` (``peers/mbrl_fit_timing.py`` in
    the mbrl-lib venv, after one warm-up refit)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.npz"
        np.savez(path, obs=data["obs"], act=data["act"], next_obs=data["next_obs"])
        out = subprocess.run(
            [str(args.peer_python), str(Path(__file__).parent / "peers" / "mbrl_fit_timing.py"),
             "--data", str(path), "--epochs", str(args.epochs), "--reps", str(reps),
             "--threads", str(args.threads), "--seed", str(args.seed)],
            capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"the mbrl-lib refit failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def refit_sequence(config, args: argparse.Namespace) -> str:
    """The fit from scratch and ``args.refits`` warm-started refits of both variants (see the
    module docstring); returns the markdown of their table."""
    from mbmpo_ray.models import DynamicsEnsemble, fit_ensemble

    data = collect_halfcheetah(num_episodes=(args.rows + 250 * args.refits + 199) // 200)

    variants = {"members still training": contextlib.nullcontext,
                "every member every step": every_member_every_step}
    kwargs = config.ensemble_kwargs(data["obs"].shape[1], data["act"].shape[1])
    state = {}
    for name in variants:
        torch.manual_seed(args.seed)
        state[name] = [DynamicsEnsemble(**kwargs), None]  # ensemble, Adam state
    first, times, epochs = {n: 0.0 for n in variants}, {n: [] for n in variants}, {}
    for n in variants:
        epochs[n] = {"sum": [], "max": []}
    names = list(variants)
    for i in range(args.refits + 1):
        rows = args.rows + 250 * i
        for name in names[i % 2:] + names[:i % 2]:
            ens, opt_state = state[name]
            with variants[name]():
                t0 = time.thread_time()
                res, state[name][1] = fit_ensemble(
                    ens, data["obs"][:rows], data["act"][:rows], data["next_obs"][:rows],
                    config.fit_config, generator=torch.Generator().manual_seed(args.seed + i),
                    optimizer_state=opt_state, new_rows=250 if i else 0)
                dt = time.thread_time() - t0
            if i == 0:
                first[name] = dt
            else:
                times[name].append(dt)
            epochs[name]["sum"].append(int(res.epochs.sum()))
            epochs[name]["max"].append(int(res.epochs.max()))
            print(f"refit {i} {name}: {dt:.2f} s, epochs per member {res.epochs.tolist()}")
    base = sum(times[names[0]])
    k = kwargs["ensemble_size"]
    rows = []
    for name in names:
        e = epochs[name]
        rows.append((name, f"{first[name]:.2f} ({e['sum'][0] / k:.1f} / {e['max'][0]})",
                     f"{sum(times[name]) / len(times[name]):.2f}",
                     f"{sum(e['sum'][1:]) / (k * args.refits):.1f} / "
                     f"{sum(e['max'][1:]) / args.refits:.1f}",
                     f"{sum(times[name]) / base:.2f}x",
                     f"{min(times[name]):.2f}-{max(times[name]):.2f}"))
    return "\n".join([
        f"MBPO's refits in a run ({data['source']}): a fit from scratch on {args.rows} rows, then "
        f"{args.refits} warm-started refits of 250 more rows each, early stopping as in the "
        f"config (patience {config.fit_config.model_patience} per member); CPU seconds of the "
        "calling thread, epochs per member as mean / longest member; the refits are not "
        "paired (their epochs differ), so they are compared by their total time:", "",
        markdown_table(("variant", "fit from scratch s (epochs)", "s per refit",
                        "epochs per refit", "refit time vs first row", "range s"),
                       rows), ""])


if __name__ == "__main__":
    main()
