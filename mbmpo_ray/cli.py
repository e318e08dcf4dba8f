"""``mbmpo-ray``: train, tune, evaluate and plot MB-MPO runs.

    mbmpo-ray train --config pendulum --output runs/pendulum
    mbmpo-ray train --env HalfCheetah-v5 --set num_model_trainers=2 --stop-timesteps 100000
    mbmpo-ray tune alpha --address auto
    mbmpo-ray evaluate runs/pendulum/checkpoint --episodes 10
    mbmpo-ray plot runs/pendulum runs/other --out curves.png
"""

from __future__ import annotations

import argparse
import ast
import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

CSV_COLUMNS = [
    "iteration", "real_steps", "imagined_steps", "episode_return_mean",
    "post_adaptation_return_mean", "random_return_mean", "model_val_loss", "model_epochs",
    "imagined_pre_return", "imagined_post_return", "kl", "time_sample", "time_fit",
    "time_meta", "time_eval", "time_iter",
]


class CLIError(Exception):
    """A user error: printed as a one-line message with the usage, never a traceback."""


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


def build_config(args: argparse.Namespace):
    """MBMPOConfig from --config/--env, --variant, --set, --seed and --num-env-runners."""
    import tune_configs
    from mbmpo_ray.algorithm.mbmpo.config import setting_docs

    overrides = _parse_set(args.set)
    valid = setting_docs()
    unknown = sorted(k for k in overrides if k not in valid)
    if unknown:
        raise CLIError(f"unknown --set key(s) {unknown}; valid keys: {sorted(valid)}")
    name = args.config or args.env
    if name is None:
        raise CLIError("give --config NAME|PATH or --env ENV_ID")
    try:
        config = tune_configs.load_config(name, args.variant, **overrides)
        if args.config and args.env:
            config.environment(args.env)
        stop = args.stop_timesteps or tune_configs.stop_timesteps(name, args.variant)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    if args.seed is not None:
        config.debugging(seed=args.seed)
    if args.num_env_runners is not None:
        config.env_runners(num_env_runners=args.num_env_runners)
    try:
        config.validate()
    except ValueError as e:
        raise CLIError(str(e)) from None
    return config, stop


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)


def _row(result: dict[str, Any], t_iter: float) -> dict[str, Any]:
    timers = result.get("timers", {})
    meta = result.get("meta", {})
    model = result.get("model", {})
    return {
        "iteration": result.get("training_iteration"),
        "real_steps": result.get("num_real_steps_lifetime"),
        "imagined_steps": result.get("num_imagined_steps_lifetime"),
        "episode_return_mean": result.get("episode_return_mean"),
        "post_adaptation_return_mean": result.get("post_adaptation_return_mean"),
        "random_return_mean": result.get("random_return_mean"),
        "model_val_loss": model.get("val_loss_mean"),
        "model_epochs": model.get("epochs_mean"),
        "imagined_pre_return": meta.get("pre_return_mean"),
        "imagined_post_return": meta.get("post_return_mean"),
        "kl": meta.get("kl_after"),
        "time_sample": timers.get("sample_real"),
        "time_fit": timers.get("fit_models"),
        "time_meta": timers.get("meta_update"),
        "time_eval": timers.get("evaluate_real"),
        "time_iter": t_iter,
    }


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _progress_line(row: dict[str, Any], stop: int | None, eta_s: float | None) -> str:
    steps = int(row["real_steps"] or 0)
    target = f"/{stop:,}" if stop else ""
    eta = f" | ETA {eta_s / 60:.1f} min" if eta_s is not None else ""
    return (
        f"iter {row['iteration']:>3} | real steps {steps:>7,}{target} | "
        f"return {_fmt(row['episode_return_mean']):>8} "
        f"(adapted {_fmt(row['post_adaptation_return_mean'])}) | "
        f"model val {_fmt(row['model_val_loss'], '.4f')} | "
        f"imagined {_fmt(row['imagined_pre_return'])}->{_fmt(row['imagined_post_return'])} | "
        f"sample {_fmt(row['time_sample'], '.1f')}s fit {_fmt(row['time_fit'], '.1f')}s "
        f"meta {_fmt(row['time_meta'], '.1f')}s | {row['time_iter']:.1f}s/iter{eta}"
    )


