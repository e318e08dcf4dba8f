"""Batched imagined rollouts in a dynamics ensemble.

One tensor program per time step covers every (task, rollout) pair: tasks are grouped by the
ensemble member that plays their dynamics, so a single ``sample_next_obs`` call on a ``K x B x D``
tensor steps all members at once (never a gym-style env per model, never a Python loop over
members).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

PolicyFn = Callable[[Tensor, "torch.Generator | None"], "tuple[Tensor, Tensor]"]


class Dynamics(Protocol):
    """What :func:`imagine` needs from a model: a member axis and a batched step."""

    ensemble_size: int

    def sample_next_obs(
        self,
        obs_K_B_D: Tensor,
        act_K_B_A: Tensor,
        *,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


@dataclass
class ImaginedBatch:
    """Imagined trajectories of T tasks x N rollouts x H steps.

    Attributes:
        obs: ``T x N x H x D`` observation at each step.
        actions: ``T x N x H x A`` raw policy samples (before clipping; ``log_probs`` refer
            to these).
        rewards: ``T x N x H`` model rewards (0 after termination).
        dones: ``T x N x H`` bool, True at the step where the rollout terminated.
        mask: ``T x N x H`` 1.0 for steps that happened (up to and including the terminal step).
        log_probs: ``T x N x H`` log-probability of ``actions`` under the sampling policy.
        disagreement: ``T x N x H`` mean over state dims of the std of the members' next-state
            predictions (only when requested, else None).
        next_obs: ``T x N x H x D`` observation after each step.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    dones: Tensor
    mask: Tensor
    log_probs: Tensor
    next_obs: Tensor
    disagreement: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0]

    @property
    def num_steps(self) -> int:
        """Number of valid (unmasked) imagined transitions."""
        return int(self.mask.sum().item())

    def returns(self) -> Tensor:
        """Undiscounted return per rollout, ``T x N``."""
        return (self.rewards * self.mask).sum(-1)

    def to(self, device: torch.device | str) -> ImaginedBatch:
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
            for f in fields(self)
        }
        return ImaginedBatch(**moved)


