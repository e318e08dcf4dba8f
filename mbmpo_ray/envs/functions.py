"""Exact, backend-agnostic reward and termination functions for the supported environments.

Every function in this module is written once and works on NumPy arrays (returning NumPy)
and on torch tensors (returning torch tensors on the same device, with the same floating
dtype). Inputs may have any number of leading batch dimensions: ``obs`` and ``next_obs``
have shape ``[..., obs_dim]`` and ``act`` has shape ``[..., act_dim]``; rewards and
termination flags have the leading shape ``[...]``.

The functions reproduce the reward and termination logic of the gymnasium environments
*term by term* (same constants, same defaults, same order of floating point operations
wherever possible). They assume the observation layout produced by
:func:`mbmpo_ray.envs.make_env`, i.e. the environments are built with
``exclude_current_positions_from_observation=False`` so that the x (and y) position
needed for the finite-difference forward velocity is part of the observation.

Observation layouts (with the positions kept):

* ``Pendulum-v1``: ``[cos(theta), sin(theta), theta_dot]``.
* ``InvertedPendulum-v5``: ``[qpos(2), qvel(2)]``.
* ``Swimmer-v5``: ``[x, y, qpos[2:](3), qvel(5)]``.
* ``HalfCheetah-v5``: ``[x, qpos[1:](8), qvel(9)]``.
* ``Hopper-v5``: ``[x, z, angle, qpos[3:](3), clip(qvel, -10, 10)(6)]``.
* ``Walker2d-v5``: ``[x, z, angle, qpos[3:](6), clip(qvel, -10, 10)(9)]``.
* ``Ant-v5``: ``[x_torso, y_torso, qpos[2:](13), qvel(14), clip(cfrc_ext[1:], -1, 1)(78)]``
  where ``x_torso, y_torso`` are the torso *body* position ``data.body(1).xpos[:2]`` that the
  Ant reward differentiates (see :class:`mbmpo_ray.envs.registry.MainBodyXYObservation`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Array = np.ndarray | torch.Tensor

# ---------------------------------------------------------------------------------------------
# Environment constants (gymnasium 1.x defaults). ``dt = model.opt.timestep * frame_skip`` is
# written as the same product the environment evaluates so that it is bit-identical.
# ---------------------------------------------------------------------------------------------
PENDULUM_DT = 0.05
PENDULUM_MAX_TORQUE = 2.0

INVERTED_PENDULUM_DT = 0.02 * 2
INVERTED_PENDULUM_MAX_ANGLE = 0.2

SWIMMER_DT = 0.01 * 4
SWIMMER_FORWARD_REWARD_WEIGHT = 1.0
SWIMMER_CTRL_COST_WEIGHT = 1e-4

HALF_CHEETAH_DT = 0.01 * 5
HALF_CHEETAH_FORWARD_REWARD_WEIGHT = 1.0
HALF_CHEETAH_CTRL_COST_WEIGHT = 0.1

HOPPER_DT = 0.002 * 4
HOPPER_FORWARD_REWARD_WEIGHT = 1.0
HOPPER_CTRL_COST_WEIGHT = 1e-3
HOPPER_HEALTHY_REWARD = 1.0
HOPPER_HEALTHY_STATE_RANGE = (-100.0, 100.0)
HOPPER_HEALTHY_Z_RANGE = (0.7, float("inf"))
HOPPER_HEALTHY_ANGLE_RANGE = (-0.2, 0.2)

WALKER2D_DT = 0.002 * 4
WALKER2D_FORWARD_REWARD_WEIGHT = 1.0
WALKER2D_CTRL_COST_WEIGHT = 1e-3
WALKER2D_HEALTHY_REWARD = 1.0
WALKER2D_HEALTHY_Z_RANGE = (0.8, 2.0)
WALKER2D_HEALTHY_ANGLE_RANGE = (-1.0, 1.0)

ANT_DT = 0.01 * 5
ANT_FORWARD_REWARD_WEIGHT = 1.0
ANT_CTRL_COST_WEIGHT = 0.5
ANT_CONTACT_COST_WEIGHT = 5e-4
ANT_HEALTHY_REWARD = 1.0
ANT_HEALTHY_Z_RANGE = (0.2, 1.0)
ANT_CONTACT_FORCE_RANGE = (-1.0, 1.0)
ANT_STATE_DIM = 15 + 14  # qpos (x, y kept) + qvel; the clipped contact forces follow.


# ---------------------------------------------------------------------------------------------
# Backend helpers.
# ---------------------------------------------------------------------------------------------
def _xp(x: Array) -> Any:
    """Return the array namespace (``torch`` or ``numpy``) matching ``x``."""
    return torch if isinstance(x, torch.Tensor) else np


def _prepare(*arrays: Any) -> tuple[Array, ...]:
    """Bring all inputs onto one backend.

    If any input is a torch tensor, all inputs become tensors on the device of the first
    tensor with its (floating) dtype. Otherwise all inputs become NumPy arrays; integer and
    boolean arrays are promoted to float64.
    """
    ref = next((a for a in arrays if isinstance(a, torch.Tensor)), None)
    if ref is None:
        out = []
        for a in arrays:
            a = np.asarray(a)
            if not np.issubdtype(a.dtype, np.floating):
                a = a.astype(np.float64)
            out.append(a)
        return tuple(out)
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    return tuple(torch.as_tensor(a, dtype=dtype, device=ref.device) for a in arrays)


def _to_float(mask: Array, like: Array) -> Array:
    """Cast a boolean ``mask`` to the floating dtype of ``like`` (same backend)."""
    if isinstance(mask, torch.Tensor):
        return mask.to(like.dtype)
    return mask.astype(like.dtype)


def _all_false(x: Array) -> Array:
    """Boolean ``False`` array with the leading shape ``x.shape[:-1]`` on ``x``'s backend."""
    if isinstance(x, torch.Tensor):
        return torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
    return np.zeros(x.shape[:-1], dtype=bool)


