"""Where mbrl-lib 0.2.0's own MBPO spends its time on HalfCheetah-v4, per 1,000 real steps.

Runs ``mbrl.algorithms.mbpo.train`` itself (mbrl-lib's real training loop, unmodified) with
timers wrapped around the functions that loop calls, so every phase is mbrl-lib's own code:

* model training: ``mbrl.util.common.train_model_and_save_model_and_data`` (normaliser update,
  ``ModelTrainer.train`` until early stopping, saving model and data to a temp work dir);
* model rollouts: ``mbrl.algorithms.mbpo.rollout_model_and_populate_sac_buffer`` (branched
  rollouts from 100,000 real start states, written into the SAC buffer);
* SAC updates: ``mbrl.third_party.pytorch_sac_pranz24.sac.SAC.update_parameters``;
* env stepping: ``mbrl.util.common.step_env_and_add_to_buffer`` (policy action, ``env.step``,
  buffer add); evaluation: ``mbrl.algorithms.mbpo.evaluate`` (1 episode per 1,000 steps);
  other: the rest of the loop's wall time (buffer swaps, checkpoint on a new best, logging).

The initial exploration (``rollout_agent_trajectories``, 5,000 steps) and the first 250 real
steps (no SAC updates before the first model fit, then the first fit and rollout) are reported
apart; the per-1,000 figures cover real steps 250..N. Standalone: no ``mbmpo_ray``, no Ray.

Environment (its own venv, outside this project's; Python 3.10 or 3.11)::

    python3.11 -m venv ~/mbrl-venv && V=~/mbrl-venv/bin
    $V/pip install torch --index-url https://download.pytorch.org/whl/cpu
    $V/pip install "numpy<2" gymnasium==0.26.3 mujoco==2.3.7 termcolor imageio tqdm \\
        packaging pyyaml typing-extensions antlr4-python3-runtime==4.8
    $V/pip install --no-deps omegaconf==2.0.6 hydra-core==1.0.3 mbrl==0.2.0
    # hydra-core 1.0.3 on Python 3.11 only: dataclass fields may not default to instances
    SP=$($V/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    sed -E -i 's/^( +\\w+): (\\w+) = (\\w+)\\(\\)$/\\1: \\2 = field(default_factory=\\3)/' \\
        "$SP/hydra/conf/__init__.py"
    $V/python benchmarks/peers/mbrl_mbpo_timing.py --real-steps 2000 --threads 1

Settings (mbrl-lib v0.2.0 = HEAD for these files; ``conf`` = ``mbrl/examples/conf``):
``conf/overrides/mbpo_halfcheetah.yaml``: epoch_length 1000, freq_train_model 250,
effective_model_rollouts_per_step 400, rollout_schedule [20, 150, 1, 1] (k = 1),
num_sac_updates_per_step 10, sac_updates_every_steps 1, num_epochs_to_retain_sac_buffer 1,
num_elites 5, patience 5, model_lr 1e-3, model_wd 1e-5, model_batch_size 256,
validation_ratio 0.2, sac_hidden_size 512, sac_target_entropy -1, sac_automatic_entropy_tuning
true, sac_lr 3e-4, sac_batch_size 256, sac_gamma 0.99, sac_tau 0.005, sac_alpha 0.2,
sac_target_update_interval 1, term_fn no_termination. Changed: env ``gym___HalfCheetah-v2`` ->
``gym___HalfCheetah-v4`` (gymnasium), num_steps 400000 -> ``--real-steps``, and
``algorithm.dataset_size`` = max(400000, 5000 + N) (the buffer size a 400k run gets).
``conf/algorithm/mbpo.yaml``: initial_exploration_steps 5000 with random_initial_explore false
(the untrained SAC samples them), real_data_ratio 0.0, sac_samples_action true, normalize
(double precision), target_is_delta, learned_rewards, num_eval_episodes 1, agent
``mbrl.third_party.pytorch_sac_pranz24.sac.SAC``.
``conf/dynamics_model/gaussian_mlp_ensemble.yaml``: GaussianMLP, 7 members x 4 layers x 200,
SiLU, propagation random_model.
``conf/main.yaml``: log_frequency_agent 1000; device ``--device`` (``cpu`` by default).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

FIT_EVERY = 250  # overrides.freq_train_model: one CSV row per model fit period
INITIAL_STEPS = 5000  # algorithm.initial_exploration_steps
PHASES = ("model_train", "rollout", "sac_update", "env_step", "eval")
COUNTS = ("model_fits", "model_epochs", "sac_updates")
FIELDS = ("real_steps", "wall_s", *(f"{p}_s" for p in PHASES), "other_s", *COUNTS)


def parse_args() -> argparse.Namespace:
    out = Path(__file__).resolve().parents[1] / "results" / "peer_mbrl_mbpo_HalfCheetah-v4.csv"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--real-steps", type=int, default=2000,
                   help="real steps after the 5,000 initial ones (multiple of 250, >= 500)")
    p.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads")
    p.add_argument("--out", type=Path, default=out, help="CSV of cumulative phase seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="mbrl-lib's device (cpu, cuda)")
    args = p.parse_args()
    if args.real_steps < 2 * FIT_EVERY or args.real_steps % FIT_EVERY:
        p.error(f"--real-steps must be a multiple of {FIT_EVERY} and >= {2 * FIT_EVERY}")
    return args


def build_cfg(real_steps: int, seed: int, device: str = "cpu"):
    """mbrl-lib's config for ``mbpo.train``, as Hydra would compose main + mbpo + halfcheetah."""
    from omegaconf import OmegaConf

    overrides = dict(  # conf/overrides/mbpo_halfcheetah.yaml
        env="gym___HalfCheetah-v4", term_fn="no_termination", num_steps=real_steps,
        epoch_length=1000, num_elites=5, patience=5, model_lr=1e-3, model_wd=1e-5,
        model_batch_size=256, validation_ratio=0.2, freq_train_model=FIT_EVERY,
        effective_model_rollouts_per_step=400, rollout_schedule=[20, 150, 1, 1],
        num_sac_updates_per_step=10, sac_updates_every_steps=1,
        num_epochs_to_retain_sac_buffer=1, sac_gamma=0.99, sac_tau=0.005, sac_alpha=0.2,
        sac_policy="Gaussian", sac_target_update_interval=1, sac_automatic_entropy_tuning=True,
        sac_target_entropy=-1, sac_hidden_size=512, sac_lr=3e-4, sac_batch_size=256,
    )
    sac_args = ("gamma", "tau", "alpha", "policy", "target_update_interval",
                "automatic_entropy_tuning", "target_entropy", "hidden_size", "lr")
    algorithm = dict(  # conf/algorithm/mbpo.yaml
        name="mbpo", normalize=True, normalize_double_precision=True, target_is_delta=True,
        learned_rewards=True, freq_train_model="${overrides.freq_train_model}",
        real_data_ratio=0.0, sac_samples_action=True, initial_exploration_steps=INITIAL_STEPS,
        random_initial_explore=False, num_eval_episodes=1,
        dataset_size=max(400_000, INITIAL_STEPS + real_steps),  # default: overrides.num_steps
        agent={
            "_target_": "mbrl.third_party.pytorch_sac_pranz24.sac.SAC",
            "num_inputs": "???",
            # Hydra 1.0 does not instantiate nested nodes: SAC reads low/high/shape off the node
            "action_space": {"_target_": "gym.env.Box", "low": "???", "high": "???",
                             "shape": "???"},
            "args": {**{k: f"${{overrides.sac_{k}}}" for k in sac_args}, "device": "${device}"},
        },
    )
    dynamics_model = {  # conf/dynamics_model/gaussian_mlp_ensemble.yaml
        "_target_": "mbrl.models.GaussianMLP", "device": "${device}", "num_layers": 4,
        "in_size": "???", "out_size": "???", "ensemble_size": 7, "hid_size": 200,
        "deterministic": False, "propagation_method": "random_model",
        "learn_logvar_bounds": False, "activation_fn_cfg": {"_target_": "torch.nn.SiLU"},
    }
    return OmegaConf.create({  # conf/main.yaml
        "algorithm": algorithm, "dynamics_model": dynamics_model, "overrides": overrides,
        "seed": seed, "device": device, "log_frequency_agent": 1000, "save_video": False,
        "debug_mode": False,
    })


