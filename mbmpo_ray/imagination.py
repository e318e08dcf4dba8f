"""Batched imagined rollouts in a dynamics ensemble.

One tensor program per time step covers every (task, rollout) pair: tasks are grouped by the
ensemble member that plays their dynamics, so a single ``sample_next_obs`` call on a ``K x B x D``
tensor steps all members at once (never a gym-style env per model, never a Python loop over
members).

* :func:`imagine` -- roll a policy out from given ``T x N`` start states;
* :class:`ImaginationSampler` -- draw the start states from real states, then :func:`imagine`
  with task-batched policy parameters (what a meta step samples);
* :func:`task_members` -- the task -> member mapping (:func:`first_task_of_each_member`).

Only torch is needed here (no Ray, and no import of :mod:`mbmpo_ray.meta`, which imports this
module): the policy is duck-typed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

PolicyFn = Callable[[Tensor, "torch.Generator | None"], "tuple[Tensor, Tensor]"]


class TaskBatchedPolicy(Protocol):
    """What :class:`ImaginationSampler` needs from a policy (e.g.
    :class:`mbmpo_ray.meta.GaussianMLPPolicy`): ``sample(params, obs_T_N_D, generator,
    batched=True) -> (raw_action_T_N_A, log_prob_T_N)`` with one parameter set per task."""

    def sample(
        self,
        params: dict[str, Tensor],
        obs: Tensor,
        generator: torch.Generator | None = None,
        batched: bool = False,
    ) -> tuple[Tensor, Tensor]: ...


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


def first_task_of_each_member(num_tasks: int, ensemble_size: int) -> list[int]:
    """Index of the first task each member plays, in member order (``K`` ints), from
    :func:`task_members`: e.g. to pick one adapted policy per member."""
    members = task_members(num_tasks, ensemble_size)
    first = torch.ones(num_tasks, dtype=torch.bool)
    first[1:] = members[1:] != members[:-1]
    return torch.nonzero(first).flatten().tolist()


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


class ImaginationSampler:
    """Draws T x N start states from real states and imagines H steps with task-batched policy
    params.

    Every call draws fresh start states (uniformly, with replacement, from ``start_obs_M_D``)
    with one ``torch.randint`` of ``generator``, then runs :func:`imagine` with the same
    generator, so a seeded generator gives the same sequence of batches.

    Args:
        dynamics: the model (:class:`Dynamics`, e.g. a ``DynamicsEnsemble``) with K members.
        policy: duck-typed :class:`TaskBatchedPolicy` (e.g. ``GaussianMLPPolicy``).
        start_obs_M_D: ``M x D`` real states; their device and dtype are those of the rollouts.
        num_tasks: T, a positive multiple of K (task ``t`` runs in member
            ``task_members(T, K)[t]``).
        rollouts_per_task: N.
        horizon: H imagined steps.
        reward_fn, termination_fn, action_low, action_high, deterministic_model, bounds: as
            in :func:`imagine` (the action box is moved to the start states' device and
            dtype, ``bounds`` too).
        generator: torch RNG on the start states' device, for the start states, the policy
            and a probabilistic model.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        policy: TaskBatchedPolicy,
        start_obs_M_D: Tensor,
        *,
        num_tasks: int,
        rollouts_per_task: int,
        horizon: int,
        reward_fn: Callable,
        termination_fn: Callable | None,
        action_low: Tensor | float,
        action_high: Tensor | float,
        generator: torch.Generator | None,
        deterministic_model: bool = True,
        bounds: StateBounds | None = None,
    ) -> None:
        task_members(num_tasks, dynamics.ensemble_size)  # validates T % K == 0
        if start_obs_M_D.ndim != 2 or len(start_obs_M_D) == 0:
            raise ValueError(f"start_obs_M_D must be a non-empty M x D tensor, got shape "
                             f"{tuple(start_obs_M_D.shape)}")
        if rollouts_per_task < 1 or horizon < 1:
            raise ValueError(f"rollouts_per_task and horizon must be >= 1, got "
                             f"{rollouts_per_task} and {horizon}")
        ref = start_obs_M_D
        self.dynamics, self.policy, self.start_obs = dynamics, policy, start_obs_M_D
        self.num_tasks, self.rollouts_per_task = int(num_tasks), int(rollouts_per_task)
        self.horizon = int(horizon)
        self.reward_fn, self.termination_fn = reward_fn, termination_fn
        self.action_low = torch.as_tensor(action_low, dtype=ref.dtype, device=ref.device)
        self.action_high = torch.as_tensor(action_high, dtype=ref.dtype, device=ref.device)
        self.generator = generator
        self.deterministic_model = deterministic_model
        self.bounds = None if bounds is None else bounds.to(device=ref.device, dtype=ref.dtype)

    def start_states(self) -> Tensor:
        """``T x N x D`` start states drawn from the real states (one ``torch.randint``)."""
        start = self.start_obs
        idx = torch.randint(len(start), (self.num_tasks, self.rollouts_per_task),
                            generator=self.generator, device=start.device)
        return start[idx]

    def __call__(self, task_params: dict[str, Tensor]) -> ImaginedBatch:
        """Imagined rollouts of task ``t``'s policy ``task_params[..][t]`` (every parameter
        has a leading task axis T) from fresh start states."""
        policy = self.policy
        return imagine(
            self.dynamics,
            lambda obs, g: policy.sample(task_params, obs, g, batched=True),
            self.start_states(),
            self.horizon,
            self.reward_fn,
            self.termination_fn,
            action_low=self.action_low,
            action_high=self.action_high,
            generator=self.generator,
            deterministic_model=self.deterministic_model,
            bounds=self.bounds,
        )
