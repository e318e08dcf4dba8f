"""Tune sweeps of MBMPO (``mbmpo-ray tune``): param spaces, per-trial resources, resume."""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

METRIC = "episode_return_mean"


def get_sweep(name: str) -> dict[str, Any]:
    """A sweep definition from ``tune_configs/sweeps.py`` (a copy)."""
    from tune_configs.sweeps import SWEEPS

    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {sorted(SWEEPS)}")
    return copy.deepcopy(SWEEPS[name])


def param_space(sweep: dict[str, Any], seeds: int | None = None):
    """The MBMPOConfig of a sweep with ``tune.grid_search`` over its grid and seeds.

    Settings tied to a swept one (``tied = {"num_tasks": {"ensemble_size": 4}}``) are expanded
    into joint grid points so every trial is valid (num_tasks = 4 x ensemble_size).
    """
    from ray import tune

    import tune_configs

    config = tune_configs.load_config(sweep["config"], sweep.get("variant", "default"))
    (key, values), = sweep["grid"].items()
    tied = sweep.get("tied", {})
    if tied:
        points = []
        for v in values:
            point = {key: v}
            for other, rule in tied.items():
                (src, factor), = rule.items()
                point[other] = factor * point[src]
            points.append(point)
        space = {"mbmpo_point": tune.grid_search(points)}
    else:
        space = {key: tune.grid_search(list(values))}
    space["seed"] = tune.grid_search(list(range(seeds or sweep.get("seeds", 1))))
    return config, space


def run_sweep(args: argparse.Namespace) -> int:
    """Run (or resume with ``--resume``) a sweep; print a results table and the best checkpoint."""
    # the classic reporter prints a compact table (the new one dumps the full config)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    import mbmpo_ray  # noqa: F401  (registers "MBMPO")

    sweep = get_sweep(args.sweep)
    if args.env:
        sweep["config"] = args.env
    if args.variant:
        sweep["variant"] = args.variant
    iterations = args.iterations or sweep["iterations"]
    storage = Path(args.storage or "runs/tune").resolve()
    name = args.name or f"mbmpo_{args.sweep}"

    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)

    exp_path = storage / name
    if args.resume and tune.Tuner.can_restore(str(exp_path)):
        print(f"resuming {exp_path}", flush=True)
        tuner = tune.Tuner.restore(str(exp_path), trainable="MBMPO", resume_errored=True)
    else:
        config, space = param_space(sweep, args.seeds)
        param = config.to_dict()
        param.update(space)
        scheduler = None
        if args.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=iterations,
                                      grace_period=max(1, iterations // 4))
        tuner = tune.Tuner(
            "MBMPO",
            param_space=param,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", scheduler=scheduler,
                max_concurrent_trials=args.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                stop={"training_iteration": iterations},
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=1, checkpoint_at_end=True, num_to_keep=2
                ),
                verbose=1,
                progress_reporter=tune.CLIReporter(
                    parameter_columns=[*sweep["grid"], "seed"],
                    metric_columns={"training_iteration": "iter",
                                    "num_real_steps_lifetime": "real steps",
                                    METRIC: "return"},
                    max_report_frequency=30,
                ),
            ),
        )
    results = tuner.fit()
    print_results(results, sweep)
    return 1 if results.errors else 0


def print_results(results, sweep: dict[str, Any]) -> None:
    """A table of every trial's swept settings and final returns, and the best checkpoint."""
    (key, _), = sweep["grid"].items()
    rows = []
    for r in results:
        cfg, m = r.config or {}, r.metrics or {}
        rows.append((cfg.get(key, (cfg.get("mbmpo_point") or {}).get(key)), cfg.get("seed"),
                     m.get("training_iteration"), m.get("num_real_steps_lifetime"),
                     m.get(METRIC), "error" if r.error else "ok"))
    print(f"\n{key:>14} {'seed':>5} {'iters':>6} {'real steps':>11} {'return':>9} status")
    for row in sorted(rows, key=lambda x: (str(x[0]), str(x[1]))):
        v, seed, it, steps, ret, status = row
        ret_s = f"{ret:9.1f}" if isinstance(ret, (int, float)) else f"{'-':>9}"
        print(f"{v!s:>14} {seed!s:>5} {it!s:>6} {steps!s:>11} {ret_s} {status}")
    try:
        best = results.get_best_result(metric=METRIC, mode="max")
        if best.checkpoint:
            print(f"\nbest checkpoint: {best.checkpoint.path}")
    except RuntimeError:
        pass
