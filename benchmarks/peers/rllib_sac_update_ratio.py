"""Minimal reproduction (issue 29): RLlib's tuned MuJoCo SAC does one update per FIVE env steps.

RLlib's new-stack HalfCheetah SAC example (``rllib/tuned_examples/sac/halfcheetah_sac.py``)
sets ``n_step=(1, 5)`` and leaves ``rollout_fragment_length="auto"`` and
``training_intensity=None``. ``SACConfig.get_rollout_fragment_length`` then returns the largest
n-step, 5, and the DQN/SAC ``training_step`` alternates one sample of that fragment with ONE
update (``calculate_rr_weights`` -> ``[1, 1]``): 0.2 gradient updates per env step, where
the usual MuJoCo SAC (SB3, cleanrl, the MBPO paper's SAC) does 1. At equal real steps it
therefore trails a standard SAC, whatever its learning rates.

This script builds the example's settings (``n_step`` as given) on Pendulum-v1 (cheap; the
ratio does not depend on the env), trains a few iterations after learning starts and prints
env steps sampled vs. SAC updates, with and without ``training_intensity`` (the replayed
rows per sampled step that gives one update per env step: the batch size)::

    .venv/bin/python benchmarks/peers/rllib_sac_update_ratio.py
"""

from __future__ import annotations

import argparse
import json


def updates_per_env_step(n_step, training_intensity: float | None, iterations: int) -> dict:
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        LEARNER_RESULTS,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
    )

    batch = 256
    config = (
        SACConfig()
        .environment("Pendulum-v1")
        .training(n_step=n_step, train_batch_size_per_learner=batch,
                  training_intensity=training_intensity,
                  num_steps_sampled_before_learning_starts=0,
                  replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer",
                                        "capacity": 100000, "alpha": 0.6, "beta": 0.4})
        .rl_module(model_config={"fcnet_hiddens": [32, 32]})
        .reporting(min_sample_timesteps_per_iteration=100)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        for _ in range(iterations):
            result = algo.train()
    finally:
        algo.stop()
    steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
    trained = result[LEARNER_RESULTS]["__all_modules__"]["num_module_steps_trained_lifetime"]
    return {"n_step": n_step, "training_intensity": training_intensity,
            "rollout_fragment_length": config.get_rollout_fragment_length(),
            "env_steps": int(steps), "updates": int(trained // batch),
            "updates_per_env_step": round(float(trained / batch / steps), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=1)
    args = p.parse_args()
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    rows = [updates_per_env_step((1, 5), None, args.iterations),   # the tuned example
            updates_per_env_step(1, None, args.iterations),        # n_step 1: fragment 1
            updates_per_env_step((1, 5), 256, args.iterations)]    # UTD 1 asked for
    ray.shutdown()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
