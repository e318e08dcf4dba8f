"""MBPO end to end (fixed seeds): InvertedPendulum-v5 >= 950 within 5,000 real steps and
Pendulum-v1 (horizon 200) better than -250 within 4,000 real steps.

A run stops as soon as an iteration's evaluation (3 episodes, mean action) reaches the target
and a fresh 10-episode evaluation confirms it. Minutes on two cores, hence `slow`. Each runs
in float32 and with bfloat16 SAC updates and model fits (``sac_precision``,
``model_precision``); bf16 is emulated, and slow, on CPUs without AVX512-BF16 or AMX.
"""

import time

import numpy as np
import pytest

import tune_configs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


PRECISIONS = pytest.mark.parametrize("precision", ["float32", "bfloat16"])


def learn(name: str, budget: int, target: float, seed: int = 0, precision: str = "float32",
          num_learners: int = 0):
    config = tune_configs.load_config(name, "default", algo="mbpo", seed=seed,
                                      sac_precision=precision, model_precision=precision)
    if num_learners:  # the same SAC batch, split over the learners
        config.learners(num_learners=num_learners, num_cpus_per_learner=0.5).training(
            train_batch_size_per_learner=config.train_batch_size_per_learner // num_learners)
    algo = config.build_algo()
    t0, history, confirmed = time.perf_counter(), [], None
    try:
        while True:
            result = algo.train()
            steps = int(result["num_real_steps_lifetime"])
            ret = result["episode_return_mean"]
            history.append((steps, ret))
            print(f"{steps:6d} real steps: return {ret:8.1f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            if ret >= target:
                confirmed = algo.evaluate(num_episodes=10)["episode_returns"]
                print(f"confirmation over 10 episodes: {np.mean(confirmed):.1f}", flush=True)
                if np.mean(confirmed) >= target:
                    break
            if steps >= budget:
                break
    finally:
        algo.stop()
    return steps, history, confirmed, time.perf_counter() - t0


@PRECISIONS
def test_inverted_pendulum_reaches_950_within_5k_real_steps(precision):
    steps, history, confirmed, secs = learn("inverted_pendulum", 5000, 950.0,
                                            precision=precision)
    print(f"InvertedPendulum-v5 ({precision}): {steps} real steps, {secs:.0f} s")
    assert steps <= 5000 and confirmed is not None and np.mean(confirmed) >= 950, history


@PRECISIONS
def test_pendulum_better_than_minus_250_within_4k_real_steps(precision):
    steps, history, confirmed, secs = learn("pendulum", 4000, -250.0, precision=precision)
    print(f"Pendulum-v1 ({precision}): {steps} real steps, {secs:.0f} s")
    # the first policy (after 1,000 random steps and one iteration of updates) is well short
    # of the target: -720 (float32) and -436 (bfloat16) on 2026-11-24; a random policy: ~-1,200
    assert history[0][1] < -400, history
    assert steps <= 4000 and confirmed is not None and np.mean(confirmed) > -250, history


def test_pendulum_on_two_learners_better_than_minus_250_within_4k_real_steps():
    """The same run with its 256-row SAC batches split over 2 learner actors (128 each,
    gradients all-reduced)."""
    steps, history, confirmed, secs = learn("pendulum", 4000, -250.0, num_learners=2)
    print(f"Pendulum-v1 (2 learners): {steps} real steps, {secs:.0f} s")
    assert steps <= 4000 and confirmed is not None and np.mean(confirmed) > -250, history
