"""Lookup table from gymnasium env ids to exact model reward/termination functions.

The registry maps an env id to an :class:`EnvSpec` describing how to build the environment
(:func:`make_env`) so that its observations contain everything the reward and termination
functions need, and how many leading observation dimensions the policy must not see.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from mbmpo_ray.envs import functions as F
from mbmpo_ray.envs.functions import Array

RewardFn = Callable[[Array, Array, Array], Array]
"""``reward_fn(obs, act, next_obs) -> reward`` with the leading batch shape of ``obs``."""

TerminationFn = Callable[[Array], Array]
"""``termination_fn(next_obs) -> done`` (bool) with the leading batch shape of ``next_obs``."""

EnvWrapper = Callable[[gym.Env], gym.Env]


class UnsupportedEnvError(KeyError, ValueError):
    """Raised for an env id without registered model reward/termination functions.

    It subclasses both :class:`KeyError` and :class:`ValueError`, so either can be caught.
    """

    def __str__(self) -> str:
        """Return the plain message (``KeyError`` would otherwise ``repr`` it)."""
        return str(self.args[0]) if self.args else ""


class MainBodyXYObservation(gym.ObservationWrapper):
    """Replace observation ``[0:2]`` (free-joint ``qpos[0:2]``) with the main body's ``xpos[:2]``.

    ``Ant-v5`` computes its forward reward from ``data.body(main_body).xpos`` *after*
    ``mj_step``. MuJoCo does not recompute kinematics at the end of ``mj_step``, and with the
    RK4 integrator ``xpos`` is the position of the last Runge-Kutta stage, not the final
    ``qpos`` (the difference in x velocity reaches ~0.06). That stale position cannot be
    recovered from ``qpos``/``qvel``, so this wrapper puts exactly the position the reward
    differentiates into the observation (after ``reset`` it equals ``qpos`` because
    ``set_state`` runs ``mj_forward``, just as in the environment). The policy never sees
    these two dims (``policy_obs_start=2``); the environment's rewards are unchanged.
    """

    def __init__(self, env: gym.Env) -> None:
        """Wrap ``env`` (a MuJoCo env with a ``_main_body`` and x, y kept in the obs)."""
        super().__init__(env)
        self._main_body = getattr(env.unwrapped, "_main_body", 1)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Return a copy of ``observation`` with ``[0:2]`` set to the main body ``xpos[:2]``."""
        observation = np.array(observation, copy=True)
        observation[:2] = self.env.unwrapped.data.body(self._main_body).xpos[:2]
        return observation


@dataclass(frozen=True)
class EnvSpec:
    """How to build an environment and compute its rewards/terminations from observations.

    Attributes:
        env_id: The gymnasium env id.
        reward_fn: ``reward_fn(obs, act, next_obs) -> reward`` (NumPy or torch, any leading
            batch shape); ``act`` is the action as passed to ``env.step``.
        termination_fn: ``termination_fn(next_obs) -> done`` (bool, same leading shape).
        make_kwargs: Keyword arguments for ``gymnasium.make`` so that the observation contains
            what the functions need (e.g. ``exclude_current_positions_from_observation=False``).
        policy_obs_start: Number of leading observation dims the policy must not see (they
            are kept only so the reward can be computed, e.g. the unbounded x position).
        dt: Environment time step the reward's finite differences assume (``None`` if unused
            or unknown). :func:`make_env` checks it against the built environment.
        env_wrapper: Optional wrapper applied by :func:`make_env` after ``gymnasium.make``
            (used for Ant, see :class:`MainBodyXYObservation`).
    """

    env_id: str
    reward_fn: RewardFn
    termination_fn: TerminationFn
    make_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_obs_start: int = 0
    dt: float | None = None
    env_wrapper: EnvWrapper | None = None


_KEEP_POSITIONS = {"exclude_current_positions_from_observation": False}

_BUILTIN_SPECS: tuple[EnvSpec, ...] = (
    EnvSpec("Pendulum-v1", F.pendulum_reward, F.no_termination, {}, 0, F.PENDULUM_DT),
    EnvSpec(
        "InvertedPendulum-v5",
        F.inverted_pendulum_reward,
        F.inverted_pendulum_termination,
        {},
        0,
        F.INVERTED_PENDULUM_DT,
    ),
    EnvSpec(
        "Swimmer-v5", F.swimmer_reward, F.no_termination, dict(_KEEP_POSITIONS), 2, F.SWIMMER_DT
    ),
    EnvSpec(
        "HalfCheetah-v5",
        F.half_cheetah_reward,
        F.no_termination,
        dict(_KEEP_POSITIONS),
        1,
        F.HALF_CHEETAH_DT,
    ),
    EnvSpec(
        "Hopper-v5", F.hopper_reward, F.hopper_termination, dict(_KEEP_POSITIONS), 1, F.HOPPER_DT
    ),
    EnvSpec(
        "Walker2d-v5",
        F.walker2d_reward,
        F.walker2d_termination,
        dict(_KEEP_POSITIONS),
        1,
        F.WALKER2D_DT,
    ),
    EnvSpec(
        "Ant-v5",
        F.ant_reward,
        F.ant_termination,
        dict(_KEEP_POSITIONS),
        2,
        F.ANT_DT,
        MainBodyXYObservation,
    ),
)

