"""``mbmpo-ray``: train, tune, evaluate and plot MB-MPO runs.

    mbmpo-ray train --config pendulum --output runs/pendulum
    mbmpo-ray train --env HalfCheetah-v5 --set num_model_trainers=2 --stop-timesteps 100000
    mbmpo-ray train --algo mbpo --config hopper --variant paper --output runs/mbpo_hopper
    mbmpo-ray tune alpha --address auto
    mbmpo-ray evaluate runs/pendulum/checkpoint --episodes 10
    mbmpo-ray plot runs/pendulum runs/other --out curves.png
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """A user error: printed as a one-line message with the usage, never a traceback."""


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = raw
        out[key.strip()] = value
    return out


# RLlib settings a user may try with --set, and the option that sets them
_OPTION_FOR = {"num_env_runners": "--num-env-runners", "num_learners": "--num-learners",
               "seed": "--seed"}


def _unknown_keys_message(unknown: list[str], valid, algo: str = "mbmpo") -> str:
    import difflib

    hints = []
    for key in unknown:
        if key in _OPTION_FOR:
            hints.append(f"{key}: use {_OPTION_FOR[key]}")
        elif close := difflib.get_close_matches(key, list(valid), n=1):
            hints.append(f"{key}: did you mean {close[0]}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return (f"unknown --set key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}; "
            f"`mbmpo-ray train{' --algo mbpo' if algo == 'mbpo' else ''} --list-settings` "
            "lists them all")


def _problems(e: Exception) -> str:
    """A config's ValueError as one line per problem (without the 'N invalid settings:'
    header; a problem's continuation lines joined onto it)."""
    problems: list[str] = []
    for ln in str(e).splitlines():
        if ln.strip().startswith("- "):
            problems.append(ln.strip()[2:])
        elif problems and ln.strip():
            problems[-1] += " " + ln.strip()
    return "\n".join(problems) if problems else " ".join(str(e).split())


def _check_counts(args: argparse.Namespace, minimum: dict[str, int]) -> None:
    """Integer options that must be at least some value (None: not given, fine)."""
    for name, low in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            option = "--" + name.replace("_", "-")
            raise CLIError(f"{option} must be an integer >= {low}, got {value}")


def _algo(args: argparse.Namespace) -> str:
    """--algo, mbmpo when not given (and not restated from a run's run.json)."""
    return getattr(args, "algo", None) or "mbmpo"


def _setting_docs(algo: str) -> dict[str, str]:
    if algo == "mbpo":
        from mbmpo_ray.algorithm.mbpo.config import setting_docs
    else:
        from mbmpo_ray.algorithm.mbmpo.config import setting_docs
    return setting_docs()


def _has_model_functions(env_id: str) -> bool:
    from mbmpo_ray.envs import UnsupportedEnvError, get_env_spec

    try:
        get_env_spec(env_id)
    except UnsupportedEnvError:
        return False
    return True


def _no_model_functions(env_id: str, algo: str) -> str:
    """Why ``--env ENV_ID`` (no config of its own, no model functions) cannot be trained, and
    how to make it trainable."""
    import gymnasium

    from mbmpo_ray.envs import SUPPORTED_ENV_IDS

    what = ("has no model reward/termination functions" if env_id in gymnasium.registry
            else "is not a gymnasium env id, and has no model reward/termination functions")
    return (f"--env {env_id} {what}, which {'MBPO' if algo == 'mbpo' else 'MB-MPO'} needs "
            f"(its models predict the next observation only); envs that have them: "
            f"{', '.join(sorted(SUPPORTED_ENV_IDS))}. For another env write a config file that "
            "calls mbmpo_ray.envs.register_model_functions(ENV, reward_fn, termination_fn) "
            "and defines ENV and PAPER (see tune_configs/pendulum.py), then pass "
            "--config FILE.py")


