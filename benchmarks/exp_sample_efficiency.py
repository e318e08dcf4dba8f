"""Sample efficiency, same harness: MB-MPO vs RLlib PPO vs RLlib SAC (issue 13, claim 1), and
MBPO vs RLlib SAC at horizon 1000 (issue 11: envs ``halfcheetah_h1000`` and ``hopper_h1000``,
MBPO capped at two hours by ``--max-minutes 120``, SAC then given MBPO's real steps by
``--budget``).

Every run builds its env the same way (``mbmpo_ray.envs.make_env`` through an ``EnvCreator``:
same horizon, same observation), counts only real env steps, and logs after every training
iteration ``real_steps, return, wall_s`` to its own CSV::

    benchmarks/results/sample_efficiency/<env>_<method>_seed<k>.csv

A run whose CSV ends with a ``# done`` line is skipped, and a run cut off mid-way continues from
its last checkpoint (saved every ``--checkpoint-s`` seconds into the git-ignored
``results/sample_efficiency/checkpoints/<run>/``; SAC's replay buffer is saved beside RLlib's
checkpoint, which leaves it out): its CSV keeps the rows up to that checkpoint, marks the
resumption with a ``# resumed`` line and counts wall-clock on from there. ``--report`` reads all
CSVs and writes the table (real steps to each threshold, ratios PPO/MB-MPO and SAC/MB-MPO,
returns at fixed step counts, wall-clock) and a PNG (mean and min-max over seeds) into
BENCHMARKS.md.

Returns: MB-MPO reports real episodes of its pre-update policy (sampled, as in training) after
each iteration; MBPO its sampled training episodes (``sample_return_mean``: iterations of 250
real steps in which none ended report nothing); PPO and SAC report RLlib's
``env_runners/episode_return_mean`` (their sampled training episodes), smoothed over the last 5
episodes for SAC as in RLlib's tuned example.

    .venv/bin/python benchmarks/exp_sample_efficiency.py --env pendulum --methods mbmpo ppo \
        --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/exp_sample_efficiency.py --env halfcheetah_h1000 --methods mbpo \
        --seeds 0 --max-minutes 120
    .venv/bin/python benchmarks/exp_sample_efficiency.py --report
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    load_average,
    markdown_table,
    update_section,
    utc_date,
)

RESULTS = REPO_ROOT / "benchmarks" / "results" / "sample_efficiency"

# env name -> (env id, horizon, budget of real steps per method, return thresholds); the
# MB-MPO / MBPO config of an env is the ``tune_configs`` module of its name (or CONFIG_OF's)
ENVS = {
    "pendulum": ("Pendulum-v1", 200,
                 {"mbmpo": 10_000, "ppo": 300_000, "sac": 20_000}, (-700, -400, -300, -200)),
    "inverted_pendulum": ("InvertedPendulum-v5", 1000,
                          {"mbmpo": 15_000, "ppo": 300_000, "sac": 15_000}, (200, 500, 950)),
    "halfcheetah": ("HalfCheetah-v5", 200,
                    {"mbmpo": 100_000, "ppo": 1_000_000, "sac": 100_000}, (0, 200, 400, 500)),
    # issue 29: MB-MPO's Hopper at the paper's horizon (legacy RLlib ~620, the original code
    # ~650 at 100k real steps)
    "hopper": ("Hopper-v5", 200,
               {"mbmpo": 100_000, "ppo": 1_000_000, "sac": 100_000}, (0, 200, 400, 600)),
    # issue 11: MBPO next to SAC at horizon 1000 (MBPO runs are capped by --max-minutes)
    "halfcheetah_h1000": ("HalfCheetah-v5", 1000, {"mbpo": 100_000, "sac": 100_000,
                                                   "sac_mujoco": 100_000,
                                                   "sac_mujoco_utd1": 100_000},
                          (0, 1000, 2000, 3000)),
    "hopper_h1000": ("Hopper-v5", 1000, {"mbpo": 100_000, "sac": 100_000},
                     (500, 1000, 2000, 3000)),
}
CONFIG_OF = {"halfcheetah_h1000": "halfcheetah", "hopper_h1000": "hopper"}
# envs reported in their own section (MBPO vs SAC, issue 11) rather than MB-MPO's (issue 13)
MBPO_ENVS = ("halfcheetah_h1000", "hopper_h1000")
STEPS_REPORTED = (10_000, 20_000, 100_000)


# ----------------------------------------------------------------------------------- runs
def _creator(env_name: str, policy_view: bool = False) -> str:
    """A Tune-registered name for the env exactly as MB-MPO builds it (``make_env``); with
    ``policy_view`` as its policy sees it (the standard observation, for model-free peers)."""
    from ray.tune.registry import register_env

    from mbmpo_ray.envs import EnvCreator, get_env_spec

    env_id, horizon, _, _ = ENVS[env_name]
    name = f"mbmpo_ray/{env_id}/H{horizon}" + ("/policy" if policy_view else "")
    register_env(name, EnvCreator(get_env_spec(env_id), horizon, policy_view=policy_view))
    return name


def build_mbmpo(env_name: str, seed: int, **overrides):
    """The env config's DEFAULT variant (``overrides``: a variant run, ``--mbmpo-set``)."""
    import tune_configs

    return tune_configs.load_config(CONFIG_OF.get(env_name, env_name), "default", seed=seed,
                                    **overrides).build_algo()