SUPPORTED_ENV_IDS: tuple[str, ...] = tuple(spec.env_id for spec in _BUILTIN_SPECS)
"""Env ids with built-in exact model functions (more can be added with
:func:`register_model_functions`)."""

_REGISTRY: dict[str, EnvSpec] = {spec.env_id: spec for spec in _BUILTIN_SPECS}


def _unsupported_message(env_id: Any) -> str:
    """Build the error message for an unknown env id."""
    supported = ", ".join(sorted(_REGISTRY))
    return (
        f"No model reward/termination functions are registered for env id {env_id!r}. "
        f"Supported env ids: {supported}. To use another environment, register its "
        "functions first, e.g.:\n"
        "    from mbmpo_ray.envs import register_model_functions\n"
        f"    register_model_functions({env_id!r}, reward_fn, termination_fn, "
        "make_kwargs={...}, policy_obs_start=0)\n"
        "where reward_fn(obs, act, next_obs) -> reward and termination_fn(next_obs) -> done "
        "accept NumPy arrays and torch tensors with any leading batch shape."
    )


def get_env_spec(env_id: str) -> EnvSpec:
    """Return the :class:`EnvSpec` registered for ``env_id``.

    Raises:
        UnsupportedEnvError: If no model functions are registered for ``env_id``.
    """
    try:
        return _REGISTRY[env_id]
    except (KeyError, TypeError):
        raise UnsupportedEnvError(_unsupported_message(env_id)) from None


def get_reward_fn(env_id: str) -> RewardFn:
    """Return ``reward_fn(obs, act, next_obs) -> reward`` for ``env_id``.

    Raises:
        UnsupportedEnvError: If no model functions are registered for ``env_id``.
    """
    return get_env_spec(env_id).reward_fn


def get_termination_fn(env_id: str) -> TerminationFn:
    """Return ``termination_fn(next_obs) -> done`` for ``env_id``.

    Raises:
        UnsupportedEnvError: If no model functions are registered for ``env_id``.
    """
    return get_env_spec(env_id).termination_fn


def register_model_functions(
    env_id: str,
    reward_fn: RewardFn,
    termination_fn: TerminationFn,
    *,
    make_kwargs: Mapping[str, Any] | None = None,
    policy_obs_start: int = 0,
) -> EnvSpec:
    """Register (or overwrite) the model reward/termination functions of ``env_id``.

    Args:
        env_id: A gymnasium env id (it must be makeable with ``gymnasium.make``
            to use :func:`make_env`).
        reward_fn: ``reward_fn(obs, act, next_obs) -> reward`` with the leading batch shape;
            should accept NumPy arrays and torch tensors.
        termination_fn: ``termination_fn(next_obs) -> done`` (bool) with the leading shape.
        make_kwargs: Keyword arguments for ``gymnasium.make`` applied by :func:`make_env`.
        policy_obs_start: Number of leading observation dims hidden from the policy.

    Returns:
        The registered :class:`EnvSpec` (``dt=None``, no wrapper).
    """
    if not isinstance(env_id, str) or not env_id:
        raise TypeError(f"env_id must be a non-empty string, got {env_id!r}")
    if not callable(reward_fn) or not callable(termination_fn):
        raise TypeError("reward_fn and termination_fn must be callable")
    if isinstance(policy_obs_start, bool) or not isinstance(policy_obs_start, int):
        raise TypeError(f"policy_obs_start must be an int, got {policy_obs_start!r}")
    if policy_obs_start < 0:
        raise ValueError(f"policy_obs_start must be >= 0, got {policy_obs_start}")
    spec = EnvSpec(
        env_id=env_id,
        reward_fn=reward_fn,
        termination_fn=termination_fn,
        make_kwargs=dict(make_kwargs or {}),
        policy_obs_start=policy_obs_start,
    )
    _REGISTRY[env_id] = spec
    return spec


