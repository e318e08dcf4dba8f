"""MAML inner step of MB-MPO (Clavera et al. 2018, Eq. 3), for all tasks at once.

Each task ``t`` is an imagined MDP given by ensemble member ``k(t)``. The inner step adapts the
meta-policy with one vanilla policy-gradient step on trajectories of task ``t``::

    theta'_t = theta + alpha * grad_theta J_t(theta),   J_t = E[log pi_theta(a|s) A(s, a)]

where ``alpha`` is :attr:`MetaConfig.inner_lr <mbmpo_ray.meta.config.MetaConfig.inner_lr>`.
Per-task quantities carry a leading axis ``T`` and are computed in one tensor program (see
:class:`~mbmpo_ray.meta.policy.GaussianMLPPolicy`). :func:`adapt_tasks` is the inner loop that
samples, estimates advantages and adapts ``num_inner_steps`` times; both the meta step and the
final adaptation of the task policies run it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from mbmpo_ray.imagination import ImaginedBatch
from mbmpo_ray.meta.config import MetaConfig
from mbmpo_ray.meta.hooks import PhaseFn, no_phase
from mbmpo_ray.meta.policy import GaussianMLPPolicy
from mbmpo_ray.meta.returns import (
    LinearFeatureBaseline,
    compute_returns,
    gae,
    masked_mean,
    normalize_advantages,
)

Params = dict[str, Tensor]
SampleFn = Callable[[Params], ImaginedBatch]


def detach(params: Params) -> Params:
    """``{name: tensor.detach()}`` (no copy)."""
    return {k: v.detach() for k, v in params.items()}


# ---------------------------------------------------------------------------------------- data
@dataclass
class TaskBatch:
    """Policy-optimisation view of an imagined batch (all tensors ``T x N x H [x .]``).

    Attributes:
        obs: ``T x N x H x D`` observations. actions: ``T x N x H x A`` raw actions.
        mask: ``T x N x H`` float validity mask. advantages: ``T x N x H`` (constants).
        old_log_probs: ``T x N x H`` log-probs under the sampling (task) policies.
        returns: ``T x N x H`` discounted returns-to-go.
        values: ``T x N x H`` baseline predictions.
    """

    obs: Tensor
    actions: Tensor
    mask: Tensor
    advantages: Tensor
    old_log_probs: Tensor
    returns: Tensor
    values: Tensor

    def every_kth_rollout(self, k: int) -> TaskBatch:
        """The batch restricted to rollouts ``0, k, 2k, ...`` of every task (``k = 1``: self)."""
        if k == 1:
            return self
        return TaskBatch(*(getattr(self, f.name)[:, ::k] for f in fields(self)))


def imagined_return(batch: Any) -> Tensor:
    """Mean undiscounted return per task: ``mean_n sum_h r * mask`` -> length-T tensor."""
    return (batch.rewards * batch.mask.to(batch.rewards.dtype)).sum(-1).mean(-1)


def estimate_advantages(
    policy: GaussianMLPPolicy,
    task_params: Params,
    batch: ImaginedBatch,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize: bool = True,
    baseline_reg_coeff: float = 1e-5,
) -> TaskBatch:
    """Fit a per-task linear baseline and estimate GAE advantages (and old log-probs).

    Args:
        policy: the policy architecture.
        task_params: the task-batched (leading axis T) params that sampled ``batch``; used to
            recompute ``old_log_probs`` so importance ratios are exactly 1 at the old params.
        batch: an :class:`~mbmpo_ray.imagination.ImaginedBatch` (only ``obs, actions, rewards,
            mask`` are read; ``T x N x H [x .]``).
        gamma, gae_lambda: discount and GAE lambda. normalize: per-task advantage standardising.
        baseline_reg_coeff: initial ridge regulariser of :class:`LinearFeatureBaseline`.

    Returns:
        A :class:`TaskBatch` in the dtype of ``task_params`` (advantages are constants).
    """
    dtype = task_params[next(iter(task_params))].dtype
    obs = batch.obs.detach().to(dtype)
    actions = batch.actions.detach().to(dtype)
    rewards = batch.rewards.detach().to(dtype)
    mask = batch.mask.detach().to(dtype)
    returns = compute_returns(rewards, mask, gamma)
    baseline = LinearFeatureBaseline(reg_coeff=baseline_reg_coeff).fit(obs, returns, mask)
    values = baseline.predict(obs, mask)
    adv = gae(rewards, values, mask, gamma, gae_lambda)
    if normalize:
        adv = normalize_advantages(adv, mask)
    with torch.no_grad():
        old_logp = policy.log_prob(task_params, obs, actions, batched=True)
    return TaskBatch(obs, actions, mask, adv, old_logp, returns, values)


# ---------------------------------------------------------------------------------------- step
def inner_objective(policy: GaussianMLPPolicy, task_params: Params, batch: TaskBatch) -> Tensor:
    """Per-task vanilla-PG surrogate ``J_t = mean_valid(log pi_t(a|s) * A)`` -> length-T tensor.

    Its gradient is the REINFORCE / GAE policy gradient of Eq. 3 (to be MAXIMISED).
    """
    logp = policy.log_prob(task_params, batch.obs, batch.actions, batched=True)
    return masked_mean(logp * batch.advantages, batch.mask, dims=(1, 2))


def inner_gradients(
    policy: GaussianMLPPolicy,
    task_params: Params,
    batch: TaskBatch,
    create_graph: bool = False,
) -> tuple[Params, Params]:
    """Per-task gradients ``grad J_t`` of :func:`inner_objective` in ONE backward pass.

    Args:
        task_params: task-batched params (leading axis T), e.g. an expanded view of theta.
        create_graph: keep the graph of the gradient (second-order MAML).

    Returns:
        ``(inputs, grads)``: the tensors differentiated (``task_params`` itself where it
        requires grad, else a detached leaf copy) and the matching gradients (T-batched).
    """
    inputs = {
        k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in task_params.items()
    }
    with torch.enable_grad():
        objective = inner_objective(policy, inputs, batch).sum()
        grads = torch.autograd.grad(
            objective, list(inputs.values()), create_graph=create_graph, allow_unused=True
        )
    out = {
        k: torch.zeros_like(v) if g is None else g
        for (k, v), g in zip(inputs.items(), grads, strict=True)
    }
    return inputs, out


def apply_inner_step(
    inputs: Params, grads: Params, inner_lr: float, first_order: bool = False
) -> Params:
    """``theta'_t = theta_t + inner_lr * grad_t`` (the gradient detached if ``first_order``).

    ``inputs, grads`` as returned by :func:`inner_gradients` (T-batched).
    """
    if first_order:
        return {k: inputs[k] + inner_lr * grads[k].detach() for k in inputs}
    return {k: inputs[k] + inner_lr * grads[k] for k in inputs}


def adapt(
    policy: GaussianMLPPolicy,
    params: Params,
    batch: TaskBatch,
    inner_lr: float,
    first_order: bool = False,
    batched_params: bool = False,
    gradients: tuple[Params, Params] | None = None,
) -> Params:
    """One MAML inner step (Eq. 3) for all T tasks at once.

    ``theta'_t = theta + alpha * grad_theta J_t(theta)`` where ``J_t`` is evaluated on task
    ``t``'s trajectories. ``theta`` is expanded to a task axis (``p.unsqueeze(0).expand(T,..)``,
    a differentiable view), the T per-task objectives are summed and differentiated once, so
    the result stays a function of ``params`` (second order) unless ``first_order`` (then the
    inner gradient is detached: ``d theta'_t / d theta = I``).

    Args:
        policy: architecture. params: unbatched ``theta`` (or T-batched if ``batched_params``).
        batch: per-task trajectories with constant advantages (leading axis T).
        inner_lr: inner step size alpha; ``0`` returns the expanded params bit for bit.
        first_order: drop second-order terms.
        batched_params: ``params`` already carry the task axis (further inner steps).
        gradients: ``(inputs, grads)`` already computed by :func:`inner_gradients` for these
            (T-batched) params and ``batch`` without a graph, e.g. for diagnostics; reused
            instead of a second backward pass. Only with ``first_order``.

    Returns:
        T-batched adapted params.
    """
    if gradients is not None and not first_order:
        raise ValueError("adapt: precomputed gradients have no graph; use first_order=True")
    num_tasks = batch.obs.shape[0]
    task_params = params if batched_params else policy.expand_params(params, num_tasks)
    if inner_lr == 0.0:
        return dict(task_params)
    if gradients is None:
        gradients = inner_gradients(policy, task_params, batch, create_graph=not first_order)
    inputs, grads = gradients
    return apply_inner_step(inputs, grads, inner_lr, first_order)


def adapt_steps(
    policy: GaussianMLPPolicy,
    params: Params,
    batches: Sequence[TaskBatch],
    inner_lr: float,
    first_order: bool = False,
) -> Params:
    """Chain of ``len(batches)`` inner steps starting from unbatched ``params``.

    Step ``k`` uses ``batches[k]`` (sampled with the params after ``k`` steps). Returns the
    T-batched adapted params, differentiable w.r.t. ``params`` through every step.
    """
    task_params = params
    for i, b in enumerate(batches):
        task_params = adapt(policy, task_params, b, inner_lr, first_order, batched_params=i > 0)
    return task_params


# ---------------------------------------------------------------------------------------- loop
@dataclass
class AdaptedTasks:
    """Outcome of :func:`adapt_tasks`.

    Attributes:
        task_params: T-batched, detached params after ``num_inner_steps`` inner steps.
        batches: the pre-update :class:`TaskBatch` of every inner step (``batches[k]`` was
            sampled with the params after ``k`` steps).
        first_raw: the :class:`~mbmpo_ray.imagination.ImaginedBatch` of step 0 (sampled
            with ``theta``).
        first_grads: the per-task inner gradients of step 0 (T-batched), if requested.
        sample_seconds: wall time spent in ``sample_fn``.
    """

    task_params: Params
    batches: list[TaskBatch]
    first_raw: ImaginedBatch
    first_grads: Params | None
    sample_seconds: float


def sample_tasks(sample_fn: SampleFn, task_params: Params, num_tasks: int) -> ImaginedBatch:
    """``sample_fn(task_params)``, checking that it returned ``num_tasks`` tasks."""
    raw = sample_fn(task_params)
    if raw.obs.shape[0] != num_tasks:
        raise ValueError(
            f"sample_fn returned {raw.obs.shape[0]} tasks but {num_tasks} were expected "
            "(config.num_tasks, or this learner's share of them)"
        )
    return raw


def adapt_tasks(
    policy: GaussianMLPPolicy,
    params: Params,
    sample_fn: SampleFn,
    config: MetaConfig,
    with_first_grads: bool = False,
    *,
    num_tasks: int | None = None,
    phase: PhaseFn = no_phase,
) -> AdaptedTasks:
    """The inner loop: ``config.num_inner_steps`` times sample, estimate advantages, adapt.

    Starts from ``theta`` expanded to ``num_tasks`` tasks. Every step calls
    ``sample_fn`` with the current (detached) task params, fits the baselines
    (:func:`estimate_advantages`) and takes one first-order inner step (:func:`adapt`); the
    adapted params are detached (the outer step re-runs the inner steps on ``batches`` to
    differentiate through them).

    Args:
        policy: architecture. params: unbatched, detached ``theta``.
        sample_fn: ``sample_fn(task_params) -> ImaginedBatch`` with T-batched params.
        config: a validated :class:`~mbmpo_ray.meta.config.MetaConfig`.
        with_first_grads: also return the per-task inner gradients of step 0 (computed even
            when ``inner_lr == 0``; the same single backward pass serves the step).
        num_tasks: this learner's number of tasks (default ``config.num_tasks``: all).
        phase: phase hook (:mod:`~mbmpo_ray.meta.hooks`): per step ``sample_pre``,
            ``advantages_pre``, ``inner_gradient`` (step 0 with ``with_first_grads``), ``adapt``.

    Returns:
        :class:`AdaptedTasks` (T-batched adapted params, the ``num_inner_steps`` batches, ...).
    """
    num_tasks = config.num_tasks if num_tasks is None else num_tasks
    task_params = policy.expand_params(params, num_tasks)
    batches: list[TaskBatch] = []
    first_raw, grads0, t_sample = None, None, 0.0
    for k in range(config.num_inner_steps):
        ts = time.perf_counter()
        with phase("sample_pre"):
            raw = sample_tasks(sample_fn, task_params, num_tasks)
        t_sample += time.perf_counter() - ts
        with phase("advantages_pre"):
            tb = estimate_advantages(policy, task_params, raw, config.gamma, config.gae_lambda,
                                     config.normalize_advantages, config.baseline_reg_coeff)
        batches.append(tb)
        gradients = None
        if k == 0:
            first_raw = raw
            if with_first_grads:
                with phase("inner_gradient"):
                    gradients = inner_gradients(policy, task_params, tb, create_graph=False)
                grads0 = gradients[1]
        with phase("adapt"):
            adapted = adapt(policy, task_params, tb, config.inner_lr, first_order=True,
                            batched_params=True, gradients=gradients)
        task_params = detach(adapted)
    return AdaptedTasks(task_params, batches, first_raw, grads0, t_sample)
