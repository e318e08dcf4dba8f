"""Per-iteration profile of MBMPO on HalfCheetah-v5 (horizon 200) at paper settings.

Runs the algorithm through ``MBMPO.train()`` and records, per iteration, seconds per phase
(real sampling, model fitting, meta update split into imagination / optimisation, weight sync,
evaluation), the real-env return of the pre-update and of the adapted policies, and the real
steps so far. Each run keeps its results in its own dated folder,
``benchmarks/results/bench_iteration/<YYYY-MM-DD>[-<tag>]/`` (UTC; a second run of the day gets
``-2``, ``-3``, ...): ``iteration_<env>.csv``, a PNG of the return curve and the phase times, and
its section of BENCHMARKS.md (``iteration-<env>-<folder>``). Ratios in the same run: each phase's
share of the iteration time.

    .venv/bin/python benchmarks/bench_iteration.py --iterations 3            # profile
    .venv/bin/python benchmarks/bench_iteration.py --stop-timesteps 100000  # learning curve
    .venv/bin/python benchmarks/bench_iteration.py --compare                # curves of all runs

The run recorded in BENCHMARKS.md as v3, kept in ``bench_iteration/2026-11-22-3/`` (one model
trainer per member, so a member that stops early frees its share of the two cores):

    .venv/bin/python benchmarks/bench_iteration.py --stop-timesteps 100000 \
        --num-model-trainers 5 --set num_cpus_per_model_trainer=0.4 \
        --set learner_torch_threads=2 --set eval_episodes_per_iter=10

Targets (issue 4): a paper-size iteration (30 meta steps) under 180 s on this 2-core machine
(legacy RLlib: 350-440 s on 20 workers + 1 GPU), and return >= 520 at 100,000 real steps.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    all_run_dirs,
    header_lines,
    load_average,
    markdown_table,
    new_run_dir,
    results_link,
    run_dirs,
    update_section,
    utc_date,
)

SCRIPT = "bench_iteration"  # results/<SCRIPT>/<run folder>/

PHASES = ["sample_real", "fit_models", "meta_update", "synch_weights", "evaluate_real"]
PLASTICITY = ["plasticity_kl_mean", "plasticity_disagreement_mean", "plasticity_rank_corr",
              *(f"plasticity_{q}_bin{i}" for i in range(5) for q in ("kl", "disagreement"))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="halfcheetah")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--stop-timesteps", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a paper setting (recorded in the report)")
    p.add_argument("--num-model-trainers", type=int, default=None,
                   help="override the config's (PAPER: 5, one per member)")
    p.add_argument("--gpu", action="store_true", help="the meta-learner on a GPU "
                   "(num_gpus_per_learner=1, local Learner)")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--tag", default="", help="a name for the run, added to its dated folder "
                   "(results/bench_iteration/<date>-<tag>/); runs of one day stay apart "
                   "without it")
    p.add_argument("--compare", action="store_true", help="only plot the return curves of every "
                   "earlier run of --env (results/bench_iteration/*/iteration_<env>.csv) into "
                   "one PNG in today's folder")
    p.add_argument("--resume", action="store_true", help="continue the newest run of --env with "
                   "the same --tag from its last per-iteration checkpoint "
                   "(results/checkpoints/iteration_<env>_<folder>); the report then says where "
                   "it was resumed")
    args = p.parse_args()
    if args.compare:
        print(compare(args.env))
        return 0
    if args.iterations is None and args.stop_timesteps is None:
        args.iterations = 2

    import ray

    import tune_configs
    from mbmpo_ray.algorithm.checkpoints import save_algorithm
    from mbmpo_ray.cli import _parse_set

    overrides = _parse_set(args.set)
    if args.num_model_trainers is not None:
        overrides["num_model_trainers"] = args.num_model_trainers
    config = tune_configs.load_config(args.env, "paper", **overrides)
    if args.gpu:
        config.learners(num_gpus_per_learner=1)
    load_before = load_average()
    ray.init(include_dashboard=False, log_to_driver=False)
    algo = config.build_algo()
    config = algo.config  # validated (knows its env id)
    stem = f"iteration_{config.model_env_id}"
    out_dir = run_dir(stem, args.tag, args.resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = RESULTS / "checkpoints" / f"{stem}_{out_dir.name}"  # git-ignored
    print(f"results in {results_link(out_dir)}/", flush=True)
    rows = []
    pending_resume = args.resume
    if args.resume:
        rows = resume(algo, ckpt_dir, out_dir / f"{stem}.csv")
    elif ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir)  # a new run: stale checkpoints would mix two runs
    try:
        while True:
            t0 = time.perf_counter()
            r = algo.train()
            total = time.perf_counter() - t0
            timers, meta = r["timers"], r.get("learners", {}).get("default_policy", {})
            row = {
                "iteration": r["training_iteration"],
                "real_steps": int(r["num_real_steps_lifetime"]),
                "return_pre": r.get("episode_return_mean", float("nan")),
                "return_adapted": r.get("post_adaptation_return_mean", float("nan")),
                "total_s": total,
                **{f"{ph}_s": timers.get(ph, float("nan")) for ph in PHASES},
                "imagine_s": meta.get("time_sample_mean_over_steps", float("nan"))
                * config.meta_steps_per_iter,
                "optimize_s": meta.get("time_optimize_mean_over_steps", float("nan"))
                * config.meta_steps_per_iter,
                "model_epochs": r.get("model", {}).get("epochs_mean", float("nan")),
                "model_val_loss": r.get("model", {}).get("val_loss_mean", float("nan")),
                # imagined (model) returns of the last meta step: pre-update / adapted
                "imagined_pre": meta.get("pre_return_mean", float("nan")),
                "imagined_adapted": meta.get("post_return_mean", float("nan")),
                "policy_std": meta.get("policy_std_mean", float("nan")),
                # TRPO line search: mean accepted fraction of the full step over the meta steps
                "ls_step_fraction": meta.get("ls_step_fraction_mean_over_steps", float("nan")),
                # MB-MPO Fig. 3: KL of the inner step vs ensemble disagreement (last meta step)
                **{k: meta.get(k, float("nan")) for k in PLASTICITY},
                "load_1min": os.getloadavg()[0],
                "resumed": int(pending_resume),
            }
            pending_resume = False
            rows.append(row)
            save_algorithm(algo, ckpt_dir, keep=1)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)
            # results so far survive an interrupted long run
            report(rows, args, config, overrides, load_before, out_dir, stem)
            if args.iterations is not None and row["iteration"] >= args.iterations:
                break
            if args.stop_timesteps is not None and row["real_steps"] >= args.stop_timesteps:
                break
    finally:
        algo.stop()
        ray.shutdown()
    if not rows:
        return 1
    print(report(rows, args, config, overrides, load_before, out_dir, stem))
    return 0


def run_dir(stem: str, tag: str, resume: bool) -> Path:
    """The run's folder: a new dated one, or (``resume``) the newest holding ``<stem>.csv``
    with the same ``tag``."""
    if not resume:
        return new_run_dir(SCRIPT, tag, taken=lambda d: (d / f"{stem}.csv").exists())
    runs = [d for d in run_dirs(SCRIPT, tag) if (d / f"{stem}.csv").exists()]
    if not runs:
        raise SystemExit(f"--resume: no run of {stem} (tag {tag!r}) in "
                         f"{results_link(RESULTS / SCRIPT)}/; start it without --resume")
    return runs[-1]


def resume(algo, ckpt_dir: Path, csv_path: Path) -> list[dict]:
    """Restore ``algo`` from the newest checkpoint in ``ckpt_dir`` and return the CSV rows up to
    its iteration; the first row after it will be marked ``resumed``."""
    from mbmpo_ray.algorithm.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is None or not csv_path.exists():
        raise SystemExit(f"--resume: no checkpoint in {ckpt_dir} or no {csv_path}; start the "
                         "run without --resume")
    algo.restore_from_path(str(ckpt))
    with open(csv_path, newline="") as f:
        rows = [{k: float(v) if k not in ("iteration", "real_steps", "resumed") else int(v)
                 for k, v in r.items()} for r in csv.DictReader(f)]
    rows = [r for r in rows if r["iteration"] <= algo.iteration]
    print(f"resumed from {ckpt} (iteration {algo.iteration}, {len(rows)} rows kept)", flush=True)
    return rows


def report(rows, args, config, overrides, load_before, out_dir: Path, stem: str) -> str:
    """Write the CSV, the PNG and the BENCHMARKS.md section for the iterations so far."""
    tmp = out_dir / f"{stem}.csv.tmp"  # replaced in one step: a kill mid-write loses no row
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out_dir / f"{stem}.csv")
    png = plot(rows, out_dir / f"{stem}.png", config.model_env_id)

    # the first iteration fits on the random data only; report the steady state separately
    steady = rows[1:] or rows
    mean_total = float(np.mean([r["total_s"] for r in steady]))
    share = lambda k: float(np.mean([r[k] / r["total_s"] for r in steady]))  # noqa: E731
    table = markdown_table(
        ["iter", "real steps", "return (pre)", "return (adapted)", "total s", "sample s",
         "fit s", "meta s (imagine / optimise)", "eval s", "model epochs", "model val MSE",
         "imagined return (pre / adapted)", "policy std"],
        [[r["iteration"], r["real_steps"], f"{r['return_pre']:.1f}",
          f"{r['return_adapted']:.1f}", f"{r['total_s']:.1f}", f"{r['sample_real_s']:.1f}",
          f"{r['fit_models_s']:.1f}",
          f"{r['meta_update_s']:.1f} ({r['imagine_s']:.1f} / {r['optimize_s']:.1f})",
          f"{r['evaluate_real_s']:.1f}", f"{r['model_epochs']:.0f}",
          f"{r['model_val_loss']:.4f}",
          f"{r['imagined_pre']:.0f} / {r['imagined_adapted']:.0f}",
          f"{r['policy_std']:.2f}"] for r in rows],
    )
    # issue 12's targets: 100 iterations in <= 2 h, flat iteration time (last 10 <= 1.3x the
    # first 10 after the random phase), return >= 500 at 100k real steps
    wall = sum(r["total_s"] for r in rows)
    projected = rows[0]["total_s"] + mean_total * 99 if len(rows) < 100 else wall
    after = rows[1:]
    flat = (float(np.mean([r["total_s"] for r in after[-10:]]))
            / float(np.mean([r["total_s"] for r in after[:10]]))) if len(after) >= 20 else None
    at_100k = next((r for r in rows if r["real_steps"] >= 100_000), None)
    resumed = [r["iteration"] for r in rows if r.get("resumed")]
    body = "\n".join([
        *header_lines([config.learner_threads()], load_before),
        f"- Settings: the paper's (`tune_configs/{args.env}.py` PAPER) plus "
        f"{overrides}; {os.cpu_count()} CPUs for driver, learner and "
        f"{config.num_model_trainers} model-trainer actors",
        "",
        table,
        "",
        f"{len(rows)} iterations, {wall / 3600:.2f} h of iteration time "
        + ("(one uninterrupted run)" if not resumed else f"(resumed before iterations {resumed})")
        + f"; after the first, {mean_total:.0f} s per iteration on average; "
        f"100 iterations {'took' if len(rows) >= 100 else 'would take (projected)'} "
        f"{projected / 3600:.2f} h (target <= 2 h: "
        f"**{'met' if projected <= 7200 else 'MISSED'}**). "
        f"Shares of the iteration: sampling {share('sample_real_s'):.1%}, "
        f"model fit {share('fit_models_s'):.1%}, meta update {share('meta_update_s'):.1%}, "
        f"evaluation {share('evaluate_real_s'):.1%}.",
        "Flatness (mean of the last 10 iterations / first 10 after the random phase): "
        + (f"{flat:.2f}x (target <= 1.3x: **{'met' if flat <= 1.3 else 'MISSED'}**)."
           if flat is not None else "needs 21 iterations."),
        f"Return after {rows[-1]['real_steps']:,} real steps: {rows[-1]['return_pre']:.1f} "
        f"(pre-update), {rows[-1]['return_adapted']:.1f} (adapted); best pre-update return "
        f"{max(r['return_pre'] for r in rows):.1f}"
        + (f"; at {at_100k['real_steps']:,}: {at_100k['return_pre']:.1f} (target >= 500: "
           f"**{'met' if at_100k['return_pre'] >= 500 else 'not met'}**)." if at_100k else "."),
        "",
        f"![learning curve and phase times]({results_link(png)})",
    ])
    if not args.no_write:
        title = f"Per-iteration profile: {config.model_env_id}, paper settings"
        update_section(f"{stem.replace('_', '-')}-{out_dir.name}",
                       f"{title} ({out_dir.name})", body)
    return body


def compare(env: str) -> Path:
    """``iteration_<env id>_compare.png`` in today's folder: pre-update and adapted real
    returns of every saved run of ``env`` (one per run folder) against real steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import tune_configs

    env_id, _ = tune_configs.training_settings(env, "paper")
    paths = [d / f"iteration_{env_id}.csv" for d in all_run_dirs(SCRIPT)
             if (d / f"iteration_{env_id}.csv").exists()]
    if not paths:
        raise SystemExit(f"no {results_link(RESULTS / SCRIPT)}/*/iteration_{env_id}.csv yet; "
                         "run this script first")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        tag = path.parent.name  # the run folder
        x = [int(r["real_steps"]) for r in rows]
        a.plot(x, [float(r["return_pre"]) for r in rows], "o-", ms=3, label=tag)
        b.plot(x, [float(r["return_adapted"]) for r in rows], "s-", ms=3, label=tag)
    for ax, what in ((a, "pre-update policy"), (b, "adapted policies")):
        ax.axhline(520, color="gray", ls=":", label="legacy RLlib @100k (520)")
        ax.set_xlabel("real env steps")
        ax.set_title(f"{env_id}: {what}")
        ax.legend(fontsize=8)
    a.set_ylabel("real return (H=200)")
    fig.tight_layout()
    out_dir = RESULTS / SCRIPT / utc_date()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"iteration_{env_id}_compare.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot(rows, path: Path, env_id: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["real_steps"] for r in rows]
    a.plot(x, [r["return_pre"] for r in rows], "o-", label="pre-update policy")
    a.plot(x, [r["return_adapted"] for r in rows], "s--", label="adapted policies")
    a.plot(x, [r.get("imagined_pre", np.nan) for r in rows], ":", color="gray",
           label="imagined (model), pre-update")
    a.axhline(520, color="gray", ls=":", label="legacy RLlib @100k (520)")
    a.set_xlabel("real env steps")
    a.set_ylabel("return")
    a.set_title(f"MB-MPO {env_id} (H=200)")
    a.legend(fontsize=8)
    bottom = np.zeros(len(rows))
    for ph in ["sample_real_s", "fit_models_s", "meta_update_s", "evaluate_real_s"]:
        vals = np.array([r[ph] for r in rows])
        b.bar([r["iteration"] for r in rows], vals, bottom=bottom, label=ph[:-2])
        bottom += vals
    b.axhline(180, color="gray", ls=":", label="target 180 s")
    b.set_xlabel("iteration")
    b.set_ylabel("seconds")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
