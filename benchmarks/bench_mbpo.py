"""MBPO per 1,000 real steps on HalfCheetah, ours vs mbrl-lib 0.2.0's (issue 11's benchmark).

Both sides run mbrl-lib's HalfCheetah settings (``conf/overrides/mbpo_halfcheetah.yaml``, see
``benchmarks/peers/mbrl_mbpo_timing.py``): 5,000 initial steps, a refit every 250 real steps
(7 x 4 x 200 SiLU Gaussian members, 5 elites, batch 256, lr 1e-3, weight decay 1e-5, holdout
0.2 split afresh at every refit, early stopping with patience 5 on the raw-delta validation MSE
and no epoch cap),
400 x 250 branched rollouts of k = 1 per refit, one epoch of model data kept, G = 10 SAC
updates per real step on batches of 256 model rows (``real_data_ratio`` 0), SAC 512 x 512, lr
3e-4, tau 0.005, target entropy -1.

* ours: ``MBPO`` on HalfCheetah-v5 (``tune_configs/mbpo_halfcheetah.py`` ``mbrl_lib`` variant
  with the settings above), local Learner with ``--threads`` torch threads, real env stepped in
  blocks of ``--block`` steps (10 by default; mbrl-lib: 1). Phases from the algorithm's own
  timers: model fit, model rollouts, SAC updates, env stepping (+ weight sync), evaluation.
* peer: mbrl-lib's own ``mbpo.train`` on HalfCheetah-v4 (it pins gymnasium 0.26.3), run by
  ``peers/mbrl_mbpo_timing.py`` in its own virtual environment (``--peer-python``), same
  ``--threads``, one process after the other on the same machine (``--order`` picks who goes
  first).

The window is real steps 250..N after the initial ones (the first refit and the warm-up are
reported apart). Evaluation differs (mbrl-lib: 1 episode per 1,000 steps; ours: 1 per
iteration of 250 steps), so the headline compares totals *without* evaluation. Writes
``benchmarks/results/mbpo_vs_mbrl_lib.csv`` (per-iteration cumulative phase seconds of ours),
``benchmarks/results/mbpo_vs_mbrl_lib.json`` (both summaries) and a BENCHMARKS.md section.

    .venv/bin/python benchmarks/bench_mbpo.py --peer-python ~/mbrl-venv/bin/python
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    header_lines,
    load_average,
    markdown_table,
    on_learners,
    read_collectives,
    time_collectives,
    update_section,
)

RESULTS = REPO_ROOT / "benchmarks" / "results"
FIT_EVERY = 250
PHASES = ("model_fit", "rollout", "sac_update", "env_step", "eval")
# mbrl-lib's settings that MBPOConfig spells differently or defaults otherwise
MBRL_LIB_SETTINGS = dict(
    initial_random_steps=5000, model_train_freq=FIT_EVERY, epoch_length=1000,
    ensemble_size=7, num_elites=5, model_hidden_sizes=(200, 200, 200, 200),
    model_batch_size=256, model_lr=1e-3, model_weight_decay=1e-5, model_holdout_ratio=0.2,
    model_max_holdout=1_000_000, model_patience=5, model_max_epochs=10_000,
    model_improvement_threshold=0.01, rollouts_per_step=400, rollout_schedule=(20, 150, 1, 1),
    model_retain_epochs=1, updates_per_step=10, real_ratio=0.0, sac_hidden_sizes=(512, 512),
    target_entropy=-1.0, eval_episodes_per_iter=1, model_val_space="raw",
    model_holdout_split="per_fit",
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--real-steps", type=int, default=1000,
                   help="real steps after the 5,000 initial ones (multiple of 250, >= 500)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    p.add_argument("--block", type=int, default=10, help="our env_steps_per_block")
    p.add_argument("--peer-python", type=Path,
                   help="python of the mbrl-lib venv (see peers/mbrl_mbpo_timing.py); "
                        "without it only ours runs")
    p.add_argument("--order", choices=("ours-first", "peer-first"), default="ours-first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: our Learner (SAC updates, rollouts) and model fit on the GPU, "
                        "and mbrl-lib's device cuda")
    p.add_argument("--precision", nargs="+", choices=("float32", "bfloat16"),
                   default=["float32"],
                   help="our run(s): sac_precision and model_precision (bfloat16: autocast "
                        "of the SAC updates' hidden layers and of the model fit's steps); one "
                        "run of ours per value, mbrl-lib always float32")
    p.add_argument("--num-learners", type=int, nargs="+", default=[0], metavar="N",
                   help="our run(s) per precision: 0 = the local Learner with --threads "
                        "threads; N >= 1 = N remote learners of one CPU and one torch thread "
                        "each, the batch of 256 split between them (issue 31); their "
                        "all-reduce time is reported")
    p.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = p.parse_args()
    if min(args.num_learners) < 0:
        p.error("--num-learners: 0 (local learner) or more")
    if args.real_steps < 2 * FIT_EVERY or args.real_steps % FIT_EVERY:
        p.error(f"--real-steps must be a multiple of {FIT_EVERY} and >= {2 * FIT_EVERY}")
    return args


def run_label(precision: str, num_learners: int) -> str:
    """The name of one run of ours (a column of the table)."""
    return precision if num_learners == 0 else f"{precision}, {num_learners} learner(s)"


def run_ours(args: argparse.Namespace, precision: str = "float32", num_learners: int = 0) -> dict:
    """Our MBPO for 5,000 + ``real_steps`` real steps with ``precision`` (SAC updates and
    model fit) on the local Learner (``num_learners`` 0) or on ``num_learners`` remote ones of
    one thread each; the same summary as the peer's."""
    import ray
    import torch

    import tune_configs

    torch.set_num_threads(args.threads)
    # logical CPUs: the learners wait while the driver fits the model, and vice versa
    ray.init(num_cpus=2 + num_learners, include_dashboard=False, log_to_driver=False)
    remote = dict(learner_torch_threads=1, train_batch_size_per_learner=256 // num_learners
                  ) if num_learners else dict(learner_torch_threads=args.threads)
    config = tune_configs.load_config(
        "halfcheetah", "mbrl_lib", algo="mbpo", seed=args.seed, env_steps_per_block=args.block,
        model_device=args.device, sac_precision=precision, model_precision=precision,
        **remote, **MBRL_LIB_SETTINGS)
    config.learners(num_learners=num_learners, num_cpus_per_learner=1,
                    num_gpus_per_learner=1 if args.device == "cuda" else 0)
    algo = config.build_algo()
    if num_learners:
        on_learners(algo, time_collectives)
    rows, cum = [], dict.fromkeys(PHASES, 0.0)
    wall = 0.0
    suffix = "" if precision == "float32" else f"_{precision}"
    suffix += f"_{num_learners}learners" if num_learners else ""
    out_csv = getattr(args, "out_csv", None) or RESULTS / f"mbpo_vs_mbrl_lib{suffix}.csv"
    try:
        with open(out_csv, "w", newline="") as fh:
            fields = ["real_steps", "wall_s", *(f"{p}_s" for p in PHASES), "other_s",
                      "model_epochs", "sac_updates", "eval_return"]
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            first, coll = None, 0.0
            while True:
                t0 = time.perf_counter()
                r = algo.train()
                dt = time.perf_counter() - t0
                tm = r["timers"]
                phase = {"model_fit": tm["fit_models"], "rollout": tm["model_rollouts"],
                         "sac_update": tm["sac_updates"],
                         "env_step": tm["sample_real"] + tm.get("sync_weights", 0.0),
                         "eval": tm["evaluate_real"]}
                c = algo.counters
                if first is None:  # initial steps + first fit + first 250 steps
                    first = {"wall_s": dt, **{f"{k}_s": v for k, v in phase.items()},
                             "model_epochs": r["model"].get("epochs_mean")}
                    steps0 = c["real_steps"]
                    upd0 = c["sac_updates"]
                else:
                    wall += dt
                    for k, v in phase.items():
                        cum[k] += v
                if num_learners:  # mean over the learners; the first iteration's not counted
                    secs = float(np.mean([x["s"] for x in on_learners(algo, read_collectives)]))
                    coll += secs if rows else 0.0
                row = {"real_steps": c["real_steps"] - steps0 + FIT_EVERY, "wall_s": wall,
                       **{f"{k}_s": v for k, v in cum.items()},
                       "other_s": wall - sum(cum.values()),
                       "model_epochs": r["model"].get("epochs_mean"),
                       "sac_updates": c["sac_updates"] - upd0,
                       "eval_return": r.get("episode_return_mean")}
                rows.append(row)
                writer.writerow({k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in row.items()})
                fh.flush()
                print(f"[ours {run_label(precision, num_learners)}] real step "
                      f"{c['real_steps']}: {dt:.1f} s "
                      f"(fit {phase['model_fit']:.1f}, rollouts {phase['rollout']:.1f}, "
                      f"sac {phase['sac_update']:.1f})", file=sys.stderr)
                if c["real_steps"] >= 5000 + args.real_steps:
                    break
    finally:
        algo.stop()
        ray.shutdown()
    n = rows[-1]["real_steps"] - FIT_EVERY
    k = 1000.0 / n
    per_1k = {p: rows[-1][f"{p}_s"] * k for p in (*PHASES, "other")}
    per_1k["total"] = rows[-1]["wall_s"] * k
    return {
        "side": "mbmpo_ray MBPO", "env": "HalfCheetah-v5", "threads": args.threads,
        "device": args.device, "precision": precision, "num_learners": num_learners,
        "all_reduce_per_1k_s": round(coll * k, 3) if num_learners else None,
        "block": args.block, "window_real_steps": [FIT_EVERY, rows[-1]["real_steps"]],
        "per_1k_real_steps_s": {p: round(s, 3) for p, s in per_1k.items()},
        "window": {"sac_updates": rows[-1]["sac_updates"],
                   "ms_per_sac_update": 1e3 * rows[-1]["sac_update_s"]
                   / max(rows[-1]["sac_updates"], 1),
                   "s_per_model_fit": rows[-1]["model_fit_s"] / (len(rows) - 1),
                   "epochs_per_model_fit": sum(r["model_epochs"] or 0 for r in rows[1:])
                   / (len(rows) - 1)},
        "excluded": {"first_iteration": first},
    }


