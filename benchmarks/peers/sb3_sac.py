"""Model-free peer (issue 29): Stable-Baselines3 SAC at rl-zoo3's tuned MuJoCo settings, one run.

One run = (env, seed, real steps). The env is built exactly as the harness builds it
(``mbmpo_ray.envs.make_env``: gymnasium v5, ``TimeLimit`` of ``--horizon`` steps, the x
position kept in the observation for the model rewards); the policy then sees the observation
without the leading ``policy_obs_start`` dims, i.e. what our MBPO/MB-MPO policies see (and the
standard gymnasium v5 observation). Every ``--eval-every`` real steps: ``--eval-episodes``
deterministic episodes on a separate env (same episode seeds at every evaluation), and the mean
return of the training episodes that ended since the last row. One CSV row per evaluation::

    benchmarks/results/peer_sac/<env>_sb3sac_seed<N>.csv
    real_steps,episode_return_mean,wall_s,eval_return_std,train_return_mean,cpu

``episode_return_mean`` is the deterministic evaluation mean (the published SAC figures are
evaluation returns), ``train_return_mean`` the sampled training episodes' (nan: none ended),
``wall_s`` the run's wall-clock seconds so far (evaluations included, resumptions summed). The
first three columns have the names and order of ``benchmarks/exp_sample_efficiency.py``'s CSVs;
lines starting with ``#`` are comments (config, ``# resumed ...``, and the final ``# done``).

Resumable: every ``--checkpoint-every`` real steps the SB3 model and its replay buffer are saved
to ``benchmarks/results/peer_sac/checkpoints/<run>/step_<N>/`` (written as ``.tmp``, then
renamed; older ones deleted). A run whose CSV ends with ``# done`` is skipped; otherwise it
resumes from its newest checkpoint (model + replay buffer, ``reset_num_timesteps=False``) and
the CSV is cut back to the rows at or before that step. SIGTERM/SIGINT stop it after the
current env step, leaving the last checkpoint to resume from. A finished run keeps only its
final ``model.zip``.

Hyperparameters: rl-baselines3-zoo ``hyperparams/sac.yml`` (DLR-RM/rl-baselines3-zoo, commit
c94924e5b31bce36920f29d3eb18b975231bdec4), the ``# === Mujoco Envs ===`` block:
``HalfCheetah-v3: &mujoco-defaults {n_timesteps: 1e6, policy: 'MlpPolicy', learning_starts:
10000}`` and ``Hopper-v3: <<: *mujoco-defaults``; everything else is SB3's SAC default (written
out in ``HYPERPARAMS``). ``buffer_size`` is capped at the run's real steps (identical
behaviour: nothing is ever evicted; the saved buffer stays small).

Environment (its own venv, outside the project's dependencies; CPU torch wheel)::

    python3 -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0          # pinned: an unpinned torch pulls CUDA
    .venv-peers/bin/pip install stable-baselines3 'gymnasium[mujoco]==1.2.2'
    .venv-peers/bin/pip install --no-deps -e .          # for mbmpo_ray.envs.make_env only
    OMP_NUM_THREADS=1 .venv-peers/bin/python benchmarks/peers/sb3_sac.py \\
        --env HalfCheetah-v5 --seed 0 --steps 100000

(gymnasium 1.2.2 is the version of the project's venv; SB3 2.9.2, mujoco 4.0.1 were used.)
``benchmarks/peers/sac_queue.sh`` runs the 6 runs of issue 29 one after another.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import shutil
import signal
import sys
import time
from importlib.metadata import version
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "peer_sac"
HEADER = ["real_steps", "episode_return_mean", "wall_s", "eval_return_std",
          "train_return_mean", "cpu"]

# rl-baselines3-zoo hyperparams/sac.yml (commit c94924e5), HalfCheetah-v3 / Hopper-v3 (the
# "mujoco-defaults" anchor): policy MlpPolicy, learning_starts 10000; the rest are SB3's SAC
# defaults, written out so that a change of SB3's defaults cannot change the peer silently.
HYPERPARAMS = {
    "learning_rate": 3e-4,
    "buffer_size": 1_000_000,
    "learning_starts": 10_000,
    "batch_size": 256,
    "tau": 0.005,
    "gamma": 0.99,
    "train_freq": 1,
    "gradient_steps": 1,
    "ent_coef": "auto",
    "target_update_interval": 1,
    "target_entropy": "auto",
    "use_sde": False,
    "policy_kwargs": {"net_arch": [256, 256]},
}
ZOO_ENVS = ("HalfCheetah-v5", "Hopper-v5")  # the envs whose zoo settings these are


def make_env(env_id: str, horizon: int) -> gym.Env:
    """The harness's env (``mbmpo_ray.envs.make_env``) as the policy sees it."""
    from mbmpo_ray.envs import PolicyObservation, get_env_spec
    from mbmpo_ray.envs import make_env as harness_make_env

    spec = get_env_spec(env_id)
    return PolicyObservation(harness_make_env(spec, horizon=horizon), spec.policy_obs_start)


