"""The env a model-free peer trains on (``EnvCreator(..., policy_view=True)``) is gymnasium's
own v5 env step for step: the same observations, rewards, terminations and truncations."""

import gymnasium as gym
import numpy as np
import pytest

from mbmpo_ray.envs import EnvCreator, get_env_spec


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_policy_view_is_gymnasiums_env(env_id):
    ours = EnvCreator(get_env_spec(env_id), 1000, policy_view=True)()
    theirs = gym.make(env_id)
    assert ours.observation_space.shape == theirs.observation_space.shape
    rng = np.random.default_rng(0)
    a, b = ours.reset(seed=3)[0], theirs.reset(seed=3)[0]
    ends = 0
    for t in range(600):
        np.testing.assert_array_equal(a, b)
        act = rng.uniform(-1, 1, ours.action_space.shape).astype(np.float32)
        a, r1, term1, trunc1, _ = ours.step(act)
        b, r2, term2, trunc2, _ = theirs.step(act)
        assert (r1, term1, trunc1) == (r2, term2, trunc2), t
        if term1 or trunc1:
            ends += 1
            a, b = ours.reset(seed=t)[0], theirs.reset(seed=t)[0]
    assert env_id != "Hopper-v5" or ends > 0  # random Hopper falls: terminations compared
