"""Outer (meta) step of MB-MPO (Clavera et al. 2018, Eq. 4): TRPO or PPO-clip.

The outer step maximises the mean post-adaptation objective over tasks::

    max_theta  1/T sum_t E_{tau ~ pi_{theta'_t}}[ exp(logp_{theta'_t(theta)} - logp_old) A ]

differentiating THROUGH the inner step(s) :func:`~mbmpo_ray.meta.inner.adapt_steps` (second
order unless ``first_order``). :func:`trpo_outer_step` (the paper's choice) takes a natural
gradient step in a KL trust region on the post-update policies; :func:`ppo_outer_step` takes
a few Adam steps on the clipped surrogate. Tensors are task-batched (leading axis ``T``).

Split over learners, each learner passes its tasks' batches and a ``reduce`` (mean over its
tasks -> mean over all tasks, :func:`~mbmpo_ray.meta.hooks.task_mean_reduction`) that combines
the outer gradient, every KL Hessian-vector product and the line-search values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mbmpo_ray.meta.config import MetaConfig
from mbmpo_ray.meta.hooks import PhaseFn, Reduce, identity, no_phase
from mbmpo_ray.meta.inner import Params, TaskBatch, adapt_steps, detach
from mbmpo_ray.meta.optim import TRPOInfo, make_gauss_newton_hvp, make_hvp, trpo_step
from mbmpo_ray.meta.policy import GaussianMLPPolicy
from mbmpo_ray.meta.returns import masked_mean


# ---------------------------------------------------------------------------------------- losses
def outer_surrogate(policy: GaussianMLPPolicy, task_params: Params, batch: TaskBatch) -> Tensor:
    """Post-adaptation surrogate ``1/T sum_t mean_valid[exp(logp_t - logp_old) * A]`` (scalar).

    ``task_params`` are the (differentiable) adapted params ``theta'_t(theta)``; ``batch`` holds
    the post-update trajectories and their sampling log-probs.
    """
    logp = policy.log_prob(task_params, batch.obs, batch.actions, batched=True)
    ratio = torch.exp(logp - batch.old_log_probs)
    return masked_mean(ratio * batch.advantages, batch.mask, dims=(1, 2)).mean()


def ppo_surrogate(
    policy: GaussianMLPPolicy, task_params: Params, batch: TaskBatch, clip: float = 0.2
) -> Tensor:
    """PPO clipped surrogate ``1/T sum_t mean_valid[min(r A, clip(r, 1-eps, 1+eps) A)]``."""
    logp = policy.log_prob(task_params, batch.obs, batch.actions, batched=True)
    ratio = torch.exp(logp - batch.old_log_probs)
    adv = batch.advantages
    obj = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    return masked_mean(obj, batch.mask, dims=(1, 2)).mean()


def mean_kl(
    policy: GaussianMLPPolicy,
    old_task_params: Params,
    new_task_params: Params,
    obs: Tensor,
    mask: Tensor,
) -> Tensor:
    """``1/T sum_t mean_valid KL(pi_old_t || pi_new_t)`` over (post-update) states (scalar).

    ``obs``: ``T x N x H x D``; ``mask``: ``T x N x H``.
    """
    kl = policy.kl(old_task_params, new_task_params, obs, batched=True)
    return masked_mean(kl, mask, dims=(1, 2)).mean()


# ---------------------------------------------------------------------------------------- TRPO
@dataclass
class TRPOProblem:
    """What :func:`~mbmpo_ray.meta.optim.trpo_step` needs for one outer step (but the HVP).

    Attributes:
        theta0: flat, detached meta-parameters (length ``policy.num_params``).
        old_task_params: detached adapted params ``theta'_t(theta0)`` (T-batched).
        surrogate: ``x -> outer_surrogate`` through the inner step(s) (second order unless
            ``config.first_order``).
        kl: ``x -> mean_kl(theta'(theta0) || theta'(x))`` on the post-update states.
        evaluate: line-search values ``x -> (surrogate, kl)`` as floats: one first-order
            inner step (the same values) shared by both, without a graph; reduced over the
            learners (``surrogate`` and ``kl`` are this learner's share).
    """

    theta0: Tensor
    old_task_params: Params
    surrogate: Callable[[Tensor], Tensor]
    kl: Callable[[Tensor], Tensor]
    evaluate: Callable[[Tensor], tuple[float, float]]


def trpo_problem(
    policy: GaussianMLPPolicy,
    params: Params,
    pre_batches: Sequence[TaskBatch],
    post_batch: TaskBatch,
    config: MetaConfig,
    reduce: Reduce = identity,
) -> TRPOProblem:
    """The closures of :func:`trpo_outer_step`: they re-run :func:`adapt_steps` on the
    PRE-update batches so that ``theta'_t`` is a function of ``theta``. ``reduce`` combines
    the two values of ``evaluate`` across learners (one collective per candidate)."""
    lr = config.inner_lr
    theta0 = policy.flatten(params).detach()
    old = detach(adapt_steps(policy, policy.unflatten(theta0), pre_batches, lr, True))

    def task_params_of(x: Tensor, first_order: bool) -> Params:
        return adapt_steps(policy, policy.unflatten(x), pre_batches, lr, first_order)

    def surrogate(x: Tensor, first_order: bool = config.first_order) -> Tensor:
        return outer_surrogate(policy, task_params_of(x, first_order), post_batch)

    def kl(x: Tensor, first_order: bool = config.first_order) -> Tensor:
        new = task_params_of(x, first_order)
        return mean_kl(policy, old, new, post_batch.obs, post_batch.mask)

    @torch.no_grad()
    def evaluate(x: Tensor) -> tuple[float, float]:
        new = task_params_of(x, True)
        surr = outer_surrogate(policy, new, post_batch)
        kl_new = mean_kl(policy, old, new, post_batch.obs, post_batch.mask)
        if reduce is identity:
            return float(surr), float(kl_new)
        both = reduce(torch.stack([surr, kl_new]))
        return float(both[0]), float(both[1])

    return TRPOProblem(theta0, old, surrogate, kl, evaluate)


def kl_hvp(
    policy: GaussianMLPPolicy,
    problem: TRPOProblem,
    pre_batches: Sequence[TaskBatch],
    post_batch: TaskBatch,
    config: MetaConfig,
    reduce: Reduce = identity,
) -> Callable[[Tensor], Tensor]:
    """Damped KL Hessian-vector product ``v -> (H + cg_damping I) v`` at ``problem.theta0``.

    ``H`` is the Hessian of the mean KL between the post-update policies, per
    ``config.hvp_method`` (see :class:`~mbmpo_ray.meta.config.MetaConfig`), on every
    ``config.hvp_subsample``-th rollout of each task (pre- and post-update batches). The
    graphs are built here, once; each product is one more backward pass, combined across
    learners by ``reduce`` before the damping is added.
    """
    lr, k = config.inner_lr, config.hvp_subsample
    theta0 = problem.theta0
    pre = [b.every_kth_rollout(k) for b in pre_batches]
    post = post_batch.every_kth_rollout(k)
    old = problem.old_task_params
    if k != 1:
        old = detach(adapt_steps(policy, policy.unflatten(theta0), pre, lr, True))
    first_order = config.first_order or config.hvp_method == "first_order"

    def adapted(x: Tensor) -> Params:
        return adapt_steps(policy, policy.unflatten(x), pre, lr, first_order)

    def kl_from_old(new: Params) -> Tensor:
        return mean_kl(policy, old, new, post.obs, post.mask)

    if config.hvp_method == "gauss_newton":
        return make_gauss_newton_hvp(
            lambda x: policy.flatten(adapted(x), batched=True),
            lambda y: kl_from_old(policy.unflatten(y, batched=True)),
            theta0,
            damping=config.cg_damping,
            reduce=reduce,
        )
    return make_hvp(lambda x: kl_from_old(adapted(x)), theta0, damping=config.cg_damping,
                    reduce=reduce)


def trpo_diagnostics(info: TRPOInfo) -> dict[str, float]:
    """The scalar diagnostics of a TRPO outer step (see :func:`trpo_outer_step`)."""
    return {
        "surrogate_before": info.surrogate_before,
        "surrogate_after": info.surrogate_after,
        "kl_after": info.kl_after,
        "outer_grad_norm": info.grad_norm,
        "trpo_step_size": info.step_size,
        "ls_steps": float(info.ls_steps),
        "ls_accepted": float(info.accepted),
        "ls_step_fraction": info.step_fraction,
    }


def trpo_outer_step(
    policy: GaussianMLPPolicy,
    params: Params,
    pre_batches: Sequence[TaskBatch],
    post_batch: TaskBatch,
    config: MetaConfig,
    *,
    reduce: Reduce = identity,
    phase: PhaseFn = no_phase,
) -> tuple[Params, dict[str, float]]:
    """TRPO outer step on :func:`outer_surrogate` with the gradient through the inner step(s).

    The KL is between the post-update policies ``theta'_t(theta_old)`` and ``theta'_t(theta)``
    on post-update states, mean over tasks (:func:`trpo_problem`); its Hessian-vector product
    follows ``config.hvp_method`` (:func:`kl_hvp`). Line-search evaluations use the
    (value-identical) first-order inner step for speed.

    Args:
        params: unbatched meta-parameters ``theta``. pre_batches: the pre-update batch of
            every inner step (leading axis T). post_batch: trajectories of the adapted policies.
        reduce: the batches are this learner's tasks; ``reduce`` makes a mean over them the
            mean over all tasks (gradient, every HVP, line-search values). Identity: one
            learner holding all tasks.
        phase: phase hook: ``outer_setup``, ``hvp_setup``, then :func:`trpo_step`'s phases.

    Returns:
        ``(new_params, info)``; ``new_params`` equal ``params`` if the line search rejects.
        ``info``: ``surrogate_before/after``, ``kl_after``, ``outer_grad_norm``,
        ``trpo_step_size``, ``ls_steps``, ``ls_accepted`` (1.0/0.0), ``ls_step_fraction``.
    """
    with phase("outer_setup"):
        problem = trpo_problem(policy, params, pre_batches, post_batch, config, reduce)
    with phase("hvp_setup"):
        hvp = kl_hvp(policy, problem, pre_batches, post_batch, config, reduce)
    x_new, info = trpo_step(
        problem.theta0,
        problem.surrogate,
        problem.kl,
        max_kl=config.max_kl,
        cg_iters=config.cg_iters,
        cg_damping=config.cg_damping,
        ls_ratio=config.ls_backtrack_ratio,
        ls_max_steps=config.ls_max_steps,
        eval_fn=problem.evaluate,
        hvp=hvp,
        reduce=reduce,
        phase=phase,
    )
    new_params = {k: v.detach().clone() for k, v in policy.unflatten(x_new).items()}
    return new_params, trpo_diagnostics(info)


# ---------------------------------------------------------------------------------------- PPO
def reduce_grads(params: Params, reduce: Reduce) -> None:
    """Replace every ``p.grad`` of ``params`` by its reduction (one collective for all)."""
    if reduce is identity:
        return
    flat = reduce(torch.cat([p.grad.reshape(-1) for p in params.values()]))
    for p, g in zip(params.values(), flat.split([p.numel() for p in params.values()]),
                    strict=True):
        p.grad.copy_(g.view_as(p.grad))


def ppo_outer_step(
    policy: GaussianMLPPolicy,
    params: Params,
    pre_batches: Sequence[TaskBatch],
    post_batch: TaskBatch,
    config: MetaConfig,
    *,
    reduce: Reduce = identity,
    phase: PhaseFn = no_phase,
) -> tuple[Params, dict[str, float]]:
    """PPO-clip outer step: ``ppo_epochs`` full-batch Adam steps on ``theta``.

    Each epoch re-runs :func:`adapt_steps` so the gradient flows through the inner step. A
    fresh Adam state is used per call (no state is carried between meta steps). Arguments
    and the returned ``(new_params, info)`` as in :func:`trpo_outer_step` (``ls_steps`` 0,
    ``ls_accepted`` 1, no step size); ``reduce`` combines each epoch's gradient and the
    surrogate / KL values; one phase ``outer_ppo``.
    """
    lr = config.inner_lr
    with phase("outer_ppo"):
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        old_task_params = detach(adapt_steps(policy, detach(params), pre_batches, lr, True))
        opt = torch.optim.Adam(list(theta.values()), lr=config.ppo_lr)
        with torch.no_grad():
            surr_before = float(reduce(outer_surrogate(policy, old_task_params, post_batch)))
        grad_norm = 0.0
        for epoch in range(config.ppo_epochs):
            task_params = adapt_steps(policy, theta, pre_batches, lr, config.first_order)
            loss = -ppo_surrogate(policy, task_params, post_batch, config.ppo_clip)
            opt.zero_grad()
            loss.backward()
            reduce_grads(theta, reduce)
            if epoch == 0:
                grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in theta.values()))
            opt.step()
        new_params = {k: v.detach().clone() for k, v in theta.items()}
        new_task_params = detach(adapt_steps(policy, new_params, pre_batches, lr, True))
        with torch.no_grad():
            after = reduce(torch.stack([
                outer_surrogate(policy, new_task_params, post_batch),
                mean_kl(policy, old_task_params, new_task_params, post_batch.obs,
                        post_batch.mask)]))
    return new_params, {
        "surrogate_before": surr_before,
        "surrogate_after": float(after[0]),
        "kl_after": float(after[1]),
        "outer_grad_norm": grad_norm,
        "ls_steps": 0.0,
        "ls_accepted": 1.0,
    }