def _in_open_range(x: Array, bounds: tuple[float, float]) -> Array:
    """``low < x < high`` elementwise (``False`` for NaN, like the environments)."""
    return (x > bounds[0]) & (x < bounds[1])


def _in_closed_range(x: Array, bounds: tuple[float, float]) -> Array:
    """``low <= x <= high`` elementwise (``False`` for NaN, like the environments)."""
    return (x >= bounds[0]) & (x <= bounds[1])


def _forward_velocity(obs: Array, next_obs: Array, dt: float) -> Array:
    """Finite-difference x velocity ``(x_after - x_before) / dt`` from observation index 0."""
    return (next_obs[..., 0] - obs[..., 0]) / dt


def _ctrl_cost(act: Array, weight: float) -> Array:
    """Quadratic control cost ``weight * sum(act ** 2)`` over the last axis."""
    return weight * (act * act).sum(-1)


# ---------------------------------------------------------------------------------------------
# Pendulum-v1.
# ---------------------------------------------------------------------------------------------
def pendulum_reward(obs: Array, act: Array, next_obs: Array) -> Array:
    """Reward of ``Pendulum-v1``.

    ``-(theta ** 2 + 0.1 * theta_dot ** 2 + 0.001 * u ** 2)`` evaluated on the state *before*
    the step, where ``theta = atan2(sin, cos)`` is the angle normalised to ``[-pi, pi]`` and
    ``u`` is the torque clipped to ``[-2, 2]``. ``next_obs`` is unused.
    """
    obs, act, next_obs = _prepare(obs, act, next_obs)
    xp = _xp(obs)
    theta = xp.arctan2(obs[..., 1], obs[..., 0])
    theta_dot = obs[..., 2]
    u = xp.clip(act[..., 0], -PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)
    return -(theta**2 + 0.1 * theta_dot**2 + 0.001 * (u**2))