def build_config(args: argparse.Namespace):
    """MBMPOConfig (``--algo mbpo``: MBPOConfig) from --config/--env, --variant, --set, --seed
    and --num-env-runners, validated (every problem reported, one line each) before anything
    starts."""
    import tune_configs

    _check_counts(args, {"stop_timesteps": 1, "iterations": 1, "num_learners": 0})
    algo = _algo(args)
    overrides = _parse_set(args.set)
    valid = _setting_docs(algo)
    unknown = sorted(k for k in overrides if k not in valid)
    if unknown:
        raise CLIError(_unknown_keys_message(unknown, valid, algo))
    name = args.config or args.env
    if name is None:
        raise CLIError("give --config NAME|PATH or --env ENV_ID")
    try:
        config = tune_configs.load_config(name, args.variant, algo=algo, **overrides)
        if args.config and args.env:
            config.environment(args.env)
        stop = (args.stop_timesteps if args.stop_timesteps is not None
                else tune_configs.stop_timesteps(name, args.variant, algo=algo))
    except (ValueError, FileNotFoundError, TypeError) as e:
        if args.env and not args.config and not _has_model_functions(args.env):
            raise CLIError(_no_model_functions(args.env, algo)) from None
        raise CLIError(_problems(e)) from None
    except Exception as e:  # a config file that does not run (syntax error, missing ENV...)
        raise CLIError(f"cannot load config {name!r}: {type(e).__name__}: {e}") from None
    if args.seed is not None:
        config.debugging(seed=args.seed)
    if args.num_env_runners is not None:
        config.env_runners(num_env_runners=args.num_env_runners)
    if getattr(args, "num_learners", None) is not None:
        config.learners(num_learners=args.num_learners)
    try:
        config.validate()
    except (ValueError, TypeError) as e:
        raise CLIError(_problems(e)) from None
    return config, stop


def _check_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail at once, naming it, when nothing listens at ``--address`` HOST:PORT (or
    ray://HOST:PORT): ``ray.init`` itself retries for minutes."""
    import socket

    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise CLIError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = (f"no answer within {timeout_s:g} s" if isinstance(e, TimeoutError)
               else e.strerror or type(e).__name__)
        raise CLIError(f"cannot reach a Ray cluster at --address {address} ({why}); start "
                       "one first (`ray start --head`, `cluster/local.sh start`) or check the "
                       "address") from None


def _init_ray(address: str | None, verbose: bool = False) -> None:
    """Local Ray (no dashboard) or a connection to ``address`` (checked first: a clear error
    instead of minutes of retries); quiet unless ``verbose``."""
    import ray

    from mbmpo_ray.reporting import quiet_ray

    if ray.is_initialized():
        return
    _check_address(address)
    kwargs = quiet_ray(verbose)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **{"log_to_driver": False, **kwargs})


def list_settings(algo: str = "mbmpo") -> str:
    """Every ``--set`` key of ``algo`` with its default and one-line doc."""
    if algo == "mbpo":
        from mbmpo_ray.algorithm.mbpo.config import MBPOConfig as Config
    else:
        from mbmpo_ray.algorithm.mbmpo.config import MBMPOConfig as Config

    defaults, docs = Config(), _setting_docs(algo)
    width = max(map(len, docs))
    return "\n".join(f"{name:<{width}}  {getattr(defaults, name)!r:<12}  {doc}"
                     for name, doc in sorted(docs.items()))


# how a run was started (run.json), restated by --resume unless given again
_RUN_ARGS = ("algo", "config", "env", "variant", "set", "seed", "num_env_runners",
             "num_learners", "stop_timesteps", "iterations")


def _output_dir(args: argparse.Namespace, env_id: str | None = None) -> Path:
    """The run directory as an absolute path (RLlib restores from absolute paths only):
    --output, else ``runs/<env id>`` of ``env_id`` or of --config/--env."""
    import tune_configs

    if args.output is not None:
        return Path(args.output).expanduser().absolute()
    if env_id is None:
        name = args.config or args.env
        if name is None:
            raise CLIError("--resume needs --output DIR, the run directory to continue (or "
                           "the run's --config/--env, whose runs/<env id> it continues)")
        try:
            env_id = (args.env if args.env and not args.config else
                      tune_configs.training_settings(name, args.variant, _algo(args))[0])
        except (ValueError, FileNotFoundError, TypeError) as e:
            raise CLIError(_problems(e)) from None
        except Exception as e:  # a config file that does not run
            raise CLIError(f"cannot load config {name!r}: {type(e).__name__}: {e}") from None
    return Path("runs", env_id).absolute()


