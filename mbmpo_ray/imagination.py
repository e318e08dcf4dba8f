"""Batched imagined rollouts in a dynamics ensemble.

One tensor program per time step covers every (task, rollout) pair: tasks are grouped by the
ensemble member that plays their dynamics, so a single ``sample_next_obs`` call on a ``K x B x D``
tensor steps all members at once (never a gym-style env per model, never a Python loop over
members).

* :func:`imagine` -- roll a policy out from given ``T x N`` start states;
* :class:`ImaginationSampler` -- draw the start states from real states, then :func:`imagine`
  with task-batched policy parameters (what a meta step samples), for all tasks or one
  learner's share of them, each task with its own random stream (:func:`task_seed`);
* :func:`task_members` -- the task -> member mapping (:func:`first_task_of_each_member`).
* :func:`branched_rollouts` -- MBPO's k-step rollouts from real states, a random elite member
  per row and step (:func:`rollout_length`: MBPO's schedule of k);
* model wrappers: :class:`BiasedDynamics` (the paper's model-bias experiment) and
  :class:`AutocastDynamics` (bfloat16 where :func:`bf16_is_fast`).

Only torch is needed here (no Ray, and no import of :mod:`mbmpo_ray.meta`, which imports this
module): the policy is duck-typed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

PolicyFn = Callable[[Tensor, "torch.Generator | None"], "tuple[Tensor, Tensor]"]


class TaskBatchedPolicy(Protocol):
    """What :class:`ImaginationSampler` needs from a Gaussian policy (e.g.
    :class:`mbmpo_ray.meta.GaussianMLPPolicy`): ``mean_and_log_std(params, obs_T_N_D,
    batched=True) -> (mean_T_N_A, log_std_T_N_A)`` with one parameter set per task (the
    sampler draws the noise itself, per task: :func:`gaussian_sample`)."""

    def mean_and_log_std(
        self, params: dict[str, Tensor], obs: Tensor, batched: bool = False
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


class BiasedDynamics:
    """A model whose member ``k`` adds ``N(b_k, std^2)`` noise to every next state it predicts:
    the MB-MPO paper's model-bias experiment (``b_k ~ U[0, b_max]`` drawn once per member;
    the noise is drawn from the ``generator`` of each step)."""

    def __init__(self, dynamics: Dynamics, bias_K: Tensor | np.ndarray, std: float = 0.1):
        self.dynamics, self.ensemble_size = dynamics, dynamics.ensemble_size
        self.bias_K = torch.as_tensor(np.asarray(bias_K, dtype=np.float64))
        if self.bias_K.shape != (self.ensemble_size,):
            raise ValueError(f"bias_K must have one entry per member ({self.ensemble_size}), "
                             f"got shape {tuple(self.bias_K.shape)}")
        self.std = float(std)

    def sample_next_obs(self, obs_K_B_D: Tensor, act_K_B_A: Tensor, *,
                        deterministic: bool = True,
                        generator: torch.Generator | None = None) -> Tensor:
        nxt = self.dynamics.sample_next_obs(obs_K_B_D, act_K_B_A, deterministic=deterministic,
                                            generator=generator)
        noise = torch.randn(nxt.shape, generator=generator, dtype=nxt.dtype, device=nxt.device)
        bias = self.bias_K.to(nxt).view(-1, *([1] * (nxt.ndim - 1)))
        return nxt + bias + self.std * noise


class AutocastDynamics:
    """A model run under ``torch.autocast`` (e.g. bfloat16 matmuls on AMX CPUs and GPUs); its
    predictions are returned in the input dtype."""

    def __init__(self, dynamics: Dynamics, dtype: torch.dtype = torch.bfloat16):
        self.dynamics, self.ensemble_size, self.dtype = dynamics, dynamics.ensemble_size, dtype

    def sample_next_obs(self, obs_K_B_D: Tensor, act_K_B_A: Tensor, *,
                        deterministic: bool = True,
                        generator: torch.Generator | None = None) -> Tensor:
        with torch.autocast(obs_K_B_D.device.type, dtype=self.dtype):
            nxt = self.dynamics.sample_next_obs(obs_K_B_D, act_K_B_A,
                                                deterministic=deterministic, generator=generator)
        return nxt.to(obs_K_B_D.dtype)


@functools.cache
def bf16_is_fast(device_type: str = "cpu") -> bool:
    """Whether bfloat16 matmuls are clearly faster than float32 here: a GPU that supports
    bf16, or a CPU with bf16 dot-product units (AVX512-BF16 or AMX; 1.7x per SAC update on an
    AVX512-BF16 EPYC, 2026-11-24). Other CPUs emulate bf16, 10-70x slower. Read from the CPU's
    feature flags, not timed: a timing probe of small matmuls sat near its threshold on a busy
    machine (0.63x against 0.7x on 2026-12-06) and could choose either dtype."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(precision: str, device_type: str = "cpu") -> torch.dtype | None:
    """The autocast dtype of a ``*_precision`` setting: ``torch.bfloat16`` for "bfloat16", and
    for "auto" where :func:`bf16_is_fast`; None (no autocast, float32) otherwise."""
    if precision == "bfloat16" or (precision == "auto" and bf16_is_fast(device_type)):
        return torch.bfloat16
    return None


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