def no_termination(next_obs: Array) -> Array:
    """Termination function of environments that never terminate (always ``False``)."""
    (next_obs,) = _prepare(next_obs)
    return _all_false(next_obs)


# ---------------------------------------------------------------------------------------------
# InvertedPendulum-v5.
# ---------------------------------------------------------------------------------------------
def inverted_pendulum_termination(next_obs: Array) -> Array:
    """Termination of ``InvertedPendulum-v5``: non-finite obs or ``|hinge angle| > 0.2``."""
    (next_obs,) = _prepare(next_obs)
    xp = _xp(next_obs)
    finite = xp.isfinite(next_obs).all(-1)
    return ~finite | (xp.abs(next_obs[..., 1]) > INVERTED_PENDULUM_MAX_ANGLE)


def inverted_pendulum_reward(obs: Array, act: Array, next_obs: Array) -> Array:
    """Reward of ``InvertedPendulum-v5``: ``1`` if the step did not terminate, else ``0``."""
    obs, act, next_obs = _prepare(obs, act, next_obs)
    return _to_float(~inverted_pendulum_termination(next_obs), next_obs)


# ---------------------------------------------------------------------------------------------
# Swimmer-v5 and HalfCheetah-v5 (never terminate).
# ---------------------------------------------------------------------------------------------
def swimmer_reward(obs: Array, act: Array, next_obs: Array) -> Array:
    """Reward of ``Swimmer-v5``: ``(x' - x) / dt - 1e-4 * |a|^2`` (obs[0] is x)."""
    obs, act, next_obs = _prepare(obs, act, next_obs)
    forward = SWIMMER_FORWARD_REWARD_WEIGHT * _forward_velocity(obs, next_obs, SWIMMER_DT)
    return forward - _ctrl_cost(act, SWIMMER_CTRL_COST_WEIGHT)


def half_cheetah_reward(obs: Array, act: Array, next_obs: Array) -> Array:
    """Reward of ``HalfCheetah-v5``: ``(x' - x) / dt - 0.1 * |a|^2`` (obs[0] is x)."""
    obs, act, next_obs = _prepare(obs, act, next_obs)
    forward = HALF_CHEETAH_FORWARD_REWARD_WEIGHT * _forward_velocity(obs, next_obs, HALF_CHEETAH_DT)
    return forward - _ctrl_cost(act, HALF_CHEETAH_CTRL_COST_WEIGHT)


# ---------------------------------------------------------------------------------------------
# Hopper-v5.
# ---------------------------------------------------------------------------------------------
def _hopper_is_healthy(next_obs: Array) -> Array:
    """``Hopper-v5`` ``is_healthy`` on the observation with x kept (z = obs[1], angle = obs[2]).

    The environment checks ``state_vector()[2:] = [qpos[2:], qvel]`` against ``(-100, 100)``.
    The observation holds ``qvel`` clipped to ``[-10, 10]``, so the velocity part of that check
    can never fail here; it only differs from the environment if ``|qvel| >= 100``.
    """
    state_ok = _in_open_range(next_obs[..., 2:], HOPPER_HEALTHY_STATE_RANGE).all(-1)
    z_ok = _in_open_range(next_obs[..., 1], HOPPER_HEALTHY_Z_RANGE)
    angle_ok = _in_open_range(next_obs[..., 2], HOPPER_HEALTHY_ANGLE_RANGE)
    return state_ok & z_ok & angle_ok


def hopper_termination(next_obs: Array) -> Array:
    """Termination of ``Hopper-v5`` (``terminate_when_unhealthy=True``): ``not is_healthy``."""
    (next_obs,) = _prepare(next_obs)
    return ~_hopper_is_healthy(next_obs)


def hopper_reward(obs: Array, act: Array, next_obs: Array) -> Array:
    """Reward of ``Hopper-v5``: ``(x' - x) / dt + healthy - 1e-3 * |a|^2``."""
    obs, act, next_obs = _prepare(obs, act, next_obs)
    forward = HOPPER_FORWARD_REWARD_WEIGHT * _forward_velocity(obs, next_obs, HOPPER_DT)
    healthy = _to_float(_hopper_is_healthy(next_obs), next_obs) * HOPPER_HEALTHY_REWARD
    return (forward + healthy) - _ctrl_cost(act, HOPPER_CTRL_COST_WEIGHT)


