"""Environments for MB-MPO with exact, backend-agnostic model reward/termination functions.

This subpackage depends only on NumPy, torch and gymnasium (never on Ray).

Example:
    >>> from mbmpo_ray.envs import get_env_spec, make_env
    >>> spec = get_env_spec("HalfCheetah-v5")
    >>> env = make_env("HalfCheetah-v5", horizon=200)
    >>> obs, _ = env.reset(seed=0)
    >>> act = env.action_space.sample()
    >>> next_obs, reward, terminated, truncated, _ = env.step(act)
    >>> bool(abs(spec.reward_fn(obs, act, next_obs) - reward) < 1e-5)
    True
    >>> policy_obs = obs[spec.policy_obs_start:]  # what the policy sees
"""

from mbmpo_ray.envs.registry import (
    SUPPORTED_ENV_IDS,
    EnvCreator,
    EnvSpec,
    PolicyObservation,
    RewardFn,
    TerminationFn,
    UnsupportedEnvError,
    get_env_spec,
    get_reward_fn,
    get_termination_fn,
    make_env,
    register_model_functions,
)

__all__ = [
    "SUPPORTED_ENV_IDS",
    "EnvCreator",
    "PolicyObservation",
    "EnvSpec",
    "RewardFn",
    "TerminationFn",
    "UnsupportedEnvError",
    "get_env_spec",
    "get_reward_fn",
    "get_termination_fn",
    "make_env",
    "register_model_functions",
]