def list_settings() -> str:
    """Every ``--set`` key with its default and one-line doc."""
    from mbmpo_ray.algorithm.mbmpo.config import MBMPOConfig, setting_docs

    defaults = MBMPOConfig()
    width = max(map(len, setting_docs()))
    return "\n".join(f"{name:<{width}}  {getattr(defaults, name)!r:<12}  {doc}"
                     for name, doc in sorted(setting_docs().items()))


def cmd_train(args: argparse.Namespace) -> int:
    """Train until ``--stop-timesteps`` real steps (or ``--iterations``)."""
    if args.list_settings:
        print(list_settings())
        return 0
    config, stop = build_config(args)
    if args.iterations is None and stop is None:
        raise CLIError("give --stop-timesteps N or --iterations N")
    out = Path(args.output or f"runs/{config.model_env_id}")
    out.mkdir(parents=True, exist_ok=True)
    _init_ray(args.address)
    from mbmpo_ray.plotting import plot_runs

    print(f"MB-MPO on {config.model_env_id}: K={config.ensemble_size}, "
          f"{config.num_tasks} tasks x {config.rollouts_per_task} rollouts x H={config.horizon}, "
          f"{config.meta_steps_per_iter} meta steps/iter, inner_lr={config.inner_lr}; "
          f"stop at {f'{stop:,} real steps' if stop else f'{args.iterations} iterations'}; "
          f"output in {out}/", flush=True)
    algo = config.build_algo()
    ckpt = out / "checkpoint"
    csv_path = out / "progress.csv"
    times: list[float] = []
    result: dict[str, Any] = {}
    try:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            while True:
                t0 = time.perf_counter()
                result = algo.train()
                times.append(time.perf_counter() - t0)
                row = _row(result, times[-1])
                writer.writerow(row)
                f.flush()
                it, steps = result["training_iteration"], result["num_real_steps_lifetime"]
                done = (args.iterations is not None and it >= args.iterations) or (
                    stop is not None and steps >= stop
                )
                eta = None
                if not done and stop:
                    per_iter = config.real_steps_per_iter
                    eta = math.ceil(max(0, stop - steps) / per_iter) * float(
                        sum(times[-3:]) / len(times[-3:]))
                print(_progress_line(row, stop, eta), flush=True)
                if args.checkpoint_every and it % args.checkpoint_every == 0:
                    algo.save_to_path(str(ckpt.resolve()))
                if done:
                    break
    except KeyboardInterrupt:
        print("interrupted: saving a checkpoint and the plot", flush=True)
    finally:
        algo.save_to_path(str(ckpt.resolve()))
        if csv_path.exists() and len(csv_path.read_text().splitlines()) > 1:
            png = plot_runs([out], out / "learning_curve.png",
                            title=f"MB-MPO on {config.model_env_id}")
            print(f"learning curve: {png}")
        print(f"checkpoint: {ckpt}\nresults: {csv_path}")
        algo.stop()
    if result.get("episode_return_mean") is not None:
        print(f"final pre-update return {result['episode_return_mean']:.1f} after "
              f"{int(result['num_real_steps_lifetime']):,} real steps")
    return 0