def build_mbpo(env_name: str, seed: int):
    """MBPO at its env config's DEFAULT variant (the reference code's settings), with
    ``sac_precision='auto'``: bf16 SAC updates where this CPU runs bf16 matmuls fast (1.7x
    per update at 256 x 256 on an AVX512-BF16 EPYC, 2026-11-24), so the two-hour run gets
    further; float32 elsewhere."""
    import tune_configs

    return tune_configs.load_config(CONFIG_OF.get(env_name, env_name), "default", algo="mbpo",
                                    seed=seed, horizon=ENVS[env_name][1],
                                    sac_precision="auto").build_algo()


def variant_name(overrides: dict) -> str:
    """``mbmpo`` or, with ``--mbmpo-set`` overrides, ``mbmpo+key=value+...`` (its CSV name)."""
    return "+".join(["mbmpo", *(f"{k}={v}" for k, v in sorted(overrides.items()))])


def build_ppo(env_name: str, seed: int):
    """RLlib's tuned PPO: Pendulum's settings (rllib/tuned_examples/ppo/pendulum_ppo.py) on
    Pendulum; on the MuJoCo envs RLlib's MuJoCo benchmark settings, the PPO paper's
    (rllib/tuned_examples/ppo/benchmark_ppo_mujoco.py: batch 32 x 512, minibatch 4,096, 15
    epochs, lr 3e-4, lambda 0.95, vf_loss_coeff 0.01, 64 x 64 tanh with a shared value layer),
    with one env runner of 8 envs instead of 32 runners (same batch)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    config = PPOConfig().environment(_creator(env_name)).debugging(seed=seed)
    if env_name == "pendulum":
        config = (config.env_runners(num_env_runners=1, num_envs_per_env_runner=10)
                  .training(lr=0.0003, lambda_=0.1, vf_clip_param=10.0, num_epochs=6)
                  .rl_module(model_config={"fcnet_activation": "relu"}))
    else:
        config = (config.env_runners(num_env_runners=1, num_envs_per_env_runner=8)
                  .training(gamma=0.99, lambda_=0.95, lr=0.0003, num_epochs=15,
                            train_batch_size_per_learner=32 * 512, minibatch_size=4096,
                            vf_loss_coeff=0.01)
                  .rl_module(model_config=DefaultModelConfig(
                      fcnet_hiddens=[64, 64], fcnet_activation="tanh", vf_share_layers=True)))
    return config.build_algo()


def build_sac(env_name: str, seed: int):
    """RLlib's tuned Pendulum SAC settings (rllib/tuned_examples/sac/pendulum_sac.py), on
    every env: RLlib's MuJoCo SAC example (halfcheetah_sac.py) starts learning only after
    10,000 steps, more than MB-MPO's whole InvertedPendulum budget; the Pendulum settings
    learn from 256 steps on (n-step 2-5, higher learning rates), SAC's best case here."""
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        SACConfig()
        .environment(_creator(env_name))
        .training(
            initial_alpha=1.001, actor_lr=2e-4, critic_lr=8e-4, alpha_lr=9e-4, lr=None,
            target_entropy="auto", n_step=(2, 5), tau=0.005, train_batch_size_per_learner=256,
            target_network_update_freq=1,
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer",
                                  "capacity": 100000, "alpha": 1.0, "beta": 0.0},
            num_steps_sampled_before_learning_starts=256,
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[256, 256],
                                                   fcnet_activation="relu"))
        .reporting(metrics_num_episodes_for_smoothing=5)
        .debugging(seed=seed)
        .build_algo()
    )


