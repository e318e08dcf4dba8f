"""Tune sweeps of MBMPO (``mbmpo-ray tune``): param spaces, per-trial resources, resume."""

from __future__ import annotations

import argparse
import copy
import logging
import math
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


def trainable_name(sweep: dict[str, Any]) -> str:
    """The Tune trainable of a sweep: "MBMPO", or "MBPO" for ``algo="mbpo"``."""
    return "MBPO" if sweep.get("algo", "mbmpo") == "mbpo" else "MBMPO"


def sweep_seeds(sweep: dict[str, Any], seeds: int | None = None) -> list[int]:
    """The seeds of a sweep: ``seeds`` (the CLI's ``--seeds N``: 0 .. N-1) if given, else the
    sweep's ``seeds``, a count N (0 .. N-1) or a list of seeds (a part of a longer sweep that
    runs some of its seeds, e.g. ``[1]``)."""
    n = seeds or sweep.get("seeds", 1)
    return list(range(n)) if isinstance(n, int) else [int(s) for s in n]


def param_space(sweep: dict[str, Any], seeds: int | None = None):
    """The MBMPOConfig of a sweep with ``tune.grid_search`` over its grid and seeds.

    Settings tied to a swept one (``tied = {"num_tasks": {"ensemble_size": 4}}``) are expanded
    into joint grid points so every trial is valid (num_tasks = 4 x ensemble_size).
    """
    from ray import tune

    import tune_configs

    config = tune_configs.load_config(sweep["config"], sweep.get("variant", "default"),
                                      algo=sweep.get("algo", "mbmpo"))
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
    space["seed"] = tune.grid_search(sweep_seeds(sweep, seeds))
    return config, space


def swept_columns(sweep: dict[str, Any]) -> dict[str, str]:
    """Tune reporter columns of the swept settings: ``lookup path -> name``. A grid of joint
    points (``mbmpo_point``, also a tied sweep's) is read from the point, which both the
    trial's config and its results (the algorithm config's ``mbmpo_point``) carry; the top
    level keeps the base config's value there."""
    (key, values), = sweep["grid"].items()
    if key == "mbmpo_point":
        names = dict.fromkeys(k for point in values for k in point)
    elif sweep.get("tied"):
        names = dict.fromkeys([key, *sweep["tied"]])
    else:
        return {key: key}
    return {f"mbmpo_point/{k}": k for k in names}


