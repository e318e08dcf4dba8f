"""Exactness tests of the model reward/termination functions against real gymnasium rollouts.

For every supported env id, transitions are collected from a uniformly random policy and from
a perturbed policy (a fixed random linear policy plus noise, scaled far beyond the action
bounds and clipped), and the model functions are compared with ``env.step``'s rewards and
``terminated`` flags. No Ray.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from mbmpo_ray.envs import (
    SUPPORTED_ENV_IDS,
    EnvSpec,
    UnsupportedEnvError,
    get_env_spec,
    get_reward_fn,
    get_termination_fn,
    make_env,
    register_model_functions,
)
from mbmpo_ray.envs import registry as env_registry

REWARD_ATOL = 1e-5
N_RANDOM = 1000  # transitions per env from the uniform random policy
N_PERTURBED = 1000  # transitions per env from the perturbed linear policy
ROLLOUT_HORIZON = 100  # short episodes so that many post-reset transitions are covered
TERMINATING_ENVS = ("InvertedPendulum-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")
EXPECTED_REQUIRED_IDS = (
    "Pendulum-v1",
    "InvertedPendulum-v5",
    "Swimmer-v5",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Walker2d-v5",
    "Ant-v5",
)


@pytest.fixture(scope="module", autouse=True)
def _isolated_cwd(tmp_path_factory):
    """MuJoCo writes MUJOCO_LOG.TXT (Ant's 'settotalmass' warning) into the cwd; keep it out."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("mujoco_cwd"))
        yield


def _kick_ant_upwards(env: gym.Env, rng: np.random.Generator) -> np.ndarray:
    """Give the Ant's torso a large upward velocity so it leaves the healthy z range."""
    base = env.unwrapped
    qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
    qvel[2] = rng.uniform(3.0, 8.0)
    base.set_state(qpos, qvel)
    return env.observation(base._get_obs())


def _rollout(env_id: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Collect ``N_RANDOM + N_PERTURBED`` transitions of ``make_env(env_id)``."""
    spec = get_env_spec(env_id)
    env = make_env(env_id, horizon=ROLLOUT_HORIZON)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    low, high = env.action_space.low, env.action_space.high
    start = spec.policy_obs_start
    weights = rng.normal(size=(low.shape[0], env.observation_space.shape[0] - start))
    obs, _ = env.reset(seed=seed)
    data = {k: [] for k in ("obs", "act", "next_obs", "reward", "terminated", "first")}
    first = True
    for step in range(N_RANDOM + N_PERTURBED):
        perturbed = step >= N_RANDOM
        if perturbed:
            raw = np.tanh(weights @ obs[start:]) + rng.normal(size=low.shape)
            act = np.clip(3.0 * high * raw, low, high).astype(env.action_space.dtype)
        else:
            act = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(act)
        for key, value in zip(data, (obs, act, next_obs, reward, terminated, first), strict=True):
            data[key].append(value)
        first = terminated or truncated
        if first:
            obs, _ = env.reset()
            if env_id == "Ant-v5" and perturbed and rng.random() < 0.5:
                obs = _kick_ant_upwards(env, rng)
        else:
            obs = next_obs
    env.close()
    out = {k: np.asarray(v) for k, v in data.items()}
    out["reward"] = out["reward"].astype(np.float64)
    out["terminated"] = out["terminated"].astype(bool)
    return out


@pytest.fixture(scope="module", params=SUPPORTED_ENV_IDS)
def transitions(request) -> tuple[str, dict[str, np.ndarray]]:
    """Real transitions (random + perturbed policy) of one supported env."""
    return request.param, _rollout(request.param)


def _as64(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def test_required_env_ids_are_supported():
    assert isinstance(SUPPORTED_ENV_IDS, tuple)
    assert set(EXPECTED_REQUIRED_IDS) <= set(SUPPORTED_ENV_IDS)
    for env_id in SUPPORTED_ENV_IDS:
        spec = get_env_spec(env_id)
        assert isinstance(spec, EnvSpec) and spec.env_id == env_id
        assert get_reward_fn(env_id) is spec.reward_fn
        assert get_termination_fn(env_id) is spec.termination_fn


def test_reward_fn_matches_env_reward(transitions):
    env_id, d = transitions
    obs, act, next_obs = _as64(d["obs"], d["act"], d["next_obs"])
    reward = get_reward_fn(env_id)(obs, act, next_obs)
    assert isinstance(reward, np.ndarray) and reward.shape == d["reward"].shape
    err = np.abs(reward - d["reward"])
    assert err.max() <= REWARD_ATOL, (env_id, float(err.max()), int(err.argmax()))
    # the transitions right after a reset are exact too (Ant's stale-xpos subtlety)
    assert d["first"].sum() >= 5
    assert err[d["first"]].max() <= REWARD_ATOL


def test_termination_fn_matches_env_terminated(transitions):
    env_id, d = transitions
    done = get_termination_fn(env_id)(d["next_obs"])
    assert isinstance(done, np.ndarray) and done.dtype == np.bool_
    np.testing.assert_array_equal(done, d["terminated"])
    if env_id in TERMINATING_ENVS:
        assert d["terminated"].sum() >= 5, f"rollouts of {env_id} contain too few terminations"
        # terminations from both policies
        assert d["terminated"][:N_RANDOM].any() or env_id == "Ant-v5"
        assert d["terminated"][N_RANDOM:].any()


def test_numpy_and_torch_agree(transitions):
    env_id, d = transitions
    spec = get_env_spec(env_id)
    obs, act, next_obs = _as64(d["obs"], d["act"], d["next_obs"])
    reward_np = spec.reward_fn(obs, act, next_obs)
    done_np = spec.termination_fn(next_obs)
    t_obs, t_act, t_next = (torch.from_numpy(x) for x in (obs, act, next_obs))
    reward_t = spec.reward_fn(t_obs, t_act, t_next)
    done_t = spec.termination_fn(t_next)
    assert isinstance(reward_t, torch.Tensor) and reward_t.dtype == torch.float64
    assert isinstance(done_t, torch.Tensor) and done_t.dtype == torch.bool
    # identical up to the last-bit differences of the backends' sum/atan2 implementations
    np.testing.assert_allclose(reward_t.numpy(), reward_np, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(done_t.numpy(), done_np)
    # float32 tensors stay float32 (x positions in float32 limit the precision)
    reward_32 = spec.reward_fn(t_obs.float(), t_act.float(), t_next.float())
    assert reward_32.dtype == torch.float32
    np.testing.assert_allclose(reward_32.double().numpy(), reward_np, rtol=1e-4, atol=1e-3)
    assert spec.termination_fn(t_next.float()).dtype == torch.bool
    # a NumPy action next to torch observations is moved onto the torch backend
    np.testing.assert_allclose(spec.reward_fn(t_obs, act, t_next).numpy(), reward_np, atol=1e-12)


def test_batched_leading_shapes(transitions):
    env_id, d = transitions
    spec = get_env_spec(env_id)
    t, n = 50, 8
    obs, act, next_obs = (x[: t * n] for x in _as64(d["obs"], d["act"], d["next_obs"]))
    flat_reward = spec.reward_fn(obs, act, next_obs)
    flat_done = spec.termination_fn(next_obs)
    shaped = [x.reshape(t, n, -1) for x in (obs, act, next_obs)]
    reward = spec.reward_fn(*shaped)
    done = spec.termination_fn(shaped[2])
    assert reward.shape == (t, n) and done.shape == (t, n)
    np.testing.assert_allclose(reward, flat_reward.reshape(t, n), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(done, flat_done.reshape(t, n))
    reward_t = spec.reward_fn(*(torch.from_numpy(x) for x in shaped))
    assert tuple(reward_t.shape) == (t, n)
    np.testing.assert_allclose(reward_t.numpy(), reward, rtol=0, atol=1e-12)
    # a single unbatched transition gives a scalar
    assert np.shape(spec.reward_fn(obs[0], act[0], next_obs[0])) == ()
    assert np.shape(spec.termination_fn(next_obs[0])) == ()


@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"])
def test_non_finite_observation_terminates(env_id):
    env = make_env(env_id)
    obs, _ = env.reset(seed=0)
    act = np.zeros((2, *env.action_space.shape))
    env.close()
    bad = np.stack([obs, obs])
    bad[1, 2] = np.nan
    done = get_termination_fn(env_id)(bad)
    np.testing.assert_array_equal(done, [False, True])
    reward = get_reward_fn(env_id)(np.stack([obs, obs]), act, bad)
    assert reward.shape == (2,) and np.isfinite(reward[0])


@pytest.mark.parametrize("env_id", SUPPORTED_ENV_IDS)
def test_env_layout_and_policy_obs_start(env_id):
    """``obs[policy_obs_start:]`` is exactly the observation of the default gymnasium env."""
    spec = get_env_spec(env_id)
    env, default_env = make_env(env_id), gym.make(env_id)
    if spec.dt is not None:
        assert env.unwrapped.dt == spec.dt
    obs, _ = env.reset(seed=3)
    default_obs, _ = default_env.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(5):
        np.testing.assert_array_equal(obs[spec.policy_obs_start :], default_obs)
        act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, *_ = env.step(act)
        default_obs, *_ = default_env.step(act)
    env.close()
    default_env.close()


def test_make_env_applies_horizon():
    env = make_env("HalfCheetah-v5", horizon=7)
    env.reset(seed=0)
    act = np.zeros(env.action_space.shape, dtype=np.float32)
    for step in range(1, 8):
        _, _, terminated, truncated, _ = env.step(act)
        assert not terminated
        assert truncated == (step == 7)
    env.close()
    assert make_env("Pendulum-v1").spec.max_episode_steps == 200
    assert make_env("Hopper-v5", horizon=None).spec.max_episode_steps == 1000
    assert make_env("Pendulum-v1", horizon=None).spec.max_episode_steps == 200


def test_make_env_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="exclude_current_positions_from_observation"):
        make_env("HalfCheetah-v5", exclude_current_positions_from_observation=True)
    with pytest.raises(ValueError, match="dt"):
        make_env("HalfCheetah-v5", frame_skip=2)
    with pytest.raises(ValueError, match="horizon"):
        make_env("HalfCheetah-v5", horizon=0)


def test_ant_reward_needs_main_body_position():
    """Without the wrapper, the qpos-based x velocity misses Ant-v5's stale ``xpos`` reward."""
    spec = get_env_spec("Ant-v5")
    env = gym.make("Ant-v5", **spec.make_kwargs)  # no MainBodyXYObservation
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    errors = []
    for _ in range(100):
        act = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(act)
        errors.append(abs(float(spec.reward_fn(obs, act, next_obs)) - reward))
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    assert max(errors) > 100 * REWARD_ATOL


@pytest.mark.parametrize(
    "call", [get_env_spec, get_reward_fn, get_termination_fn, make_env], ids=lambda f: f.__name__
)
def test_unknown_env_id_error(call):
    with pytest.raises(UnsupportedEnvError) as info:
        call("HalfCheetah-v4")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'HalfCheetah-v4'" in message
    for env_id in SUPPORTED_ENV_IDS:
        assert env_id in message
    assert "register_model_functions(" in message


@pytest.fixture
def restore_registry(monkeypatch):
    """Isolate registrations made by a test."""
    monkeypatch.setattr(env_registry, "_REGISTRY", dict(env_registry._REGISTRY))


def _zero_reward(obs, act, next_obs):
    return np.zeros(np.shape(obs)[:-1])


def _never_done(next_obs):
    return np.zeros(np.shape(next_obs)[:-1], dtype=bool)


def _always_done(next_obs):
    return np.ones(np.shape(next_obs)[:-1], dtype=bool)


@pytest.mark.usefixtures("restore_registry")
def test_register_model_functions_round_trip():
    env_id = "MountainCarContinuous-v0"
    with pytest.raises(UnsupportedEnvError):
        get_env_spec(env_id)
    spec = register_model_functions(
        env_id, _zero_reward, _never_done, make_kwargs={"goal_velocity": 0.0}, policy_obs_start=0
    )
    assert get_env_spec(env_id) == spec
    assert get_reward_fn(env_id) is _zero_reward and get_termination_fn(env_id) is _never_done
    assert spec.make_kwargs == {"goal_velocity": 0.0} and spec.policy_obs_start == 0
    env = make_env(env_id, horizon=3)
    assert env.spec.max_episode_steps == 3
    assert env.unwrapped.goal_velocity == 0.0
    env.close()
    # re-registering overwrites
    register_model_functions(env_id, _zero_reward, _always_done, policy_obs_start=1)
    spec = get_env_spec(env_id)
    assert spec.termination_fn is _always_done and spec.policy_obs_start == 1
    assert spec.make_kwargs == {}
    assert env_id in str(pytest.raises(UnsupportedEnvError, get_env_spec, "Nope-v0").value)
    with pytest.raises(ValueError):
        register_model_functions(env_id, _zero_reward, _never_done, policy_obs_start=-1)


def test_registry_changes_do_not_leak():
    """The registry holds exactly the built-in envs: no test (this module's round trip above,
    or an integration test, which pytest runs before tests/unit) leaves a registration behind
    that would make a later test pass or fail for the wrong reason."""
    assert sorted(env_registry._REGISTRY) == sorted(SUPPORTED_ENV_IDS)