def _restate_run(args: argparse.Namespace, out: Path) -> Path:
    """The checkpoint ``--resume`` continues from in ``out``; the run's options (run.json)
    restated in ``args`` where not given again."""
    from mbmpo_ray.algorithm import rundir

    ckpt = rundir.resume_checkpoint(out)
    info = rundir.read_run_info(out)
    run_algo = info.get("algo") or "mbmpo"  # runs from before --algo are MB-MPO's
    if getattr(args, "algo", None) not in (None, run_algo):
        raise CLIError(f"{out} is a {run_algo} run: resume it with --algo {run_algo} (or "
                       "without --algo)")
    args.algo = run_algo
    restate = args.config is None and args.env is None
    for key in _RUN_ARGS:
        if key in info and (getattr(args, key) is None or
                            (restate and key in ("variant", "set"))):
            setattr(args, key, info[key])
    return ckpt


def _prepare_run(args: argparse.Namespace):
    """Validated config, stop, run directory (absolute) and the checkpoint to resume from
    (None: a new run), all before Ray starts. A new run refuses a directory that holds a run
    unless --overwrite; --resume restates the run's options from its run.json."""
    from mbmpo_ray.algorithm import rundir
    from mbmpo_ray.algorithm.checkpoints import checkpoint_algorithm, read_manifest

    _check_counts(args, {"checkpoint_every": 0, "keep_checkpoints": 1})
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        raise CLIError("--resume continues the run in --output, --overwrite starts it over: "
                       "give one of them")
    if args.output is not None and not args.output.strip():
        raise CLIError("--output is empty: give the run directory, or leave --output out "
                       "for runs/<env id>")
    ckpt = out = None
    try:
        if resume:
            out = _output_dir(args)
            ckpt = _restate_run(args, out)
            written_by = checkpoint_algorithm(ckpt)
            if written_by not in (None, args.algo):
                raise CLIError(f"{ckpt} was written by {written_by.upper()}, but the run says "
                               f"{args.algo}: resume it with --algo {written_by}")
    except rundir.RunDirError as e:
        raise CLIError(str(e)) from None
    config, stop = build_config(args)
    if args.iterations is None and stop is None:
        raise CLIError("give --stop-timesteps N or --iterations N")
    if args.address is None and not os.environ.get("RAY_ADDRESS"):
        _check_cpus(config, os.cpu_count() or 1, "this machine", args)
    _check_address(args.address)  # before anything is written
    out = out or _output_dir(args, config.model_env_id)
    try:
        if ckpt is None:
            rundir.prepare_new_run(out, overwrite=overwrite)
            args.algo = _algo(args)
            rundir.write_run_info(out, {key: getattr(args, key, None) for key in _RUN_ARGS})
        else:
            rundir.trim_progress(out, (read_manifest(ckpt) or {}).get("iteration", 0))
    except rundir.RunDirError as e:
        raise CLIError(str(e)) from None
    return config, stop, out, ckpt