def prepare_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a sweep needs, checked before Ray starts: the sweep, its overrides, the
    counts, every grid point's config (validated) and a writable storage directory.

    Raises:
        ValueError: one line per problem.
    """
    for option in ("seeds", "iterations", "max_concurrent"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be an integer >= 1, "
                             f"got {value}")
    sweep = get_sweep(args.sweep)
    if args.env:
        sweep["config"] = args.env
    if args.variant:
        sweep["variant"] = args.variant
    config, space = param_space(sweep, args.seeds)
    (key, values), = sweep["grid"].items()
    problems: list[str] = []
    points = []
    for value in values:  # every trial's config, before Ray starts
        point = value if key == "mbmpo_point" else {key: value}
        try:
            points.append(config.copy(copy_frozen=False).update_from_dict(point))
            points[-1].validate()
        except ValueError as e:
            problems.append(f"{point}: " + " ".join(str(e).split()))
    if problems:
        raise ValueError("invalid sweep settings: " + "; ".join(problems))
    storage = Path(args.storage or "runs/tune").resolve()
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to --storage {storage}: {e.strerror or e}") from None
    return {"sweep": sweep, "iterations": args.iterations or sweep["iterations"],
            "storage": storage, "name": args.name or f"mbmpo_{args.sweep}",
            "config": config, "space": space, "points": points}


def fit_trials_to_cluster(plan: dict[str, Any], cluster_cpus: float) -> str | None:
    """Let one trial fit a cluster of ``cluster_cpus`` CPUs by lowering the CPUs its model
    trainers reserve (``num_cpus_per_model_trainer``, a scheduling share: the trainers' threads
    do not change). E.g. HalfCheetah's PAPER reserves 1 + 5 x 0.4 = 3 CPUs for a run of its
    own on two cores; as a Tune trial it would wait for a third CPU forever. Changes
    ``plan["config"]``; returns a line saying so, or None when every trial fits as it is.

    Raises:
        ValueError: a trial needs more CPUs than the cluster has even without its model
            trainers' share.
    """
    from ray.tune.registry import get_trainable_cls

    trainable = get_trainable_cls(trainable_name(plan["sweep"]))
    share, largest = float("inf"), 0.0
    for cfg in plan["points"]:
        need = trainable.default_resource_request(cfg).required_resources.get("CPU", 0.0)
        trainers = cfg.num_model_trainers * cfg.num_cpus_per_model_trainer
        if need - trainers > cluster_cpus + 1e-6:
            raise ValueError(
                f"a trial of this sweep needs {need:g} CPUs ({need - trainers:g} without its "
                f"model trainers) but the Ray cluster has {cluster_cpus:g}; run it on a larger "
                "cluster (--address) or pick a lighter variant (--variant)")
        largest = max(largest, need)
        if trainers:
            share = min(share, (cluster_cpus - (need - trainers)) / cfg.num_model_trainers)
    if largest <= cluster_cpus + 1e-6:
        return None
    old = plan["config"].num_cpus_per_model_trainer
    share = math.floor(share * 100) / 100  # Ray's fractional CPUs; round down to fit
    plan["config"].update_from_dict({"num_cpus_per_model_trainer": share})
    return (f"note: a trial needs {largest:g} CPUs and this Ray cluster has {cluster_cpus:g}: "
            f"num_cpus_per_model_trainer {old:g} -> {share:g} so trials can start")


def run_sweep(args: argparse.Namespace, plan: dict[str, Any] | None = None) -> int:
    """Run (or resume with ``--resume``) a sweep; print a results table and the best checkpoint.

    Returns 0 if every trial finished, 1 if one failed, 130 if the sweep was interrupted
    (Ctrl-C) before every trial finished (``--resume`` continues it).
    """
    # the classic reporter prints a compact table (the new one dumps the full config)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    import mbmpo_ray  # noqa: F401  (registers "MBMPO")

    plan = plan or prepare_sweep(args)
    sweep, iterations = plan["sweep"], plan["iterations"]

    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    if not args.address:  # a local cluster does not grow: a trial larger than it waits forever
        total = ray.cluster_resources().get("CPU", 1.0)
        note = fit_trials_to_cluster(plan, total)
        if note:
            print(note, flush=True)
        busy = total - ray.available_resources().get("CPU", 0.0)
        if busy > 1e-6:
            print(f"note: {busy:g} of this Ray cluster's {total:g} CPUs are held by other Ray "
                  "work (another driver, or actors still shutting down); trials that need "
                  "them wait until they are free", flush=True)

    tuner = _make_tuner(args, plan)
    watch = _InterruptWatch()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addHandler(watch)
    try:
        results = tuner.fit()
    except ValueError as e:
        if "__ref_ph" not in str(e):
            raise
        # Tune's placeholders of the stored trial configs no longer resolve: the settings
        # changed since the experiment started (e.g. a newer mbmpo-ray added some)
        raise ValueError(
            "could not resume: the experiment was started with other settings (an older "
            "mbmpo-ray?); run the sweep as a new experiment with --name NEW, or move "
            f"{plan['storage'] / plan['name']} aside (its finished trials stay there)") from None
    finally:
        tune_logger.removeHandler(watch)
    unfinished = print_results(results, sweep, iterations, interrupted=watch.seen,
                               early_stopping=args.scheduler == "asha")
    if watch.seen or unfinished:
        print(f"\n{'interrupted: ' if watch.seen else ''}{unfinished} trial(s) unfinished; "
              f"`mbmpo-ray tune {args.sweep} --resume` (same --storage/--name) continues the "
              "sweep", flush=True)
        return 130 if watch.seen else 1
    return 1 if results.errors else 0


def _make_tuner(args: argparse.Namespace, plan: dict[str, Any]):
    """A Tuner restoring the experiment (``--resume``, if it exists) or starting it."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    sweep, iterations = plan["sweep"], plan["iterations"]
    storage, name = plan["storage"], plan["name"]
    exp_path = storage / name
    if args.resume and tune.Tuner.can_restore(str(exp_path)):
        print(f"resuming {exp_path}", flush=True)
        return tune.Tuner.restore(str(exp_path), trainable=trainable_name(sweep),
                                  resume_errored=True)
    param = plan["config"].to_dict()
    param.update(plan["space"])
    scheduler = None
    if args.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=iterations,
                                  grace_period=max(1, iterations // 4))
    return tune.Tuner(
        trainable_name(sweep),
        param_space=param,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                    max_concurrent_trials=args.max_concurrent),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            stop={"training_iteration": iterations},
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=1, checkpoint_at_end=True, num_to_keep=2),
            verbose=1,
            progress_reporter=tune.CLIReporter(
                parameter_columns={**swept_columns(sweep), "seed": "seed"},
                metric_columns={"training_iteration": "iter",
                                "num_real_steps_lifetime": "real steps", METRIC: "return"},
                max_report_frequency=30,
            ),
        ),
    )


class _InterruptWatch(logging.Handler):
    """Notices Tune's "Experiment has been interrupted" (Ctrl-C): Tune then marks the trials
    it stopped as terminated, like finished ones."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if "has been interrupted" in record.getMessage():
            self.seen = True


def print_results(results, sweep: dict[str, Any], iterations: int | None = None, *,
                  interrupted: bool = False, early_stopping: bool = False) -> int:
    """A table of every trial's swept settings and final returns, and the best checkpoint.

    A trial's status is ``ok`` (ran its ``iterations``), ``error``, ``stopped early`` (by
    ASHA) or ``unfinished`` (fewer iterations: the sweep was interrupted). Returns the number
    of unfinished trials.
    """
    (key, _), = sweep["grid"].items()
    iterations = iterations or sweep.get("iterations")
    rows = []
    unfinished = 0
    for r in results:
        cfg, m = r.config or {}, r.metrics or {}
        done_iters = m.get("training_iteration") or 0
        if r.error:
            status = "error"
        elif iterations is None or done_iters >= iterations:
            status = "ok"
        elif early_stopping and done_iters > 0 and not interrupted:
            status = "stopped early"
        else:
            status = "unfinished"
            unfinished += 1
        point = cfg.get("mbmpo_point") or {}
        value = point if key == "mbmpo_point" else point.get(key, cfg.get(key))
        rows.append((value, cfg.get("seed"),
                     m.get("training_iteration"), m.get("num_real_steps_lifetime"),
                     m.get(METRIC), status))
    print(f"\n{key:>14} {'seed':>5} {'iters':>6} {'real steps':>11} {'return':>9} status")
    for row in sorted(rows, key=lambda x: (str(x[0]), str(x[1]))):
        v, seed, it, steps, ret, status = row
        ret_s = f"{ret:9.1f}" if isinstance(ret, (int, float)) else f"{'-':>9}"
        print(f"{v!s:>14} {seed!s:>5} {it!s:>6} {steps!s:>11} {ret_s} {status}")
    try:
        best = results.get_best_result(metric=METRIC, mode="max")
        if best.checkpoint:
            print(f"\nbest checkpoint: {best.checkpoint.path}")
    except (RuntimeError, ValueError):
        pass
    return unfinished