# ---------------------------------------------------------------------------------------------
# Walker2d-v5.
# ---------------------------------------------------------------------------------------------
def _walker2d_is_healthy(next_obs: Array) -> Array:
    """``Walker2d-v5`` ``is_healthy``: ``0.8 < z < 2`` and ``-1 < angle < 1`` (x kept)."""
    z_ok = _in_open_range(next_obs[..., 1], WALKER2D_HEALTHY_Z_RANGE)
    angle_ok = _in_open_range(next_obs[..., 2], WALKER2D_HEALTHY_ANGLE_RANGE)
    return z_ok & angle_ok


def walker2d_termination(next_obs: Array) -> Array:
    """Termination of ``Walker2d-v5`` (``terminate_when_unhealthy=True``): ``not is_healthy``."""
    (next_obs,) = _prepare(next_obs)
    return ~_walker2d_is_healthy(next_obs)


def walker2d_reward(obs: Array, act: Array, next_obs: Array) -> Array:
    """Reward of ``Walker2d-v5``: ``(x' - x) / dt + healthy - 1e-3 * |a|^2``."""
    obs, act, next_obs = _prepare(obs, act, next_obs)
    forward = WALKER2D_FORWARD_REWARD_WEIGHT * _forward_velocity(obs, next_obs, WALKER2D_DT)
    healthy = _to_float(_walker2d_is_healthy(next_obs), next_obs) * WALKER2D_HEALTHY_REWARD
    return (forward + healthy) - _ctrl_cost(act, WALKER2D_CTRL_COST_WEIGHT)


# ---------------------------------------------------------------------------------------------
# Ant-v5.
# ---------------------------------------------------------------------------------------------
def _ant_is_healthy(next_obs: Array) -> Array:
    """``Ant-v5`` ``is_healthy``: finite ``[qpos, qvel]`` and ``0.2 <= z <= 1`` (z = obs[2])."""
    xp = _xp(next_obs)
    finite = xp.isfinite(next_obs[..., :ANT_STATE_DIM]).all(-1)
    return finite & _in_closed_range(next_obs[..., 2], ANT_HEALTHY_Z_RANGE)


def ant_termination(next_obs: Array) -> Array:
    """Termination of ``Ant-v5`` (``terminate_when_unhealthy=True``): ``not is_healthy``."""
    (next_obs,) = _prepare(next_obs)
    return ~_ant_is_healthy(next_obs)


def ant_reward(obs: Array, act: Array, next_obs: Array) -> Array:
    """Reward of ``Ant-v5``.

    ``(x' - x) / dt + healthy - 0.5 * |a|^2 - 5e-4 * |clip(cfrc_ext', -1, 1)|^2`` where ``x`` is
    the torso body x position (obs[0] of :func:`mbmpo_ray.envs.make_env`'s Ant observation)
    and the contact forces are the ones in ``next_obs`` (the world body's ``cfrc_ext[0]``,
    which is not observed, is always zero).
    """
    obs, act, next_obs = _prepare(obs, act, next_obs)
    xp = _xp(next_obs)
    forward = _forward_velocity(obs, next_obs, ANT_DT) * ANT_FORWARD_REWARD_WEIGHT
    healthy = _to_float(_ant_is_healthy(next_obs), next_obs) * ANT_HEALTHY_REWARD
    contact = xp.clip(next_obs[..., ANT_STATE_DIM:], *ANT_CONTACT_FORCE_RANGE)
    contact_cost = ANT_CONTACT_COST_WEIGHT * (contact * contact).sum(-1)
    return (forward + healthy) - (_ctrl_cost(act, ANT_CTRL_COST_WEIGHT) + contact_cost)