def _check_cpus(config, have: float, where: str, args: argparse.Namespace, *,
                cluster: bool = False) -> None:
    """Refuse a run whose Ray actors (env runners, remote learners, model trainers; outside
    Tune the driver reserves no CPU) need more CPUs than ``have``: Ray would wait for them
    forever. Says what to lower."""
    if getattr(args, "no_cpu_check", False):
        return
    bundles = config.algo_class.default_resource_request(config).bundles
    need = sum(b.get("CPU", 0.0) for b in bundles[1:])  # bundles[0]: the driver
    if need <= have + 1e-9:
        return
    runners, per_runner = config.num_env_runners, config.num_cpus_per_env_runner
    trainers = getattr(config, "num_model_trainers", 0)
    per_trainer = getattr(config, "num_cpus_per_model_trainer", 0.0)
    parts, lower = [], []
    if runners and per_runner:
        parts.append(f"{runners} env runners x {per_runner:g} CPU")
        fit = int((have - (need - runners * per_runner)) // per_runner)
        lower.append(f"--num-env-runners (to {fit} or less)" if fit >= 0 else
                     "--num-env-runners")
    if trainers and per_trainer:
        parts.append(f"{trainers} model trainers x {per_trainer:g} CPU")
        lower.append("--set num_model_trainers=N or --set num_cpus_per_model_trainer=X")
    if need - runners * per_runner - trainers * per_trainer > 1e-9:
        parts.append(f"{config.num_learners} learners")
        lower.append("--num-learners")
    grow = "; on a cluster that adds nodes on demand, pass --no-cpu-check" if cluster else ""
    raise CLIError(f"the run's Ray actors need {need:g} CPUs ({' + '.join(parts)}) but "
                   f"{where} has {have:g}: lower {' or '.join(lower)}{grow}")


def _finished(ckpt, stop: int | None, iterations: int | None) -> str | None:
    """Why a run resumed from ``ckpt`` has nothing left to do (None: it has)."""
    from mbmpo_ray.algorithm.checkpoints import read_manifest

    info = read_manifest(ckpt) or {}
    it, steps = info.get("iteration", 0), info.get("num_real_steps_lifetime", 0)
    if iterations is not None and it >= iterations:
        return f"iteration {it} of {iterations}"
    if stop is not None and steps >= stop:
        return f"{steps:,} of {stop:,} real steps"
    return None


def _build_or_restore(config, ckpt):
    """``config.build_algo()``, restored from ``ckpt`` when resuming."""
    from mbmpo_ray.algorithm.checkpoints import CheckpointError

    algo = config.build_algo()
    if ckpt is not None:
        try:
            algo.restore_from_path(str(ckpt))
        except CheckpointError as e:  # corrupted, or another algorithm's: one clear line
            algo.stop()
            raise CLIError(str(e)) from None
        except BaseException:
            algo.stop()
            raise
    return algo


def _save(algo, out: Path, args: argparse.Namespace) -> None:
    """An atomic checkpoint into out/checkpoints/ (keeping the last --keep-checkpoints)."""
    from mbmpo_ray.algorithm.checkpoints import save_algorithm

    save_algorithm(algo, out, keep=getattr(args, "keep_checkpoints", 2))


def _train_until_done(algo, reporter, args, stop, out, run: dict) -> None:
    """``train()`` until the stop condition, checkpointing every ``--checkpoint-every``
    iterations. Keeps ``run["status"]`` and ``run["mid_iteration"]`` (inside ``train()``: an
    interrupted ``train()`` leaves no state worth a checkpoint) current for the caller."""
    try:
        while True:
            run["mid_iteration"] = True
            result = algo.train()
            run["mid_iteration"] = False
            reporter.record(result)
            it = result["training_iteration"]
            steps = result.get("num_real_steps_lifetime",
                               result.get("num_env_steps_sampled_lifetime", 0))
            done = (args.iterations is not None and it >= args.iterations) or (
                stop is not None and steps >= stop)
            if args.checkpoint_every and it % args.checkpoint_every == 0:
                _save(algo, out, args)
            if done:
                run["status"] = "finished"
                return
    except KeyboardInterrupt:
        run["status"] = "interrupted"
        reporter.message("interrupted: saving a checkpoint and the plot")


def cmd_train(args: argparse.Namespace) -> int:
    """Train until ``--stop-timesteps`` real steps (or ``--iterations``)."""
    if args.list_settings:
        print(list_settings(_algo(args)))
        return 0
    config, stop, out, resume_from = _prepare_run(args)
    if resume_from is not None and (why := _finished(resume_from, stop, args.iterations)):
        print(f"{out} is finished ({why}); raise --iterations or --stop-timesteps to go on")
        return 0
    from mbmpo_ray.reporting import TrainingReporter, run_banner

    algo_name = _algo(args)
    title = f"{'MBPO' if algo_name == 'mbpo' else 'MB-MPO'} on {config.model_env_id}"
    reporter = TrainingReporter(
        out, stop_steps=stop, stop_iterations=args.iterations,
        steps_per_iter=config.real_steps_per_iter, plain=args.plain, title=title,
        append=bool(getattr(args, "resume", False)), algo=algo_name)
    reporter.start(run_banner(config, stop, args.iterations, out))
    try:
        reporter.status("starting Ray")
        _init_ray(args.address, args.verbose)
        import ray

        _check_cpus(config, ray.cluster_resources().get("CPU", 0.0),
                    f"the Ray cluster at {args.address}" if args.address else "the local Ray",
                    args, cluster=bool(args.address))
        reporter.status("building the algorithm")
        algo = _build_or_restore(config, resume_from)
        if resume_from is not None:
            reporter.message(f"resuming from {resume_from} (iteration {algo.iteration})")
        reporter.status(f"iteration {algo.iteration + 1}")
    except BaseException:
        reporter.close()
        raise
    ckpt = out / "checkpoint"
    run = {"status": "stopped by an error", "mid_iteration": False}
    try:
        _train_until_done(algo, reporter, args, stop, out, run)
    finally:
        try:
            try:
                if run["mid_iteration"]:
                    from mbmpo_ray.algorithm.checkpoints import latest_checkpoint

                    last = latest_checkpoint(out)
                    reporter.message(f"the last complete checkpoint is {last}" if last else
                                     "stopped before the first checkpoint")
                else:
                    _save(algo, out, args)
            finally:
                algo.stop()
        finally:
            reporter.finish(run["status"], files={
                "checkpoint": f"{ckpt}/   (mbmpo-ray evaluate {ckpt})"})
    if run["status"] == "interrupted":  # not a finished run: say so in the exit status
        print("mbmpo-ray train: interrupted (continue with --resume)", file=sys.stderr)
        return 130
    return 0


def record_video(algo, path: Path, render_mode: str, episodes: int = 1) -> int:
    """Render ``episodes`` real episodes of the pre-update policy (MBPO: the SAC policy; mean
    action) to a video.

    ``.gif`` needs only imageio (installed with gymnasium); ``.mp4`` needs the ``video`` extra
    (``pip install 'mbmpo-ray[video]'``, imageio-ffmpeg). Returns the number of frames.
    """
    import numpy as np

    from mbmpo_ray.envs import make_env

    if render_mode != "rgb_array":
        raise CLIError(f"--render supports 'rgb_array' only, got {render_mode!r}")
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise CLIError("--video needs imageio: pip install 'mbmpo-ray[video]'") from None
    if path.suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise CLIError("an .mp4 video needs imageio-ffmpeg: pip install 'mbmpo-ray[video]' "
                           "(or write a .gif)") from None
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering
    cfg = algo.config
    def act(obs):  # the policy's env-space mean action (MB-MPO: the pre-update policy)
        return algo.policy_action(np.asarray(obs, dtype=np.float32), explore=False)

    env = make_env(cfg.model_env_id, horizon=cfg.horizon, render_mode=render_mode)
    low, high = env.action_space.low, env.action_space.high
    frames = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=ep)
            frames.append(env.render())
            done = False
            while not done:
                obs, _, term, trunc, _ = env.step(np.clip(act(obs), low, high))
                frames.append(env.render())
                done = term or trunc
    except Exception as e:  # no OpenGL / display: say so instead of a traceback
        raise CLIError(f"rendering {cfg.model_env_id} failed ({type(e).__name__}: {e}); "
                       "for MuJoCo envs set MUJOCO_GL=egl or osmesa") from None
    finally:
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = int(env.metadata.get("render_fps", 30))
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps)
    return len(frames)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Load a checkpoint and report real-env returns of the pre-update and adapted policies."""
    from mbmpo_ray.algorithm.checkpoints import CheckpointError, resolve_checkpoint

    _check_counts(args, {"episodes": 1})
    if args.video and Path(args.video).suffix not in (".gif", ".mp4"):
        raise CLIError(f"--video writes a .gif or .mp4 file, got {args.video!r}")
    if args.video and args.render != "rgb_array":
        raise CLIError(f"--render supports 'rgb_array' only, got {args.render!r}")
    path = Path(args.checkpoint)
    try:  # a checkpoint, or a run directory (its newest complete checkpoint)
        ckpt = resolve_checkpoint(path).absolute()  # RLlib loads from absolute paths only
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    _init_ray(args.address, args.verbose)
    from ray.rllib.algorithms.algorithm import Algorithm

    import mbmpo_ray  # noqa: F401  (registers MBMPO)

    try:
        algo = Algorithm.from_checkpoint(str(ckpt))
    except Exception as e:  # torn or foreign files that passed the checks above
        raise CLIError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from None
    try:
        res = algo.evaluate(num_episodes=args.episodes,
                            explore=False if args.mean_action else None)
        mbpo = algo.ALGO_NAME == "mbpo"
        iters, steps = algo.iteration, algo.counters["real_steps"]
        env_id, K = algo.config.model_env_id, algo.config.ensemble_size
        # MBPO evaluates as its checkpoint's eval_explore says (default: the mean action)
        explore = res.get("explore", getattr(algo.config, "eval_explore", False))
        if args.video:
            n = record_video(algo, Path(args.video), args.render)
            print(f"video: {args.video} ({n} frames, mean action of the "
                  f"{'SAC' if mbpo else 'pre-update'} policy)")
    finally:
        algo.stop()
    mode = ("sampled from the Gaussian policy, as in training" if explore
            else "the policy's mean action" + (" (--mean-action)" if args.mean_action else ""))
    print(f"{path}: {env_id} after {iters} iterations, {int(steps):,} real steps"
          + (" (MBPO)" if mbpo else ""))
    print(f"actions: {mode}; real-env returns:")
    label = "policy:" if mbpo else "pre-update policy:"
    print(f"{label} mean return {_spread(res['episode_returns'])}")
    if "post_adaptation_episode_returns" in res:
        print(f"adapted policies:  mean return {_spread(res['post_adaptation_episode_returns'])}"
              f"\n                   (theta after one inner step on each of the {K} models; "
              "episodes spread over them)")
    return 0


def _spread(returns: list[float]) -> str:
    """``mean ± std over N episodes (min .., max ..)``."""
    import numpy as np

    r = np.asarray(returns, dtype=float)
    if len(r) == 1:
        return f"{r[0]:.1f} over 1 episode"
    return (f"{r.mean():.1f} ± {r.std():.1f} over {len(r)} episodes "
            f"(min {r.min():.1f}, max {r.max():.1f})")


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot learning curves of one or more run directories (``train`` runs or Tune trials,
    of either algorithm) into one PNG; a malformed progress.csv is refused with one line."""
    from mbmpo_ray.reporting import plot_runs

    try:
        png = plot_runs(args.runs, args.out)
    except (OSError, ValueError) as e:  # FileNotFoundError is an OSError
        raise CLIError(str(e)) from None
    n = len(args.runs)
    print(f"learning curve{'s' if n > 1 else ''} of {n} run{'s' if n > 1 else ''}: {png}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run (or resume) a Tune sweep from ``tune_configs/sweeps.py``."""
    from mbmpo_ray.tuning import prepare_sweep, run_sweep

    try:  # every check before Ray starts
        plan = prepare_sweep(args)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(_problems(e)) from None
    _init_ray(args.address, args.verbose)
    return run_sweep(args, plan)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help; options whose default is "not given" (None,
    a flag's False) say in their help what happens then."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description,
                          formatter_class=_HelpFormatter)


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join: auto (the local cluster's head), "
                        "ray://host:10001 (default: start a local Ray for this command)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's start-up messages and the workers' output "
                        "(default: hidden)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME|PATH",
                   help="config module in tune_configs/ (pendulum, halfcheetah, hopper, "
                        "...) or a .py file (default: the module of --env)")
    p.add_argument("--variant", default="default",
                   help="config variant: default, paper or smoke; with --algo mbpo "
                        "also mbrl_lib for halfcheetah, hopper and walker2d (default: "
                        "default, which is paper where a config has no DEFAULT)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training setting, repeatable, e.g. --set "
                        "inner_lr=0.005 (default: the config's; --list-settings shows "
                        "every key and its default)")
    p.add_argument("--seed", type=int,
                   help="random seed of the run (default: the config's, 0)")
    p.add_argument("--num-env-runners", type=int, metavar="N",
                   help="Ray actors sampling the real env, 0 samples on the driver "
                        "(default: the config's, 0)")
    p.add_argument("--num-learners", type=int, metavar="N",
                   help="Learner actors of the policy update: 0 updates on the driver, N > 1 "
                        "splits it (MB-MPO: the meta step's tasks; MBPO: each SAC batch, "
                        "train_batch_size_per_learner rows each) with torch.distributed "
                        "(default: the config's, 0)")
    _add_ray_args(p)


def _train_parser(sub) -> None:
    """The ``train`` command's options."""
    p = _add_command(sub, "train", "train MB-MPO (or MBPO) with a live progress display",
                   "Train MB-MPO (--algo mbpo: MBPO): one line per iteration on the screen, "
                   "progress.csv,\nTensorBoard events, checkpoints and learning_curve.png in "
                   "--output.")
    p.add_argument("--algo", choices=["mbmpo", "mbpo"], default=None,
                   help="algorithm: mbmpo (MB-MPO) or mbpo (MBPO; configs from "
                        "tune_configs/mbpo_<name>.py) (default: mbmpo; with --resume: the "
                        "run's)")
    p.add_argument("--env", metavar="ENV_ID",
                   help="gymnasium env id, e.g. HalfCheetah-v5 (default: the --config's env; "
                        "with --config: run that config on this env)")
    _add_run_args(p)
    p.add_argument("--stop-timesteps", type=int, metavar="N",
                   help="stop after N real env steps (default: the config variant's, e.g. "
                        "10,000 for pendulum)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="stop after N iterations (default: no limit; whichever stop comes "
                        "first)")
    p.add_argument("--output", metavar="DIR",
                   help="run directory (default: runs/<env id>)")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="save a checkpoint every N iterations, 0: only at the end")
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="N",
                   help="complete checkpoints kept in DIR/checkpoints/ (each written to a "
                        "temporary directory and renamed into place, so a kill at any moment "
                        "leaves one)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output (default: runs/<env id> of --config "
                        "or --env) from its newest complete checkpoint "
                        "(progress.csv appended; the run's options are restated from its "
                        "run.json unless given again)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --output that already holds a run (default: "
                        "refuse)")
    p.add_argument("--plain", action="store_true", default=None,
                   help="plain progress lines instead of the live display (default: plain "
                        "when the output is not a terminal)")
    p.add_argument("--list-settings", action="store_true",
                   help="print every --set key with its default and doc, then exit")
    p.add_argument("--no-cpu-check", action="store_true",
                   help="start even if the Ray cluster has fewer CPUs than the run's actors "
                        "need, e.g. on a cluster that adds nodes on demand (default: refuse, "
                        "saying what to lower)")
    p.set_defaults(func=cmd_train)