def record_video(algo, path: Path, render_mode: str, episodes: int = 1) -> int:
    """Render ``episodes`` real episodes of the pre-update policy (mean action) to a video.

    ``.gif`` needs only imageio (installed with gymnasium); ``.mp4`` needs the ``video`` extra
    (``pip install 'mbmpo-ray[video]'``, imageio-ffmpeg). Returns the number of frames.
    """
    import numpy as np
    import torch

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
    module = algo.get_module()
    params = module.policy_params()
    env = make_env(cfg.model_env_id, horizon=cfg.horizon, render_mode=render_mode)
    low, high = env.action_space.low, env.action_space.high
    frames = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=ep)
            frames.append(env.render())
            done = False
            while not done:
                with torch.no_grad():
                    act = module.policy.deterministic_action(
                        params, torch.as_tensor(obs, dtype=torch.float32))
                obs, _, term, trunc, _ = env.step(np.clip(act.numpy(), low, high))
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
    path = Path(args.checkpoint)
    if not path.exists():
        raise CLIError(f"checkpoint {path} does not exist")
    _init_ray(args.address)
    from ray.rllib.algorithms.algorithm import Algorithm

    import mbmpo_ray  # noqa: F401  (registers MBMPO)

    algo = Algorithm.from_checkpoint(str(path.resolve()))
    try:
        res = algo.evaluate(num_episodes=args.episodes)
        if args.video:
            n = record_video(algo, Path(args.video), args.render)
            print(f"video: {args.video} ({n} frames)")
    finally:
        algo.stop()
    print(f"pre-update policy: mean return {res['episode_return_mean']:.1f} over "
          f"{len(res['episode_returns'])} episodes")
    if "post_adaptation_return_mean" in res:
        print(f"adapted policies:  mean return {res['post_adaptation_return_mean']:.1f} over "
              f"{len(res['post_adaptation_episode_returns'])} episodes")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot learning curves of one or more run directories into one PNG."""
    from mbmpo_ray.plotting import plot_runs

    try:
        png = plot_runs(args.runs, args.out)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    print(png)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run (or resume) a Tune sweep from ``tune_configs/sweeps.py``."""
    from mbmpo_ray.tuning import run_sweep

    try:
        return run_sweep(args)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbmpo-ray", description="Model-Based Meta-Policy Optimization on Ray RLlib.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_run_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="config name (pendulum, halfcheetah, ...) or .py path")
        p.add_argument("--variant", default="default", help="default | paper | smoke")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a training setting, e.g. --set inner_lr=0.005")
        p.add_argument("--seed", type=int)
        p.add_argument("--num-env-runners", type=int)
        p.add_argument("--address", help="Ray address (auto, ray://host:10001); default: local")

    p = sub.add_parser("train", help="train MB-MPO with a live progress display")
    p.add_argument("--env", help="gymnasium env id, e.g. HalfCheetah-v5")
    add_run_args(p)
    p.add_argument("--stop-timesteps", type=int, help="stop after this many real env steps")
    p.add_argument("--iterations", type=int, help="stop after this many iterations")
    p.add_argument("--output", help="output directory (default runs/<env>)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="iterations (0: end only)")
    p.add_argument("--list-settings", action="store_true",
                   help="print every --set key with its default and doc, then exit")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="run or resume a Tune sweep from tune_configs/sweeps.py")
    p.add_argument("sweep", help="sweep name: alpha | ensemble_size | horizon | smoke")
    p.add_argument("--env", help="override the sweep's env config (e.g. halfcheetah)")
    p.add_argument("--variant", default=None, help="config variant of the trials")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting")
    p.add_argument("--iterations", type=int, help="iterations per trial")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo")
    p.add_argument("--storage", default=None, help="Tune storage path (default ./runs/tune)")
    p.add_argument("--name", default=None, help="experiment name")
    p.add_argument("--resume", action="store_true", help="resume the experiment if it exists")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--address", help="Ray address; default: local")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the real env")
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--render", default="rgb_array", help="render mode for --video")
    p.add_argument("--video", help="also record one episode to this .mp4 or .gif file")
    p.add_argument("--address")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="learning curves (mean and spread over seeds) as one PNG")
    p.add_argument("runs", nargs="+", help="run directories containing progress.csv")
    p.add_argument("--out", default="learning_curves.png")
    p.set_defaults(func=cmd_plot)
    parser.subcommands = sub.choices  # name -> subparser, for usage lines on errors
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        return args.func(args)
    except CLIError as e:
        parser.subcommands[args.command].print_usage(sys.stderr)
        print(f"mbmpo-ray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