def build_sac_mujoco(env_name: str, seed: int, training_intensity: float | None = None):
    """RLlib's own tuned MuJoCo SAC (issue 29): the settings of its new-stack HalfCheetah
    example (rllib/tuned_examples/sac/halfcheetah_sac.py, one learner): initial alpha 1.001,
    learning rates 2e-4 (actor) / 8e-4 (critics) / 9e-4 (alpha), n-step drawn from 1-5,
    prioritized episode replay (capacity 100k, alpha 0.6, beta 0.4), learning after 10,000
    steps, 256 x 256 ReLU with Xavier-uniform hidden layers and small orthogonal heads; on the
    standard observation (``policy_view``).

    As the example leaves them (``training_intensity`` None), these settings make 0.2 updates
    per env step (n-step up to 5 makes the rollout fragment 5 steps, one update each:
    ``benchmarks/peers/rllib_sac_update_ratio.py``); ``training_intensity=256`` (method
    ``sac_mujoco_utd1``) makes it one update per env step, as standard SAC does."""
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from torch import nn

    return (
        SACConfig()
        .environment(_creator(env_name, policy_view=True))
        .training(
            initial_alpha=1.001, actor_lr=2e-4, critic_lr=8e-4, alpha_lr=9e-4, lr=None,
            target_entropy="auto", n_step=(1, 5), tau=0.005, train_batch_size_per_learner=256,
            target_network_update_freq=1,
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer",
                                  "capacity": 100000, "alpha": 0.6, "beta": 0.4},
            num_steps_sampled_before_learning_starts=10000,
            training_intensity=training_intensity,
        )
        .rl_module(model_config=DefaultModelConfig(
            fcnet_hiddens=[256, 256], fcnet_activation="relu",
            fcnet_kernel_initializer=nn.init.xavier_uniform_, head_fcnet_hiddens=[],
            head_fcnet_activation=None, head_fcnet_kernel_initializer="orthogonal_",
            head_fcnet_kernel_initializer_kwargs={"gain": 0.01}))
        .reporting(metrics_num_episodes_for_smoothing=5, min_sample_timesteps_per_iteration=1000)
        .debugging(seed=seed)
        .build_algo()
    )


BUILDERS = {"mbmpo": build_mbmpo, "mbpo": build_mbpo, "ppo": build_ppo, "sac": build_sac,
            "sac_mujoco": build_sac_mujoco,
            "sac_mujoco_utd1": functools.partial(build_sac_mujoco, training_intensity=256)}


def _steps_and_return(method: str, result: dict) -> tuple[int, float]:
    if method == "mbmpo":
        return int(result["num_real_steps_lifetime"]), float(result["episode_return_mean"])
    if method == "mbpo":  # its sampled training episodes, like SAC's (nan: none ended)
        return (int(result["num_real_steps_lifetime"]),
                float(result.get("sample_return_mean", np.nan)))
    runners = result.get("env_runners", {})
    steps = result.get("num_env_steps_sampled_lifetime",
                       runners.get("num_env_steps_sampled_lifetime", 0))
    return int(steps), float(runners.get("episode_return_mean", np.nan))


def is_done(path: Path) -> bool:
    """Whether a run's CSV is complete (its last line is the ``# done`` marker)."""
    lines = path.read_text().rstrip().splitlines() if path.exists() else []
    return bool(lines) and lines[-1].startswith("# done")