def make_env(env_id: str | EnvSpec, horizon: int | None = 200, **overrides: Any) -> gym.Env:
    """Build ``env_id`` (an id, or the :class:`EnvSpec` itself) exactly as its model functions
    expect it.

    Applies the spec's ``make_kwargs`` (and wrapper, if any) and a ``TimeLimit`` of
    ``horizon`` steps (the MB-MPO horizon; ``None`` keeps the gymnasium default).

    Args:
        env_id: A registered env id, or an :class:`EnvSpec` (no registry lookup: works in a
            process where the spec was never registered, e.g. a remote Ray actor).
        horizon: Maximum episode length (truncation), or ``None`` for the gymnasium default.
        **overrides: Extra ``gymnasium.make`` kwargs (e.g. ``render_mode``). Overrides may not
            contradict ``make_kwargs`` nor change the time step ``dt``. Overriding reward
            parameters (weights, healthy ranges, ...) is not reflected by the model functions.

    Raises:
        UnsupportedEnvError: If ``env_id`` is not registered.
        ValueError: For an invalid horizon, an override contradicting ``make_kwargs``, or an
            environment whose ``dt`` differs from the one the reward assumes.
    """
    spec = env_id if isinstance(env_id, EnvSpec) else get_env_spec(env_id)
    env_id = spec.env_id
    if horizon is not None and (
        isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon <= 0
    ):
        raise ValueError(f"horizon must be a positive int or None, got {horizon!r}")
    for key, value in overrides.items():
        if key in spec.make_kwargs and spec.make_kwargs[key] != value:
            raise ValueError(
                f"Override {key}={value!r} contradicts {key}={spec.make_kwargs[key]!r} "
                f"required by the model functions of {env_id!r}."
            )
    kwargs = {**spec.make_kwargs, **overrides}
    env = gym.make(env_id, max_episode_steps=None if horizon is None else int(horizon), **kwargs)
    env_dt = getattr(env.unwrapped, "dt", None)
    if spec.dt is not None and env_dt is not None and env_dt != spec.dt:
        env.close()
        raise ValueError(
            f"{env_id!r} was built with dt={env_dt!r} but its reward function assumes "
            f"dt={spec.dt!r}; do not override frame_skip or the model time step."
        )
    if spec.env_wrapper is not None:
        env = spec.env_wrapper(env)
    return env


class PolicyObservation(gym.ObservationWrapper):
    """The env as a policy sees it: without the leading ``start`` observation dims (e.g. the
    x position :func:`make_env` keeps for the model rewards; ``EnvSpec.policy_obs_start``).
    For peers (model-free baselines) that should see the standard observation."""

    def __init__(self, env: gym.Env, start: int):
        super().__init__(env)
        self.start = start
        box = env.observation_space
        self.observation_space = gym.spaces.Box(box.low[start:], box.high[start:],
                                                dtype=box.dtype)

    def observation(self, observation):
        return observation[self.start:]


@dataclass(frozen=True)
class EnvCreator:
    """A picklable env creator that carries its :class:`EnvSpec`.

    ``EnvCreator(spec, horizon)(env_config)`` builds the env with :func:`make_env`; the spec
    travels with the creator (by value), so an actor in another process builds the right env
    and computes the right model rewards even though :func:`register_model_functions` was only
    called in the driver. ``env_config`` entries are passed to ``gymnasium.make`` (RLlib's
    ``num_envs`` is dropped). With ``policy_view`` the env is wrapped in
    :class:`PolicyObservation` (what a model-free peer should see).
    """

    spec: EnvSpec
    horizon: int | None = 200
    policy_view: bool = False
    # gymnasium's registration of spec.env_id where the creator was made (None: not
    # registered there); a process whose gymnasium does not know the id registers it from
    # this, so an env gym.register()-ed only in the driver reaches the remote env runners too
    gym_spec: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.gym_spec is None and self.spec.env_id in gym.registry:
            object.__setattr__(self, "gym_spec", gym.registry[self.spec.env_id])

    def __call__(self, env_config: Mapping[str, Any] | None = None) -> gym.Env:
        if self.gym_spec is not None and self.spec.env_id not in gym.registry:
            gym.registry[self.spec.env_id] = self.gym_spec
        overrides = {k: v for k, v in dict(env_config or {}).items() if k != "num_envs"}
        env = make_env(self.spec, horizon=self.horizon, **overrides)
        return PolicyObservation(env, self.spec.policy_obs_start) if self.policy_view else env

    def __repr__(self) -> str:
        return f"EnvCreator({self.spec.env_id!r}, horizon={self.horizon})"