class PhaseClock:
    """Cumulative wall seconds per phase, fed by timers wrapped around mbrl-lib functions."""

    def __init__(self, writer: csv.DictWriter, fh) -> None:
        self.sec = dict.fromkeys(PHASES, 0.0)
        self.counts = dict.fromkeys(COUNTS, 0)
        self.real_steps = 0
        self.loop_t0: float | None = None  # set when the initial exploration returns
        self.init_explore_s = 0.0
        self.first_fit: tuple[float, int] | None = None  # (seconds, epochs)
        self.first_rollout_s: float | None = None
        self.rows: list[dict] = []
        self.writer, self.fh = writer, fh

    @staticmethod
    def wrap(owner, name: str, on_done, before=None) -> None:
        """Replace ``owner.name`` by a timed call: ``before()``, call, ``on_done(dt, out)``."""
        orig = getattr(owner, name)

        @functools.wraps(orig)
        def timed(*args, **kwargs):
            if before is not None:
                before()
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            on_done(time.perf_counter() - t0, out)
            return out

        setattr(owner, name, timed)

    def add_to(self, phase: str, count: str | None = None):
        def on_done(dt: float, _out) -> None:
            if self.loop_t0 is not None:  # the initial exploration is timed on its own
                self.sec[phase] += dt
                if count:
                    self.counts[count] += 1
        return on_done

    def row(self) -> None:
        wall = time.perf_counter() - self.loop_t0
        r = {"real_steps": self.real_steps, "wall_s": wall,
             **{f"{p}_s": s for p, s in self.sec.items()},
             "other_s": wall - sum(self.sec.values()), **self.counts}
        self.rows.append(r)
        self.writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
        self.fh.flush()
        print(f"[mbrl-lib mbpo] real step {self.real_steps}: {wall:.1f} s", file=sys.stderr)