def _tune_parser(sub) -> None:
    """The ``tune`` command's options."""
    p = _add_command(sub, "tune", "run or resume a Tune sweep from tune_configs/sweeps.py",
                   "Run a sweep (grid over a paper knob x seeds) with Ray Tune; print a "
                   "results table\nand the best checkpoint.")
    from tune_configs.sweeps import SWEEPS  # plain dicts: cheap to import

    p.add_argument("sweep", help="sweep name (tune_configs/sweeps.py): " + ", ".join(SWEEPS))
    p.add_argument("--env", metavar="CONFIG",
                   help="run the sweep on this env config, e.g. halfcheetah (default: the "
                        "sweep's)")
    p.add_argument("--variant", default=None,
                   help="config variant of the trials (default: the sweep's)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds per setting (default: the sweep's, 3 for alpha, "
                        "ensemble_size and horizon)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="iterations per trial (default: the sweep's, 25 for alpha, "
                        "ensemble_size and horizon)")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                   help="trial scheduler: fifo runs every trial to the end, asha stops "
                        "weak ones early")
    p.add_argument("--storage", default=None, metavar="DIR",
                   help="Tune storage path (default: runs/tune)")
    p.add_argument("--name", default=None,
                   help="experiment name (default: mbmpo_<sweep>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment in --storage/--name if it exists")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="trials running at once (default: as many as the resources allow)")
    _add_ray_args(p)
    p.set_defaults(func=cmd_tune)