@dataclass
class StateBounds:
    """Box an imagined transition is clipped to: the next state to ``[obs_low, obs_high]`` and
    the per-step change to ``[delta_low, delta_high]`` (all ``D``-vectors).

    A model queried far outside its data can extrapolate without bound; a policy optimised in
    it then chases astronomically large imagined returns (seen on HalfCheetah-v5 after the
    random-action data: imagined returns of ~1e16). The original MB-MPO code clips imagined
    observations for the same reason.
    """

    obs_low: Tensor
    obs_high: Tensor
    delta_low: Tensor
    delta_high: Tensor

    @classmethod
    def from_transitions(cls, obs, next_obs, margin: float = 1.0) -> StateBounds:
        """The range of the real states and state changes, widened on each side by ``margin``
        times its width (so imagined states may go somewhat beyond what was seen, e.g. a faster
        gait, but not arbitrarily far)."""
        obs, next_obs = torch.as_tensor(obs), torch.as_tensor(next_obs)
        if margin < 0 or obs.ndim != 2 or obs.shape != next_obs.shape or len(obs) == 0:
            raise ValueError("need margin >= 0 and matching non-empty N x D obs / next_obs")

        def widened(x: Tensor) -> tuple[Tensor, Tensor]:
            lo, hi = x.min(0).values, x.max(0).values
            pad = margin * (hi - lo)
            return lo - pad, hi + pad

        obs_low, obs_high = widened(torch.cat((obs, next_obs)))
        delta_low, delta_high = widened(next_obs - obs)
        return cls(obs_low, obs_high, delta_low, delta_high)

    def to(self, device=None, dtype=None) -> StateBounds:
        return StateBounds(*(getattr(self, f.name).to(device=device, dtype=dtype)
                             for f in fields(self)))

    def clip(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        delta = torch.minimum(torch.maximum(next_obs - obs, self.delta_low), self.delta_high)
        return torch.minimum(torch.maximum(obs + delta, self.obs_low), self.obs_high)


def task_members(num_tasks: int, ensemble_size: int) -> Tensor:
    """Member index of every task, ``[T]``: task ``t`` uses member ``t // (T // K)``.

    Every member plays exactly ``T / K`` tasks (legacy RLlib's ``int((i - 1) / K)`` left one
    member unused).
    """
    if ensemble_size < 1 or num_tasks < 1 or num_tasks % ensemble_size:
        raise ValueError(
            f"num_tasks={num_tasks} must be a positive multiple of ensemble_size={ensemble_size} "
            f"so every model is used equally; e.g. set num_tasks={max(1, ensemble_size) * 4}."
        )
    return torch.arange(num_tasks) // (num_tasks // ensemble_size)


def imagine(
    dynamics: Dynamics,
    policy_fn: PolicyFn,
    start_obs_T_N_D: Tensor,
    horizon: int,
    reward_fn: Callable,
    termination_fn: Callable | None,
    *,
    action_low: Tensor | float,
    action_high: Tensor | float,
    generator: torch.Generator | None = None,
    deterministic_model: bool = True,
    compute_disagreement: bool = False,
    bounds: StateBounds | None = None,
) -> ImaginedBatch:
    """Roll a policy out in the ensemble for ``horizon`` steps from real start states.

    Args:
        dynamics: ensemble with ``ensemble_size`` K and ``sample_next_obs(obs_K_B_D, act_K_B_A)``.
        policy_fn: ``(obs_T_N_D, generator) -> (raw_action_T_N_A, log_prob_T_N)``; it may run a
            different policy per task (task-batched parameters).
        start_obs_T_N_D: start states, T tasks (a multiple of K) x N rollouts.
        horizon: H imagined steps.
        reward_fn: ``(obs, act, next_obs) -> reward`` on any leading batch shape.
        termination_fn: ``next_obs -> done`` or None for never-terminating envs.
        action_low, action_high: the action box; actions are clipped to it before the model and
            the reward see them (the env does the same), while the raw sample is stored.
        generator: torch RNG for the policy and a probabilistic model.
        deterministic_model: use the mean prediction of a probabilistic ensemble.
        compute_disagreement: also step every member on every row to measure model disagreement
            (K times the model FLOPs; for diagnostics).
        bounds: if given, every predicted next state is clipped to it (:class:`StateBounds`)
            before the reward and termination functions see it.

    Returns:
        An :class:`ImaginedBatch`. After a rollout terminates, its state is frozen, rewards are 0
        and ``mask`` is 0.
    """
    T, N, D = start_obs_T_N_D.shape
    K = dynamics.ensemble_size
    task_members(T, K)  # validates T % K == 0
    low = torch.as_tensor(action_low, dtype=start_obs_T_N_D.dtype, device=start_obs_T_N_D.device)
    high = torch.as_tensor(action_high, dtype=start_obs_T_N_D.dtype, device=start_obs_T_N_D.device)

    obs_steps, act_steps, rew_steps, done_steps, mask_steps, logp_steps, next_steps = (
        [], [], [], [], [], [], []
    )
    dis_steps = []
    with torch.no_grad():
        obs = start_obs_T_N_D
        alive = torch.ones(T, N, dtype=torch.bool, device=obs.device)
        for _ in range(horizon):
            raw_act, logp = policy_fn(obs, generator)
            act = torch.maximum(torch.minimum(raw_act, high), low)
            A = act.shape[-1]
            # Tasks are member-major, so T x N -> K x (T/K * N) is a free reshape.
            next_obs = dynamics.sample_next_obs(
                obs.reshape(K, -1, D),
                act.reshape(K, -1, A),
                deterministic=deterministic_model,
                generator=generator,
            ).reshape(T, N, D)
            if bounds is not None:
                next_obs = bounds.clip(obs, next_obs)
            if compute_disagreement:
                all_next = dynamics.sample_next_obs(
                    obs.reshape(1, T * N, D).expand(K, -1, -1),
                    act.reshape(1, T * N, A).expand(K, -1, -1),
                    deterministic=True,
                ).reshape(K, T, N, D)
                dis_steps.append(all_next.std(0).mean(-1))
            reward = reward_fn(obs, act, next_obs).to(obs.dtype)
            if termination_fn is None:
                done = torch.zeros_like(alive)
            else:
                done = termination_fn(next_obs).to(torch.bool) & alive
            valid = alive.to(obs.dtype)

            obs_steps.append(obs)
            act_steps.append(raw_act)
            rew_steps.append(reward * valid)
            done_steps.append(done)
            mask_steps.append(valid)
            logp_steps.append(logp)
            next_steps.append(next_obs)

            # A terminated rollout stays in its terminal state (and contributes nothing afterwards).
            obs = torch.where(alive.unsqueeze(-1), next_obs, obs)
            alive = alive & ~done

    stack = lambda xs: torch.stack(xs, dim=2)  # noqa: E731
    return ImaginedBatch(
        obs=stack(obs_steps),
        actions=stack(act_steps),
        rewards=stack(rew_steps),
        dones=stack(done_steps),
        mask=stack(mask_steps),
        log_probs=stack(logp_steps),
        next_obs=stack(next_steps),
        disagreement=stack(dis_steps) if compute_disagreement else None,
    )