def cpu_model() -> str:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU; fp32"
    flags = info.get("flags", "").split()
    bf16 = "bf16" if {"amx_bf16", "avx512_bf16"} & set(flags) else "no bf16"
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}, {bf16}); fp32")


def evaluate(model, env: gym.Env, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std of ``episodes`` deterministic returns; episode ``k`` starts from
    ``reset(seed=seed + k)`` at every evaluation (the same start states each time)."""
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


# ------------------------------------------------------------------------------ checkpoints
def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete ``step_<N>`` directory (``.tmp`` ones are unfinished writes)."""
    done = [p for p in ckpt_root.glob("step_*") if p.is_dir() and p.suffix != ".tmp"
            and (p / "state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def save_checkpoint(model, ckpt_root: Path, step: int, wall_s: float) -> Path:
    final = ckpt_root / f"step_{step}"
    tmp = ckpt_root / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "model.zip")
    model.save_replay_buffer(tmp / "replay_buffer.pkl")
    (tmp / "state.json").write_text(json.dumps({"step": step, "wall_s": wall_s}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a kill before this line leaves only a .tmp, never read
    for old in ckpt_root.glob("step_*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def is_done(path: Path) -> bool:
    lines = path.read_text().rstrip().splitlines() if path.exists() else []
    return bool(lines) and lines[-1].startswith("# done")


def cut_csv(path: Path, step: int, note: str) -> None:
    """Keep the header, comments and rows at or before ``step``; append ``note``; atomically."""
    kept = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and line.split(",")[0].isdigit():
            if int(line.split(",")[0]) > step:
                break
        kept.append(line)
    kept.append(note)
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text("\n".join(kept) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ run
def run(env_id: str, seed: int, steps: int, horizon: int = 1000, eval_every: int = 5000,
        eval_episodes: int = 5, checkpoint_every: int = 5000, results: Path = RESULTS,
        threads: int = 1) -> Path:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor

    torch.set_num_threads(threads)
    path = results / f"{env_id}_sb3sac_seed{seed}.csv"
    if is_done(path):
        print(f"skip {path.name} (done)", flush=True)
        return path
    ckpt_root = results / "checkpoints" / path.stem
    results.mkdir(parents=True, exist_ok=True)
    cpu = cpu_model()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    train_env = Monitor(make_env(env_id, horizon))
    eval_env = make_env(env_id, horizon)
    eval_seed = 1_000_000 + 1000 * seed

    ckpt = latest_checkpoint(ckpt_root) if path.exists() else None
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        start, wall0 = int(state["step"]), float(state["wall_s"])
        model = SAC.load(ckpt / "model.zip", env=train_env, device="cpu")
        model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        model._last_obs = None  # the new env was never reset: learn() must reset it
        model.set_random_seed(seed + start)  # fresh, reproducible streams after a resume
        cut_csv(path, start, f"# resumed at {start} real steps from {ckpt.name} load {load}")
        print(f"{path.name}: resumed at {start} real steps ({ckpt})", flush=True)
    else:
        shutil.rmtree(ckpt_root, ignore_errors=True)  # a new run never mixes in an old one
        start, wall0 = 0, 0.0
        params = copy.deepcopy(HYPERPARAMS)
        params["buffer_size"] = min(params["buffer_size"], steps)
        model = SAC("MlpPolicy", train_env, seed=seed, device="cpu", verbose=0,
                    **copy.deepcopy(params))  # SB3 edits policy_kwargs in place
        versions = " ".join(f"{p} {version(p)}" for p in
                            ("stable-baselines3", "torch", "gymnasium", "mujoco"))
        config = (f"# sb3 SAC {env_id} seed {seed} horizon {horizon} steps {steps} "
                  f"eval {eval_episodes} deterministic episodes every {eval_every} | "
                  f"{json.dumps(params, sort_keys=True)} | {versions} | torch threads "
                  f"{threads} | load {load}")
        tmp = path.with_suffix(".csv.tmp")
        tmp.write_text(",".join(HEADER) + "\n" + config.replace("\n", " ") + "\n")
        os.replace(tmp, path)
        print(f"{path.name}: new run", flush=True)

    stop = {"signal": None}

    def _on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    t0 = time.perf_counter() - wall0

    class Logger(BaseCallback):
        """Evaluates (and checkpoints) at rollout start, i.e. after the gradient step of the
        last env step, so a checkpoint at step N holds the model trained on N steps."""

        def __init__(self):
            super().__init__()
            self.last = start
            self.train_returns: list[float] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.train_returns.append(float(info["episode"]["r"]))
            return stop["signal"] is None

        def _on_rollout_start(self) -> None:
            self.log_point()

        def log_point(self) -> None:
            n = self.num_timesteps
            if n == self.last or (n % eval_every and n % checkpoint_every):
                return
            self.last = n
            if n % eval_every == 0:
                mean, std = evaluate(self.model, eval_env, eval_episodes, eval_seed)
                train = float(np.mean(self.train_returns)) if self.train_returns else math.nan
                self.train_returns = []
                with open(path, "a", newline="") as f:
                    csv.writer(f, lineterminator="\n").writerow(
                        [n, f"{mean:.2f}", f"{time.perf_counter() - t0:.1f}", f"{std:.2f}",
                         f"{train:.2f}", cpu])
                print(f"{path.name}: {n} steps eval {mean:.1f} +- {std:.1f} train {train:.1f}"
                      f" {time.perf_counter() - t0:.0f} s", flush=True)
            if n % checkpoint_every == 0:
                save_checkpoint(self.model, ckpt_root, n, time.perf_counter() - t0)

    logger = Logger()
    model.learn(total_timesteps=steps - start, callback=logger, reset_num_timesteps=False,
                progress_bar=False)
    if stop["signal"] is not None:
        print(f"{path.name}: stopped by signal {stop['signal']} at {model.num_timesteps} "
              f"steps; resumes from {latest_checkpoint(ckpt_root)}", flush=True)
        return path
    logger.log_point()  # the last step's row (learn() ends after its gradient step)
    with open(path, "a") as f:
        f.write(f"# done {model.num_timesteps} real steps in {time.perf_counter() - t0:.0f} s "
                f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    final = latest_checkpoint(ckpt_root)
    if final is not None:  # keep the final policy, not the replay buffer
        (final / "replay_buffer.pkl").unlink(missing_ok=True)
    print(f"{path.name}: done, {model.num_timesteps} real steps", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100_000, help="total real env steps")
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--checkpoint-every", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--learning-starts", type=int, default=None,
                        help="override (tests of the resume path only; not a zoo setting)")
    args = parser.parse_args(argv)
    if args.env not in ZOO_ENVS:
        print(f"note: rl-zoo3's settings were tuned for {ZOO_ENVS}, not {args.env}",
              file=sys.stderr)
    if args.learning_starts is not None:
        HYPERPARAMS["learning_starts"] = args.learning_starts
    run(args.env, args.seed, args.steps, args.horizon, args.eval_every, args.eval_episodes,
        args.checkpoint_every, args.results, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