def run_one(env_name: str, method: str, seed: int, budget: int | None = None,
            results: Path = RESULTS, overrides: dict | None = None,
            checkpoint_s: float = 300.0, max_minutes: float | None = None) -> Path:
    """Train one run to its budget of real steps (or of ``max_minutes`` of wall-clock, resumed
    time included), appending a CSV row per iteration; skip a finished run and continue one
    that was cut off (:func:`_resume`). ``overrides`` (MB-MPO only) change its config and name
    the run (:func:`variant_name`). A checkpoint is saved after an iteration when
    ``checkpoint_s`` seconds have passed since the last one (0: after every iteration)."""
    from mbmpo_ray.algorithm.checkpoints import latest_checkpoint, save_checkpoint

    overrides = overrides if method == "mbmpo" else None
    name = variant_name(overrides) if overrides else method
    path = results / f"{env_name}_{name}_seed{seed}.csv"
    if is_done(path):
        print(f"skip {path.name} (done)", flush=True)
        return path
    budget = budget or ENVS[env_name][2][method]
    ckpt_dir = results / "checkpoints" / path.stem
    path.parent.mkdir(parents=True, exist_ok=True)
    algo = BUILDERS[method](env_name, seed, **(overrides or {}))
    ckpt = latest_checkpoint(ckpt_dir) if path.exists() else None
    lines, wall0 = (_resume(algo, method, ckpt, path) if ckpt is not None
                    else (["real_steps,episode_return_mean,wall_s"], 0.0))
    if ckpt is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a new run: never mix in an old one's
    t0 = time.perf_counter() - wall0
    last_save = time.perf_counter()
    tmp = path.with_suffix(".tmp")  # the rows kept so far replace the CSV in one step:
    tmp.write_text("\n".join(lines) + "\n")  # a kill now cannot leave it empty
    tmp.replace(path)
    try:
        with open(path, "a", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")  # as the kept rows above
            data = [line for line in lines[1:] if not line.startswith("#")]
            rows, steps = len(data), int(data[-1].split(",")[0]) if data else 0
            max_s = float("inf") if max_minutes is None else 60.0 * max_minutes
            while steps < budget and time.perf_counter() - t0 < max_s:
                steps, ret = _steps_and_return(method, algo.train())
                rows += 1
                writer.writerow([steps, f"{ret:.2f}", f"{time.perf_counter() - t0:.1f}"])
                f.flush()
                if steps < budget and time.perf_counter() - last_save >= checkpoint_s:
                    save_checkpoint(lambda d: _save(algo, method, d), ckpt_dir, rows, keep=1,
                                    extra={"rows": rows, "wall_s": time.perf_counter() - t0})
                    last_save = time.perf_counter()
            capped = f" (wall budget {max_minutes:g} min)" if steps < budget else ""
            f.write(f"# done{capped} load {load_average()}\n")
    finally:
        algo.stop()
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: its CSV is all that is kept
    print(f"{path.name}: {steps} real steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


_REPLAY_BUFFER = "replay_buffer.pkl"


def _save(algo, method: str, directory: str) -> None:
    """RLlib's checkpoint of ``algo``, plus SAC's replay buffer (RLlib's leaves it out)."""
    algo.save_to_path(directory)
    if method.startswith("sac"):
        with open(Path(directory) / _REPLAY_BUFFER, "wb") as f:
            pickle.dump(algo.local_replay_buffer.get_state(), f)


def _resume(algo, method: str, ckpt: Path, path: Path) -> tuple[list[str], float]:
    """Restore ``algo`` from ``ckpt``; the CSV lines up to it plus a ``# resumed`` marker, and
    the wall-clock seconds the run had used by then."""
    from mbmpo_ray.algorithm.checkpoints import read_manifest

    manifest = read_manifest(ckpt)
    algo.restore_from_path(str(ckpt))
    if method.startswith("sac"):
        with open(ckpt / _REPLAY_BUFFER, "rb") as f:
            algo.local_replay_buffer.set_state(pickle.load(f))
    lines, rows = [], -1  # the header is not a row
    for line in path.read_text().splitlines():
        rows += not line.startswith("#")
        if rows > manifest["rows"]:
            break
        lines.append(line)
    lines.append(f"# resumed after row {manifest['rows']} load {load_average()}")
    print(f"{path.name}: resumed from {ckpt} ({manifest['rows']} iterations)", flush=True)
    return lines, float(manifest["wall_s"])


# ----------------------------------------------------------------------------------- report
def read_run(path: Path) -> np.ndarray:
    """``n x 3`` array of (real_steps, return, wall_s) rows of a finished run's CSV (its
    first three columns; the peer's CSVs carry more after them)."""
    rows = [r[:3] for r in csv.reader(path.read_text().splitlines()[1:])
            if r and r[0][0] != "#"]
    run = np.asarray(rows, dtype=float).reshape(-1, 3)
    return run[np.isfinite(run[:, 1])]  # iterations that finished no episode report nan


def steps_to(run: np.ndarray, threshold: float) -> float:
    """Real steps at the first iteration whose return reaches ``threshold`` (nan: never)."""
    hit = np.flatnonzero(run[:, 1] >= threshold)
    return float(run[hit[0], 0]) if len(hit) else np.nan


def return_at(run: np.ndarray, steps: int) -> float:
    """Return of the last iteration at or before ``steps`` real steps (nan past the run, or
    before its first iteration)."""
    before = np.flatnonzero(run[:, 0] <= steps)
    if run[-1, 0] < steps or not len(before):
        return np.nan
    return float(run[before[-1], 1])


def finished_runs(env_name: str) -> dict[str, list[np.ndarray]]:
    runs: dict[str, list[np.ndarray]] = {}
    for path in sorted(RESULTS.glob(f"{env_name}_*_seed*.csv")):
        method = path.stem[len(env_name) + 1:].rsplit("_seed", 1)[0]
        if method.split("+")[0] in BUILDERS and is_done(path):
            runs.setdefault(method, []).append(read_run(path))
    order = {m: i for i, m in enumerate(BUILDERS)}  # mbmpo, its variants, ppo, sac
    return dict(sorted(runs.items(), key=lambda kv: (order[kv[0].split("+")[0]], kv[0])))


def _fmt_steps(xs: list[float]) -> str:
    done = [x for x in xs if np.isfinite(x)]
    if not done:
        return f"never (0/{len(xs)})"
    return f"{np.mean(done):,.0f} ({len(done)}/{len(xs)})"


def report_env(env_name: str) -> str | None:
    runs = finished_runs(env_name)
    if not runs:
        return None
    env_id, _, _, thresholds = ENVS[env_name]
    rows = []
    for method, rs in runs.items():
        cells = [method, len(rs)]
        cells += [_fmt_steps([steps_to(r, th) for r in rs]) for th in thresholds]
        for s in STEPS_REPORTED:
            vals = [return_at(r, s) for r in rs]
            ok = [v for v in vals if np.isfinite(v)]
            cells.append(f"{np.mean(ok):.0f} ± {np.std(ok):.0f}" if ok else "-")
        final = [float(np.mean(r[-3:, 1])) for r in rs]  # does it stay there?
        cells.append(f"{np.mean(final):.0f} ± {np.std(final):.0f} "
                     f"@{np.mean([r[-1, 0] for r in rs]) / 1000:.0f}k")
        cells.append(f"{np.mean([r[-1, 2] for r in rs]) / 60:.1f}")
        rows.append(cells)
    headers = (["method", "seeds"] + [f"steps to {th}" for th in thresholds]
               + [f"return @{s // 1000}k" for s in STEPS_REPORTED]
               + ["final (last 3 iterations)", "min/run"])
    ratio_lines = []
    base = "mbpo" if env_name in MBPO_ENVS else "mbmpo"
    label = {"mbmpo": "MB-MPO", "mbpo": "MBPO"}[base]
    for other in ("ppo", "sac"):
        if other in runs and base in runs:
            for th in thresholds:
                a = np.array([steps_to(r, th) for r in runs[other]])
                b = np.array([steps_to(r, th) for r in runs[base]])
                ra, rb = np.isfinite(a), np.isfinite(b)
                if rb.any() and not ra.any():  # a lower bound: the whole run of each seed
                    ran = min(r[-1, 0] for r in runs[other])
                    ratio_lines.append(
                        f"- {other.upper()}/{label} real steps to {th}: >= "
                        f"{ran / np.mean(b[rb]):.1f}x ({other.upper()} never reached it within "
                        f"{ran:,.0f} real steps, 0/{len(a)} seeds; {label} {rb.sum()}/{len(b)})")
                if not (ra.any() and rb.any()):
                    continue
                line = (f"- {other.upper()}/{label} real steps to {th}: "
                        f"{np.mean(a[ra]) / np.mean(b[rb]):.1f}x")
                if not (ra.all() and rb.all()):  # means over the seeds that got there
                    line += (f" (seeds that reached it: {other.upper()} {ra.sum()}/{len(a)}, "
                             f"{label} {rb.sum()}/{len(b)})")
                ratio_lines.append(line)
    png = plot_env(env_name, runs)
    body = [f"Env {env_id}; steps to a threshold: mean over the seeds that reached it "
            "(reached/total); returns mean ± std over seeds.", "",
            markdown_table(headers, rows), "", *ratio_lines, "",
            f"![{env_id}](benchmarks/results/sample_efficiency/{png.name})"]
    return "\n".join(body)


def plot_env(env_name: str, runs: dict[str, list[np.ndarray]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for method, rs in runs.items():
        grid = np.linspace(max(r[0, 0] for r in rs), min(r[-1, 0] for r in rs), 100)
        ys = np.stack([np.interp(grid, r[:, 0], r[:, 1]) for r in rs])
        ax.plot(grid, ys.mean(0), label=f"{method} ({len(rs)} seed{'s' * (len(rs) > 1)})")
        ax.fill_between(grid, ys.min(0), ys.max(0), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("real env steps (log)")
    ax.set_ylabel("return")
    ax.set_title(f"{ENVS[env_name][0]} (H = {ENVS[env_name][1]}): mean and min-max over seeds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # off the curves
    fig.tight_layout()
    path = RESULTS / f"{env_name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report() -> None:
    """The two sections of BENCHMARKS.md: MB-MPO vs PPO vs SAC (issue 13), MBPO vs SAC at
    horizon 1000 (issue 11)."""
    sections = {
        "sample-efficiency": ("Sample efficiency: MB-MPO vs PPO vs SAC",
                              [e for e in ENVS if e not in MBPO_ENVS]),
        "mbpo-curves": ("MBPO vs SAC: return vs real steps at horizon 1000", MBPO_ENVS),
    }
    for name, (title, envs) in sections.items():
        parts = [f"- Command: `.venv/bin/python benchmarks/exp_sample_efficiency.py` (runs), "
                 f"`--report` (this section); date (UTC) {utc_date()}; 2-core CPU shared with "
                 "other work (wall-clock figures are indicative only)."]
        for env_name in envs:
            text = report_env(env_name)
            if text:
                env_id, horizon = ENVS[env_name][:2]
                parts += ["", f"### {env_id} (horizon {horizon})", "", text]
        if len(parts) > 1:
            update_section(name, f"{title} (`benchmarks/exp_sample_efficiency.py`)",
                           "\n".join(parts))
    print("BENCHMARKS.md updated")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", choices=sorted(ENVS), default="pendulum")
    p.add_argument("--methods", nargs="+", choices=sorted(BUILDERS), default=["mbmpo", "ppo"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--report", action="store_true", help="only write the report")
    p.add_argument("--budget", type=int, help="override the real-step budget (smoke runs)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="also stop a run after M minutes of wall-clock (resumed time included); "
                        "its CSV's last line says so")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--checkpoint-s", type=float, default=300.0, metavar="S",
                   help="save a checkpoint after an iteration when S seconds have passed since "
                        "the last one (0: every iteration); a cut-off run resumes from it")
    p.add_argument("--mbmpo-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an MB-MPO variant: override a setting of the config's DEFAULT "
                        "(repeatable); its runs are reported as mbmpo+KEY=VALUE")
    args = p.parse_args()
    overrides = {}
    for item in args.mbmpo_set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--mbmpo-set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare string
            overrides[key] = value
    if args.report:
        report()
        return 0
    import ray

    import mbmpo_ray  # noqa: F401

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for seed in args.seeds:  # seeds outermost: every method gets its first seeds early
        for method in args.methods:
            run_one(args.env, method, seed, args.budget, args.out, overrides,
                    args.checkpoint_s, args.max_minutes)
    if args.out == RESULTS:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