def run_peer(args: argparse.Namespace) -> dict:
    """mbrl-lib's MBPO in its own venv; its JSON summary (stdout of the timing script)."""
    script = REPO_ROOT / "benchmarks" / "peers" / "mbrl_mbpo_timing.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(args.peer_python), str(script), "--real-steps", str(args.real_steps),
         "--threads", str(args.threads), "--seed", str(args.seed), "--device", args.device],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT, check=False)
    if proc.returncode:
        sys.exit(f"the mbrl-lib run failed (exit {proc.returncode}); see its output above")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # the same phase names as ours
    s = summary["per_1k_real_steps_s"]
    summary["per_1k_real_steps_s"] = {
        "model_fit": s["model_train"], "rollout": s["rollout"], "sac_update": s["sac_update"],
        "env_step": s["env_step"], "eval": s["eval"], "other": s["other"], "total": s["total"]}
    return summary


def without_eval(side: dict) -> float:
    s = side["per_1k_real_steps_s"]
    return s["total"] - s["eval"]


def report(ours: dict[str, dict], peer: dict | None, args: argparse.Namespace, load0: str,
           order: list[str]) -> str:
    """The BENCHMARKS.md section: seconds per 1,000 real steps per phase, one column per run
    of ours (``ours``: precision -> summary) and mbrl-lib's, with mbrl-lib / ours ratios."""
    names = ("model_fit", "rollout", "sac_update", "env_step", "other", "eval", "total")
    precisions = list(ours)
    rows = []

    def ratios(b: float, values: list[float]) -> list[str]:
        return [f"{b / a:.2f}x" if a > 0 else "n/a" for a in values] if peer else []

    for name in names:
        a = [ours[p]["per_1k_real_steps_s"][name] for p in precisions]
        b = peer["per_1k_real_steps_s"][name] if peer else None
        rows.append((name, *(f"{x:.1f}" for x in a), *([f"{b:.1f}"] if peer else []),
                     *ratios(b, a)))
    a = [without_eval(ours[p]) for p in precisions]
    b = without_eval(peer) if peer else None
    rows.append(("**total without eval**", *(f"**{x:.1f}**" for x in a),
                 *([f"**{b:.1f}**"] if peer else []),
                 *(f"**{r}**" for r in ratios(b, a))))
    a = [ours[p]["window"]["ms_per_sac_update"] for p in precisions]
    b = peer["window"]["ms_per_sac_update"] if peer else None
    rows.append(("ms per SAC update", *(f"{x:.1f}" for x in a),
                 *([f"{b:.1f}"] if peer else []), *ratios(b, a)))
    if any(ours[p]["num_learners"] for p in precisions):
        rows.append(("all_reduce (in sac_update)",
                     *(f"{ours[p]['all_reduce_per_1k_s']:.1f}" if ours[p]["num_learners"]
                       else "" for p in precisions),
                     *([""] if peer else []), *([""] * len(precisions) if peer else [])))
    fit = [ours[p]["window"] for p in precisions]
    rows.append(("s per model fit (epochs)",
                 *(f"{w['s_per_model_fit']:.1f} ({w['epochs_per_model_fit']:.0f})" for w in fit),
                 *([f"{peer['window']['s_per_model_fit']:.1f} "
                    f"({peer['window']['epochs_per_model_fit']:.0f})"] if peer else []),
                 *([""] * len(precisions) if peer else [])))
    lines = header_lines([args.threads], load0)
    lines.append(f"- Runs, one after the other in this script: {', '.join(order)}; window: real "
                 f"steps 250..{ours[precisions[0]]['window_real_steps'][1]} after the 5,000 "
                 f"initial ones; ours steps the env in blocks of {args.block} (mbrl-lib: 1); "
                 "ours with `sac_precision` = `model_precision` = the column's dtype (bfloat16: "
                 "autocast of the SAC hidden layers and the model fit's steps); a column with "
                 "N learner(s): SAC updates and model rollouts on N remote learners of one "
                 "thread each (batch 256 split between them), the model fit on the driver")
    if peer is not None:
        lines.append(f"- Peer: mbrl-lib {peer['versions']['mbrl']} on HalfCheetah-v4, torch "
                     f"{peer['versions']['torch']}, gymnasium {peer['versions']['gymnasium']} "
                     "(float32)")
    header = ("seconds per 1,000 real steps", *(f"ours {p} (v5)" for p in precisions),
              *(["mbrl-lib (v4)"] if peer else []),
              *(f"mbrl-lib / ours {p}" for p in precisions if peer))
    return "\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n"


def main() -> None:
    args = parse_args()
    load0 = load_average()
    ours_runs = [f"ours {run_label(p, n)}" for p in args.precision for n in args.num_learners]
    order = ours_runs + ["peer"] if args.order == "ours-first" else ["peer", *ours_runs]
    if args.peer_python is None:
        order = ours_runs
    results = {}
    for side in order:
        results[side] = (run_peer(args) if side == "peer" else run_ours(
            args, *next((p, n) for p in args.precision for n in args.num_learners
                        if side == f"ours {run_label(p, n)}")))
        print(json.dumps(results[side]), file=sys.stderr)
    (RESULTS / "mbpo_vs_mbrl_lib.json").write_text(json.dumps(results, indent=1))
    ours = {r.removeprefix("ours "): results[r] for r in ours_runs}
    body = report(ours, results.get("peer"), args, load0, order)
    print(body)
    if not args.no_write:
        update_section("bench_mbpo", "MBPO vs mbrl-lib, HalfCheetah (`benchmarks/bench_mbpo.py`)",
                       body)


if __name__ == "__main__":
    main()
