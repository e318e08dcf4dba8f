"""MB-MPO end to end on Pendulum-v1 (horizon 200): better than -300 within 10,000 real steps.

PPO needs well over 100,000 steps for that. Takes a few minutes on two cores, hence `slow`.
"""

import numpy as np
import pytest

import tune_configs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.mark.parametrize("num_learners", [0, 2])
def test_pendulum_learns_within_10k_real_steps(num_learners):
    """On the driver's learner, and on 2 learner actors splitting the meta step's tasks."""
    config = tune_configs.load_config("pendulum", seed=0)
    if num_learners:
        config.learners(num_learners=num_learners, num_cpus_per_learner=0.5)
    algo = config.build_algo()
    returns, steps, random_return = [], 0, None
    try:
        while steps < 10_000:
            result = algo.train()
            steps = result["num_real_steps_lifetime"]
            returns.append(result["episode_return_mean"])
            if result["training_iteration"] == 1:  # random actions sample the first iteration
                random_return = result["random_return_mean"]
            print(f"{steps:6.0f} real steps: pre-update return {returns[-1]:8.1f}, adapted "
                  f"{result['post_adaptation_return_mean']:8.1f}")
    finally:
        algo.stop()
    assert steps == 10_000
    assert random_return < -800  # random actions are far from solving it ...
    # ... and the last three evaluations (15 episodes, sampled actions) average better than -300
    assert np.mean(returns[-3:]) > -300, returns