def _evaluate_parser(sub) -> None:
    """The ``evaluate`` command's options."""
    p = _add_command(sub, "evaluate", "evaluate a checkpoint on the real env",
                   "Real-env returns (mean ± std over episodes, min, max) of a checkpoint's "
                   "pre-update\npolicy and of its adapted policies (an MBPO checkpoint: of "
                   "its SAC policy).")
    p.add_argument("checkpoint", help="checkpoint directory, e.g. runs/pendulum/checkpoint")
    p.add_argument("--episodes", type=int, default=10, metavar="N",
                   help="episodes per policy kind (the adapted ones spread over the models)")
    p.add_argument("--mean-action", action="store_true",
                   help="act with the policy's mean action (default: the checkpoint's "
                        "eval_explore, i.e. actions sampled as in training)")
    p.add_argument("--video", metavar="FILE",
                   help="also record one episode of the pre-update policy (mean action) to "
                        "this .gif or .mp4 file (default: no video)")
    p.add_argument("--render", default="rgb_array", help="render mode for --video")
    _add_ray_args(p)
    p.set_defaults(func=cmd_evaluate)


def _plot_parser(sub) -> None:
    """The ``plot`` command's options."""
    p = _add_command(sub, "plot", "learning curves (mean and spread over seeds) as one PNG",
                   "Plot real-env return vs real steps of one or more runs; runs named "
                   "<name>_seedN\nare averaged into one curve.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories (or their progress.csv files)")
    p.add_argument("--out", metavar="PNG",
                   help="output file (default: next to the input: RUN/learning_curve.png "
                        "for one run, the runs' common parent/learning_curves.png for "
                        "several)")
    p.set_defaults(func=cmd_plot)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbmpo-ray", formatter_class=_HelpFormatter,
        description="Model-Based Meta-Policy Optimization (MB-MPO) on Ray RLlib.",
        epilog="`mbmpo-ray COMMAND --help` shows each command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (_train_parser, _tune_parser, _evaluate_parser, _plot_parser):
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true",
                       help="on an error, show the full Python traceback")
    parser.subcommands = sub.choices  # name -> subparser, for usage lines on errors
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from mbmpo_ray.reporting import quiet_ray

    quiet_ray(getattr(args, "verbose", False))  # before any config or Ray call logs
    try:
        return args.func(args)
    except CLIError as e:
        if getattr(args, "debug", False):
            raise
        parser.subcommands[args.command].print_usage(sys.stderr)
        for line in str(e).splitlines() or [""]:
            print(f"mbmpo-ray {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mbmpo-ray {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # not a user mistake we know of: one line, --debug for more
        if getattr(args, "debug", False):
            raise
        msg = " ".join(str(e).split()) or "(no message)"
        if len(msg) > 300:
            msg = msg[:300] + "..."
        print(f"mbmpo-ray {args.command}: error: {type(e).__name__}: {msg} "
              "(--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