_LOG_2PI = float(np.log(2.0 * np.pi))


def task_seed(seed: int, task: int) -> int:
    """The seed of task ``task``'s random stream in a sampler seeded with ``seed`` (a 63-bit
    int from NumPy's ``SeedSequence``; independent streams per task): what a task draws
    depends only on ``(seed, task)``, not on which learner samples it or with which others."""
    state = np.random.SeedSequence(int(seed) % 2**64, spawn_key=(int(task),)).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])


def gaussian_sample(mean: Tensor, log_std: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """``a = mean + exp(log_std) * eps`` and ``log N(a; mean, exp(log_std))`` summed over the
    last axis, from standard-normal ``eps`` (the same numbers as
    :meth:`~mbmpo_ray.meta.GaussianMLPPolicy.sample` drawing that ``eps``)."""
    act = mean + torch.exp(log_std) * eps
    logp = -0.5 * (eps.pow(2) + 2.0 * log_std + _LOG_2PI).sum(-1)
    return act, logp


def _member_slots(members_T: Tensor, ensemble_size: int,
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor] | None:
    """How :func:`imagine` batches T tasks by member: None when they are member-major with
    ``T / K`` tasks each (``T x N -> K x (T/K * N)`` is then a free reshape); else
    ``(slot_K_M, pos_T)``: the task in each of ``M`` (the most tasks any member has) slots of
    every member, unused slots padded with task 0 (computed, then dropped), and each task's
    flat slot ``k * M + j`` (both on ``device``)."""
    T, K = members_T.shape[0], ensemble_size
    if members_T.ndim != 1 or T == 0 or int(members_T.min()) < 0 or int(members_T.max()) >= K:
        raise ValueError(f"members must be a non-empty [T] tensor of member indices in "
                         f"[0, {K}), got {members_T.tolist()}")
    if T % K == 0 and torch.equal(members_T.cpu(), torch.arange(T) // (T // K)):
        return None
    members_T = members_T.cpu()
    order = torch.argsort(members_T, stable=True)  # tasks grouped by member, in task order
    counts = torch.bincount(members_T, minlength=K)
    first = torch.cumsum(counts, 0) - counts  # where each member's group starts in ``order``
    j = torch.arange(T) - first[members_T[order]]  # each task's slot within its member
    M = int(counts.max())
    slot = torch.zeros(K, M, dtype=torch.long)
    slot[members_T[order], j] = order
    pos = torch.empty(T, dtype=torch.long)
    pos[order] = members_T[order] * M + j
    return slot.to(device), pos.to(device)


def _step_members(dynamics: Dynamics, obs_T_N_D: Tensor, act_T_N_A: Tensor,
                  slots: tuple[Tensor, Tensor] | None, deterministic: bool,
                  generator: torch.Generator | None) -> Tensor:
    """Every task's next states ``T x N x D`` from one batched model call on ``K x B x D``
    (each task's rows go to its member; ``slots``: :func:`_member_slots`, on the states'
    device)."""
    T, N, D = obs_T_N_D.shape
    K = dynamics.ensemble_size
    if slots is None:  # member-major: a free reshape
        obs, act = obs_T_N_D.reshape(K, -1, D), act_T_N_A.reshape(K, -1, act_T_N_A.shape[-1])
    else:
        obs = obs_T_N_D[slots[0]].reshape(K, -1, D)
        act = act_T_N_A[slots[0]].reshape(K, -1, act_T_N_A.shape[-1])
    nxt = dynamics.sample_next_obs(obs, act, deterministic=deterministic, generator=generator)
    if slots is None:
        return nxt.reshape(T, N, D)
    return nxt.reshape(-1, N, D)[slots[1]]


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
    members: Tensor | None = None,
) -> ImaginedBatch:
    """Roll a policy out in the ensemble for ``horizon`` steps from real start states.

    Args:
        dynamics: ensemble with ``ensemble_size`` K and ``sample_next_obs(obs_K_B_D, act_K_B_A)``.
        policy_fn: ``(obs_T_N_D, generator) -> (raw_action_T_N_A, log_prob_T_N)``; it may run a
            different policy per task (task-batched parameters).
        start_obs_T_N_D: start states, T tasks x N rollouts.
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
        members: ``[T]`` the member that plays each task (e.g. ``task_members(T_all, K)`` of
            one learner's tasks); default ``task_members(T, K)`` (T a multiple of K). Each
            step is one model call on ``K x (M * N) x D``, M the most tasks of one member.

    Returns:
        An :class:`ImaginedBatch`. After a rollout terminates, its state is frozen, rewards are 0
        and ``mask`` is 0.
    """
    T, N, D = start_obs_T_N_D.shape
    K = dynamics.ensemble_size
    if members is None:
        members = task_members(T, K)  # validates T % K == 0
    elif tuple(members.shape) != (T,):
        raise ValueError(f"members must have one entry per task ({T}), got shape "
                         f"{tuple(members.shape)}")
    slots = _member_slots(members, K, start_obs_T_N_D.device)
    low = torch.as_tensor(action_low, dtype=start_obs_T_N_D.dtype, device=start_obs_T_N_D.device)
    high = torch.as_tensor(action_high, dtype=start_obs_T_N_D.dtype, device=start_obs_T_N_D.device)

    steps: dict[str, list[Tensor]] = {f.name: [] for f in fields(ImaginedBatch)}
    with torch.no_grad():
        obs = start_obs_T_N_D
        alive = torch.ones(T, N, dtype=torch.bool, device=obs.device)
        for _ in range(horizon):
            raw_act, logp = policy_fn(obs, generator)
            act = torch.maximum(torch.minimum(raw_act, high), low)
            next_obs = _step_members(dynamics, obs, act, slots, deterministic_model, generator)
            if bounds is not None:
                next_obs = bounds.clip(obs, next_obs)
            if compute_disagreement:
                steps["disagreement"].append(member_disagreement(dynamics, obs, act))
            reward = reward_fn(obs, act, next_obs).to(obs.dtype)
            if termination_fn is None:
                done = torch.zeros_like(alive)
            else:
                done = termination_fn(next_obs).to(torch.bool) & alive
            valid = alive.to(obs.dtype)
            for name, x in (("obs", obs), ("actions", raw_act), ("rewards", reward * valid),
                            ("dones", done), ("mask", valid), ("log_probs", logp),
                            ("next_obs", next_obs)):
                steps[name].append(x)
            # A terminated rollout stays in its terminal state (and contributes nothing afterwards).
            obs = torch.where(alive.unsqueeze(-1), next_obs, obs)
            alive = alive & ~done
    return ImaginedBatch(**{k: torch.stack(v, dim=2) if v else None for k, v in steps.items()})


def member_disagreement(dynamics: Dynamics, obs_T_N_D: Tensor, act_T_N_A: Tensor) -> Tensor:
    """``T x N`` mean over state dims of the std of all K members' mean next-state predictions
    (every member steps every row: K times the model FLOPs of one imagined step)."""
    T, N, D = obs_T_N_D.shape
    K = dynamics.ensemble_size
    all_next = dynamics.sample_next_obs(
        obs_T_N_D.reshape(1, T * N, D).expand(K, -1, -1),
        act_T_N_A.reshape(1, T * N, -1).expand(K, -1, -1),
        deterministic=True,
    ).reshape(K, T, N, D)
    return all_next.std(0).mean(-1)


class ImaginationSampler:
    """Draws start states from real states and imagines H steps with task-batched policy
    params, for all T tasks or one learner's share ``tasks`` of them.

    Every task has its own random stream (a generator seeded with :func:`task_seed` of
    ``(seed, task)``): on each call it draws its N start states (uniformly, with replacement,
    from ``start_obs_M_D``; one ``torch.randint``) and then the policy noise of all H steps
    (one ``N(0, 1)`` block ``H x N x A``). So a seeded sampler gives the same sequence of
    batches, and task t's rollouts are the same whichever learner samples it with whichever
    other tasks. The model's own noise (a probabilistic model sampled with
    ``deterministic_model=False``, or :class:`BiasedDynamics`) comes from one further stream
    per sampler, so it does depend on the split.

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
        seed: seeds the streams (None: a seed drawn from torch's global generator).
        tasks: the tasks this sampler imagines (default all T; e.g. one learner's share,
            ``range(rank, T, world_size)``): batches hold task ``tasks[i]`` at index i.
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
        seed: int | None,
        tasks: Sequence[int] | None = None,
        deterministic_model: bool = True,
        bounds: StateBounds | None = None,
    ) -> None:
        members = task_members(num_tasks, dynamics.ensemble_size)  # validates T % K == 0
        tasks = list(range(num_tasks) if tasks is None else tasks)
        if not tasks or len(set(tasks)) < len(tasks) or not all(0 <= t < num_tasks
                                                                 for t in tasks):
            raise ValueError(f"tasks must be distinct task indices in [0, {num_tasks}), got "
                             f"{tasks}")
        if start_obs_M_D.ndim != 2 or len(start_obs_M_D) == 0:
            raise ValueError(f"start_obs_M_D must be a non-empty M x D tensor, got shape "
                             f"{tuple(start_obs_M_D.shape)}")
        if rollouts_per_task < 1 or horizon < 1:
            raise ValueError(f"rollouts_per_task and horizon must be >= 1, got "
                             f"{rollouts_per_task} and {horizon}")
        ref = start_obs_M_D
        self.dynamics, self.policy, self.start_obs = dynamics, policy, start_obs_M_D
        self.num_tasks, self.rollouts_per_task = int(num_tasks), int(rollouts_per_task)
        self.tasks, self.members = tasks, members[tasks].to(ref.device)
        self.horizon = int(horizon)
        self.reward_fn, self.termination_fn = reward_fn, termination_fn
        self.action_low = torch.as_tensor(action_low, dtype=ref.dtype, device=ref.device)
        self.action_high = torch.as_tensor(action_high, dtype=ref.dtype, device=ref.device)
        if seed is None:
            seed = int(torch.randint(2**62, (), dtype=torch.long))
        new_gen = lambda key: torch.Generator(device=ref.device).manual_seed(  # noqa: E731
            task_seed(seed, key))
        self.task_generators = [new_gen(t) for t in tasks]
        # the model's noise: one stream of this share of the tasks (keys past the tasks')
        self.model_generator = new_gen(self.num_tasks + tasks[0])
        self.deterministic_model = deterministic_model
        self.bounds = None if bounds is None else bounds.to(device=ref.device, dtype=ref.dtype)

    def disagreement(self, obs_T_N_D: Tensor, act_T_N_A: Tensor) -> Tensor:
        """:func:`member_disagreement` of the model on states and raw actions (clipped to the
        action box first, as in the rollouts)."""
        act = torch.maximum(torch.minimum(act_T_N_A, self.action_high), self.action_low)
        return member_disagreement(self.dynamics, obs_T_N_D, act)

    def start_states(self) -> Tensor:
        """``T x N x D`` start states drawn from the real states (one ``torch.randint`` of
        each task's stream)."""
        start, n = self.start_obs, self.rollouts_per_task
        idx = torch.stack([torch.randint(len(start), (n,), generator=g, device=start.device)
                           for g in self.task_generators])
        return start[idx]

    def policy_noise(self, act_dim: int) -> Tensor:
        """``T x H x N x A`` standard-normal policy noise of a call (one block per task)."""
        ref = self.start_obs
        shape = (self.horizon, self.rollouts_per_task, act_dim)
        return torch.stack([torch.randn(shape, generator=g, dtype=ref.dtype, device=ref.device)
                            for g in self.task_generators])

    def __call__(self, task_params: dict[str, Tensor]) -> ImaginedBatch:
        """Imagined rollouts of task ``tasks[i]``'s policy ``task_params[..][i]`` (every
        parameter has a leading task axis ``len(tasks)``) from fresh start states."""
        start = self.start_states()
        noise: list[Tensor] = []  # the T x N x A noise of each step, drawn at the first

        def policy_fn(obs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
            mean, log_std = self.policy.mean_and_log_std(task_params, obs, batched=True)
            if not noise:
                noise.extend(self.policy_noise(mean.shape[-1]).unbind(1)[::-1])
            return gaussian_sample(mean, log_std, noise.pop())

        return imagine(
            self.dynamics,
            policy_fn,
            start,
            self.horizon,
            self.reward_fn,
            self.termination_fn,
            action_low=self.action_low,
            action_high=self.action_high,
            generator=self.model_generator,
            deterministic_model=self.deterministic_model,
            bounds=self.bounds,
            members=self.members,
        )


# ----------------------------------------------------------------------------- MBPO
class EliteDynamics(Protocol):
    """What :func:`branched_rollouts` needs from a model (e.g. a probabilistic
    ``DynamicsEnsemble``): one step of ``B`` rows, each by a random elite member."""

    def sample_elite_next_obs(
        self,
        obs_B_D: Tensor,
        act_B_A: Tensor,
        generator: torch.Generator | None = None,
        *,
        deterministic: bool = False,
    ) -> Tensor: ...


@dataclass
class BranchedRollouts:
    """Model transitions of MBPO's branched rollouts, flattened to rows.

    Rows are ordered chunk by chunk (see ``max_rows_per_call``), step by step within a chunk.

    Attributes:
        obs, next_obs: ``M x D`` states before and after each model step.
        actions: ``M x A`` the actions the model and the reward saw (clipped to the box).
        rewards: ``M`` model rewards.
        dones: ``M`` bool, True where the termination function ended the rollout.
        rows_per_step: ``[length]`` rows generated at each step (summed over chunks): rollouts
            still alive at that step.
        dropped: rollouts stopped because the model predicted a non-finite state or reward
            (those rows are not returned).
    """

    obs: Tensor
    actions: Tensor
    next_obs: Tensor
    rewards: Tensor
    dones: Tensor
    rows_per_step: Tensor
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def as_numpy(self) -> dict[str, object]:
        """The rows as NumPy arrays under the buffer's keys (``obs, act, next_obs, reward,
        done``), e.g. for ``TransitionBuffer.add(**rollouts.as_numpy())``."""
        return {"obs": self.obs.cpu().numpy(), "act": self.actions.cpu().numpy(),
                "next_obs": self.next_obs.cpu().numpy(),
                "reward": self.rewards.cpu().numpy(), "done": self.dones.cpu().numpy()}


def rollout_length(epoch: float, schedule: tuple[float, float, int, int]) -> int:
    """MBPO's rollout length k at ``epoch``: ``schedule = (epoch_a, epoch_b, k_a, k_b)`` gives
    ``k_a`` up to ``epoch_a``, then a linear ramp reaching ``k_b`` at ``epoch_b`` (and ``k_b``
    after it), rounded down; at least 1."""
    epoch_a, epoch_b, k_a, k_b = schedule
    if epoch_b < epoch_a or min(k_a, k_b) < 1:
        raise ValueError(f"rollout schedule needs epoch_a <= epoch_b and k >= 1, got {schedule}")
    if epoch <= epoch_a:
        return int(k_a)
    frac = 1.0 if epoch_b == epoch_a else min(1.0, (epoch - epoch_a) / (epoch_b - epoch_a))
    return max(1, int(k_a + frac * (k_b - k_a)))


def _cat(xs: list[Tensor], empty_shape: tuple[int, ...], ref: Tensor,
         dtype: torch.dtype | None = None) -> Tensor:
    """``torch.cat(xs)``, or an empty tensor of ``empty_shape`` like ``ref`` if none."""
    if xs:
        return torch.cat(xs)
    return torch.zeros(empty_shape, dtype=dtype or ref.dtype, device=ref.device)


def _model_step(obs: Tensor, dynamics: EliteDynamics, policy_fn: Callable,
                generator: torch.Generator | None, low: Tensor, high: Tensor,
                deterministic: bool, bounds: StateBounds | None, reward_fn: Callable,
                termination_fn: Callable | None) -> tuple[Tensor, ...]:
    """One branched-rollout step of every live row ``obs_B_D``: the policy acts (clipped to
    the box), a random elite predicts, the env's functions score; rows whose prediction or
    reward is not finite are left out. Returns ``(obs, act, next_obs, reward, done)``."""
    act = torch.maximum(torch.minimum(policy_fn(obs, generator), high), low)
    nxt = dynamics.sample_elite_next_obs(obs, act, generator, deterministic=deterministic)
    if bounds is not None:
        nxt = bounds.clip(obs, nxt)
    rew = reward_fn(obs, act, nxt).to(obs.dtype)
    done = (torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)
            if termination_fn is None else termination_fn(nxt).to(torch.bool))
    ok = torch.isfinite(nxt).all(-1) & torch.isfinite(rew)
    if not bool(ok.all()):
        return obs[ok], act[ok], nxt[ok], rew[ok], done[ok]
    return obs, act, nxt, rew, done


def branched_rollouts(
    dynamics: EliteDynamics,
    policy_fn: Callable[[Tensor, torch.Generator | None], Tensor],
    start_obs_B_D: Tensor,
    length: int,
    reward_fn: Callable,
    termination_fn: Callable | None,
    *,
    action_low: Tensor | float,
    action_high: Tensor | float,
    generator: torch.Generator | None = None,
    deterministic_model: bool = False,
    bounds: StateBounds | None = None,
    max_rows_per_call: int | None = None,
) -> BranchedRollouts:
    """MBPO's k-step branched rollouts (Janner et al. 2019) from real start states.

    Every step is one tensor program over all live rows: the policy acts, each row's next
    state comes from an elite member drawn at random for that row and step, sampled from its
    Gaussian (:meth:`~mbmpo_ray.models.DynamicsEnsemble.sample_elite_next_obs`), and the env's
    own reward and termination functions score it. A terminated rollout stops (its terminal
    transition is kept); so does one whose prediction is not finite (that row is dropped).

    Args:
        dynamics: model with ``sample_elite_next_obs(obs_B_D, act_B_A, generator,
            deterministic=...)``.
        policy_fn: ``(obs_B_D, generator) -> act_B_A`` actions in the env's action space
            (clipped to ``[action_low, action_high]`` here, as the env would).
        start_obs_B_D: ``B x D`` real start states (their device and dtype are the rollouts').
        length: k, model steps per rollout.
        reward_fn: ``(obs, act, next_obs) -> reward``; termination_fn: ``next_obs -> done`` (or
            None: never terminates).
        action_low, action_high: the action box.
        generator: torch RNG for the member choice and the Gaussian samples (and passed to
            ``policy_fn``).
        deterministic_model: use each chosen member's mean instead of a sample.
        bounds: if given, predicted states are clipped to it (:class:`StateBounds`).
        max_rows_per_call: start states per chunk (memory bound: every member steps every row
            of a chunk); None: all at once.

    Returns:
        :class:`BranchedRollouts` with at most ``B * length`` rows.
    """
    B, D = start_obs_B_D.shape
    if length < 1:
        raise ValueError(f"rollout length must be >= 1, got {length}")
    ref = start_obs_B_D
    low = torch.as_tensor(action_low, dtype=ref.dtype, device=ref.device)
    high = torch.as_tensor(action_high, dtype=ref.dtype, device=ref.device)
    if bounds is not None:
        bounds = bounds.to(device=ref.device, dtype=ref.dtype)
    chunk = B if not max_rows_per_call else max(1, int(max_rows_per_call))
    out: dict[str, list[Tensor]] = {k: [] for k in ("obs", "act", "next", "rew", "done")}
    rows_per_step = torch.zeros(length, dtype=torch.long)
    dropped = 0
    step_args = (dynamics, policy_fn, generator, low, high, deterministic_model, bounds,
                 reward_fn, termination_fn)
    with torch.no_grad():
        for start in range(0, B, chunk):
            obs = start_obs_B_D[start:start + chunk]
            for step in range(length):
                if obs.shape[0] == 0:
                    break
                rows = _model_step(obs, *step_args)
                dropped += obs.shape[0] - rows[0].shape[0]
                for name, x in zip(("obs", "act", "next", "rew", "done"), rows, strict=True):
                    out[name].append(x)
                rows_per_step[step] += rows[0].shape[0]
                obs = rows[2][~rows[4]]  # the next states of the rows that go on
    A = low.shape[-1] if low.ndim else 0
    return BranchedRollouts(
        obs=_cat(out["obs"], (0, D), ref),
        actions=_cat(out["act"], (0, A), ref),
        next_obs=_cat(out["next"], (0, D), ref),
        rewards=_cat(out["rew"], (0,), ref),
        dones=_cat(out["done"], (0,), ref, torch.bool),
        rows_per_step=rows_per_step,
        dropped=dropped,
    )