def install_timers(clock: PhaseClock) -> None:
    import mbrl.algorithms.mbpo as mbpo
    import mbrl.models.model_trainer as model_trainer
    import mbrl.third_party.pytorch_sac_pranz24.sac as pranz24_sac
    import mbrl.util.common as common

    def explored(dt: float, _out) -> None:
        clock.init_explore_s, clock.loop_t0 = dt, time.perf_counter()

    def before_step() -> None:  # a row per 250 steps, once all work of the previous step is done
        if clock.loop_t0 is not None and clock.real_steps and clock.real_steps % FIT_EVERY == 0:
            clock.row()

    def stepped(dt: float, _out) -> None:
        if clock.loop_t0 is not None:  # also called by rollout_agent_trajectories
            clock.sec["env_step"] += dt
            clock.real_steps += 1

    def fitted(dt: float, _out) -> None:
        clock.add_to("model_train", "model_fits")(dt, _out)
        if clock.first_fit is None:
            clock.first_fit = (dt, clock.counts["model_epochs"])

    def rolled_out(dt: float, _out) -> None:
        clock.add_to("rollout")(dt, _out)
        if clock.first_rollout_s is None:
            clock.first_rollout_s = dt

    def epochs(_dt: float, out) -> None:  # ModelTrainer.train returns (train losses, val scores)
        clock.counts["model_epochs"] += len(out[0])

    # mbpo.train looks all of these up at call time (module globals / attributes / methods)
    clock.wrap(common, "rollout_agent_trajectories", explored)
    clock.wrap(common, "step_env_and_add_to_buffer", stepped, before=before_step)
    clock.wrap(common, "train_model_and_save_model_and_data", fitted)
    clock.wrap(model_trainer.ModelTrainer, "train", epochs)
    clock.wrap(mbpo, "rollout_model_and_populate_sac_buffer", rolled_out)
    clock.wrap(pranz24_sac.SAC, "update_parameters", clock.add_to("sac_update", "sac_updates"))
    clock.wrap(mbpo, "evaluate", clock.add_to("eval"))


def summarize(clock: PhaseClock, args: argparse.Namespace, cfg) -> dict:
    a, b = clock.rows[0], clock.rows[-1]  # real step 250 (after the first fit) and N
    k = 1000.0 / (b["real_steps"] - a["real_steps"])
    per_1k = {p: (b[f"{p}_s"] - a[f"{p}_s"]) * k for p in (*PHASES, "other")}
    per_1k["env_and_rest"] = per_1k["env_step"] + per_1k["eval"] + per_1k["other"]
    per_1k["total"] = (b["wall_s"] - a["wall_s"]) * k
    d = {c: b[c] - a[c] for c in COUNTS}
    import gymnasium
    import mbrl
    import mujoco
    import torch
    from omegaconf import OmegaConf

    return {
        "peer": "mbrl-lib MBPO (mbrl.algorithms.mbpo.train)", "env": "HalfCheetah-v4",
        "seed": args.seed, "threads": args.threads,
        "window_real_steps": [a["real_steps"], b["real_steps"]],
        "per_1k_real_steps_s": {p: round(s, 3) for p, s in per_1k.items()},
        "window": {**d, "ms_per_sac_update": 1e3 * (b["sac_update_s"] - a["sac_update_s"])
                   / max(d["sac_updates"], 1),
                   "s_per_model_fit": (b["model_train_s"] - a["model_train_s"])
                   / max(d["model_fits"], 1),
                   "epochs_per_model_fit": d["model_epochs"] / max(d["model_fits"], 1)},
        "excluded": {"initial_exploration_steps": INITIAL_STEPS,
                     "initial_exploration_s": clock.init_explore_s,
                     "first_model_fit_s": clock.first_fit[0],
                     "first_model_fit_epochs": clock.first_fit[1],
                     "first_rollout_s": clock.first_rollout_s,
                     "first_250_real_steps_s": a["wall_s"]},
        "versions": {"mbrl": mbrl.__version__, "torch": torch.__version__,
                     "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__},
        "overrides": OmegaConf.to_container(cfg.overrides),
    }


def main() -> None:
    args = parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy/torch load their thread pools
    import mbrl.algorithms.mbpo as mbpo
    import mbrl.util.env
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    cfg = build_cfg(args.real_steps, args.seed, args.device)
    # as mbrl/examples/main.py: two envs from the config, then global seeds
    env, term_fn, _ = mbrl.util.env.EnvHandler.make_env(cfg)
    test_env, *_ = mbrl.util.env.EnvHandler.make_env(cfg)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh, tempfile.TemporaryDirectory() as work_dir:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        clock = PhaseClock(writer, fh)
        install_timers(clock)
        with contextlib.redirect_stdout(sys.stderr):  # mbrl-lib prints; stdout is the JSON
            mbpo.train(env, test_env, term_fn, cfg, silent=True, work_dir=work_dir)
        clock.row()  # real step N
    print(json.dumps(summarize(clock, args, cfg)))


if __name__ == "__main__":
    main()
