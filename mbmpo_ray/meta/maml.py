"""MAML inner step and TRPO / PPO outer step for MB-MPO (Clavera et al. 2018, Alg. 1).

Notation (paper Sec. 4.2): each task ``t`` is an imagined MDP given by ensemble member
``k(t)``. The inner step (Eq. 3) adapts the meta-policy with one vanilla policy-gradient step
on trajectories of task ``t``::

    theta'_t = theta + alpha * grad_theta J_t(theta),   J_t = E[log pi_theta(a|s) A(s, a)]

and the outer step (Eq. 4) maximises the mean post-adaptation objective over tasks::

    max_theta  1/T sum_t E_{tau ~ pi_{theta'_t}}[ exp(logp_{theta'_t(theta)} - logp_old) A ]

with TRPO (KL trust region on the post-update policies) or PPO-clip, differentiating THROUGH
the inner step (second order unless ``first_order``).

Everything is task-batched: per-task quantities carry a leading axis ``T`` and are computed
in one tensor program (see :class:`~mbmpo_ray.meta.policy.GaussianMLPPolicy`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mbmpo_ray.imagination import ImaginedBatch, task_members
from mbmpo_ray.meta.optim import make_gauss_newton_hvp, make_hvp, trpo_step
from mbmpo_ray.meta.policy import GaussianMLPPolicy
from mbmpo_ray.meta.returns import (
    LinearFeatureBaseline,
    compute_returns,
    explained_variance,
    gae,
    masked_mean,
    normalize_advantages,
)

Params = dict[str, Tensor]

_OPTIMIZERS = ("trpo", "ppo")
_HVP_METHODS = ("gauss_newton", "exact", "first_order")


# ---------------------------------------------------------------------------------------- config
@dataclass
class MetaConfig:
    """Hyper-parameters of one MB-MPO meta step (defaults follow the paper, arXiv:1809.05214).

    ``cg_damping = 1e-5`` (rllab's / MAML-TRPO's value): the KL Hessian of a Gaussian policy
    is well scaled (``~1/sigma^2``) and CG is truncated at ``cg_iters`` iterations, which
    already regularises; damping only guards against exactly singular directions. Raise it
    (e.g. 0.1 as in OpenAI-baselines TRPO) if line searches keep being rejected.
    """

    num_tasks: int = 5
    """T, tasks per meta step (paper: one task per ensemble member, 5 members); a multiple of K."""
    alpha: float = 0.001
    """Inner (adaptation) step size alpha of Eq. 3; 0 disables adaptation."""
    num_inner_steps: int = 1
    """Number of inner policy-gradient steps (each samples fresh imagined trajectories)."""
    first_order: bool = False
    """If True, do not differentiate through the inner gradient (first-order MAML)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0 = discounted return minus the linear baseline)."""
    normalize_advantages: bool = True
    """Standardise advantages per task over valid steps."""
    baseline_reg_coeff: float = 1e-5
    """Initial ridge regulariser of the linear feature baseline (x10 while not finite)."""
    outer_optimizer: str = "trpo"
    """Outer optimiser: ``"trpo"`` (paper) or ``"ppo"`` (clipped surrogate, Adam)."""
    max_kl: float = 0.01
    """TRPO trust-region size delta (mean KL of post-update policies)."""
    cg_iters: int = 10
    """Conjugate-gradient iterations for the natural-gradient direction."""
    cg_damping: float = 1e-5
    """Damping added to the KL Hessian-vector product (see class docstring)."""
    hvp_method: str = "gauss_newton"
    """KL Hessian-vector product: ``"gauss_newton"`` (J^T F J, exact at theta_old, no
    third-order autodiff), ``"exact"`` (autodiff of the KL through the inner step) or
    ``"first_order"`` (Fisher of the adapted policies, ignoring the inner-step Jacobian)."""
    hvp_subsample: int = 5
    """The KL Hessian-vector products (CG) use every k-th rollout of each task (rllab's
    ``subsample_factor`` 0.2); the gradient and the line search always use all rollouts.
    Paper size: 6.7x faster CG, direction cosine 0.9994 to the full batch (BENCHMARKS.md)."""
    ls_backtrack_ratio: float = 0.8
    """Line-search shrink factor per rejected candidate."""
    ls_max_steps: int = 15
    """Maximum number of line-search candidates before restoring the old parameters."""
    ppo_clip: float = 0.2
    """PPO ratio clipping epsilon."""
    ppo_epochs: int = 5
    """Full-batch Adam epochs per PPO outer step (each re-runs the inner step)."""
    ppo_lr: float = 1e-3
    """Adam learning rate of the PPO outer step."""

    def validate(self) -> MetaConfig:
        """Raise ``ValueError`` naming the offending field and what to change; returns self."""
        checks: list[tuple[bool, str]] = [
            (self.num_tasks >= 1, f"num_tasks must be >= 1, got {self.num_tasks}"),
            (
                math.isfinite(self.alpha) and self.alpha >= 0.0,
                f"alpha must be a finite number >= 0 (0 disables adaptation), got {self.alpha}",
            ),
            (
                self.num_inner_steps >= 1,
                f"num_inner_steps must be >= 1, got {self.num_inner_steps}",
            ),
            (0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1], got {self.gamma}"),
            (
                0.0 <= self.gae_lambda <= 1.0,
                f"gae_lambda must be in [0, 1], got {self.gae_lambda}",
            ),
            (
                self.baseline_reg_coeff > 0.0,
                f"baseline_reg_coeff must be > 0, got {self.baseline_reg_coeff}",
            ),
            (
                self.outer_optimizer in _OPTIMIZERS,
                f"outer_optimizer must be one of {_OPTIMIZERS}, got {self.outer_optimizer!r}",
            ),
            (self.max_kl > 0.0, f"max_kl must be > 0 (paper: 0.01), got {self.max_kl}"),
            (self.cg_iters >= 1, f"cg_iters must be >= 1, got {self.cg_iters}"),
            (self.cg_damping >= 0.0, f"cg_damping must be >= 0, got {self.cg_damping}"),
            (
                self.hvp_subsample >= 1,
                f"hvp_subsample must be an integer >= 1 (1: all rollouts), "
                f"got {self.hvp_subsample}",
            ),
            (
                self.hvp_method in _HVP_METHODS,
                f"hvp_method must be one of {_HVP_METHODS}, got {self.hvp_method!r}",
            ),
            (
                0.0 < self.ls_backtrack_ratio < 1.0,
                f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio}",
            ),
            (self.ls_max_steps >= 1, f"ls_max_steps must be >= 1, got {self.ls_max_steps}"),
            (self.ppo_clip > 0.0, f"ppo_clip must be > 0, got {self.ppo_clip}"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (self.ppo_lr > 0.0, f"ppo_lr must be > 0, got {self.ppo_lr}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"MetaConfig: {msg}")
        return self


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


def process_batch(
    policy: GaussianMLPPolicy,
    task_params: Params,
    batch: ImaginedBatch,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize: bool = True,
    baseline_reg_coeff: float = 1e-5,
) -> TaskBatch:
    """Returns, per-task linear baseline, GAE advantages and old log-probs for a batch.

    Args:
        policy: the policy architecture.
        task_params: the task-batched (leading axis T) params that sampled ``batch``; used to
            recompute ``old_log_probs`` so importance ratios are exactly 1 at the old params.
        batch: an :class:`~mbmpo_ray.imagination.ImaginedBatch` (only ``obs, actions, rewards,
            mask`` are read).
        gamma, gae_lambda: discount and GAE lambda. normalize: per-task advantage standardising.
        baseline_reg_coeff: initial ridge regulariser of :class:`LinearFeatureBaseline`.
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


# ---------------------------------------------------------------------------------------- inner
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


def adapt(
    policy: GaussianMLPPolicy,
    params: Params,
    batch: TaskBatch,
    alpha: float,
    first_order: bool = False,
    batched_params: bool = False,
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
        alpha: inner step size; ``alpha == 0`` returns the expanded params bit for bit.
        first_order: drop second-order terms.
        batched_params: ``params`` already carry the task axis (further inner steps).

    Returns:
        T-batched adapted params.
    """
    num_tasks = batch.obs.shape[0]
    task_params = params if batched_params else policy.expand_params(params, num_tasks)
    if alpha == 0.0:
        return dict(task_params)
    inputs, grads = inner_gradients(policy, task_params, batch, create_graph=not first_order)
    if first_order:
        return {k: inputs[k] + alpha * grads[k].detach() for k in inputs}
    return {k: inputs[k] + alpha * grads[k] for k in inputs}


def adapt_steps(
    policy: GaussianMLPPolicy,
    params: Params,
    batches: Sequence[TaskBatch],
    alpha: float,
    first_order: bool = False,
) -> Params:
    """Chain of ``len(batches)`` inner steps starting from unbatched ``params``.

    Step ``k`` uses ``batches[k]`` (sampled with the params after ``k`` steps). Returns the
    T-batched adapted params, differentiable w.r.t. ``params`` through every step.
    """
    task_params = params
    for i, b in enumerate(batches):
        task_params = adapt(policy, task_params, b, alpha, first_order, batched_params=i > 0)
    return task_params


# ---------------------------------------------------------------------------------------- outer
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
    """``1/T sum_t mean_valid KL(pi_old_t || pi_new_t)`` over (post-update) states (scalar)."""
    kl = policy.kl(old_task_params, new_task_params, obs, batched=True)
    return masked_mean(kl, mask, dims=(1, 2)).mean()


def _detach(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def trpo_meta_update(
    policy: GaussianMLPPolicy,
    params: Params,
    pre_batches: Sequence[TaskBatch],
    post_batch: TaskBatch,
    config: MetaConfig,
) -> tuple[Params, dict[str, float]]:
    """TRPO outer step on :func:`outer_surrogate` with the gradient through the inner step(s).

    Surrogate and KL closures re-run :func:`adapt_steps` on the PRE-update batches so that
    ``theta'_t`` is a function of ``theta``. The KL is between the post-update policies
    ``theta'_t(theta_old)`` and ``theta'_t(theta)`` on post-update states, mean over tasks.
    Line-search evaluations use the (value-identical) first-order inner step for speed. The
    KL Hessian-vector product follows ``config.hvp_method`` (default Gauss-Newton, which equals
    the exact KL Hessian at ``theta_old``).

    Returns:
        ``(new_params, info)``; ``new_params`` equal ``params`` if the line search rejects.
    """
    alpha = config.alpha
    theta0 = policy.flatten(params).detach()
    theta0_params = policy.unflatten(theta0)
    old_task_params = _detach(adapt_steps(policy, theta0_params, pre_batches, alpha, True))
    # The KL Hessian (the metric only, not the gradient) may use every k-th rollout.
    k = config.hvp_subsample
    hvp_pre = [b.every_kth_rollout(k) for b in pre_batches]
    hvp_post = post_batch.every_kth_rollout(k)
    hvp_old = (old_task_params if k == 1 else
               _detach(adapt_steps(policy, theta0_params, hvp_pre, alpha, True)))

    def task_params_of(x: Tensor, first_order: bool) -> Params:
        return adapt_steps(policy, policy.unflatten(x), pre_batches, alpha, first_order)

    def surrogate(x: Tensor, first_order: bool = config.first_order) -> Tensor:
        return outer_surrogate(policy, task_params_of(x, first_order), post_batch)

    def kl(x: Tensor, first_order: bool = config.first_order) -> Tensor:
        new = task_params_of(x, first_order)
        return mean_kl(policy, old_task_params, new, post_batch.obs, post_batch.mask)

    @torch.no_grad()
    def evaluate(x: Tensor) -> tuple[float, float]:
        """Line-search values: one first-order inner step (same values) shared by both."""
        new = task_params_of(x, True)
        surr = outer_surrogate(policy, new, post_batch)
        return float(surr), float(mean_kl(policy, old_task_params, new, post_batch.obs,
                                          post_batch.mask))

    hvp: Callable[[Tensor], Tensor] | None = None  # None: exact autodiff (make_hvp)
    if config.hvp_method == "gauss_newton":

        def inner(x: Tensor) -> Tensor:
            adapted = adapt_steps(policy, policy.unflatten(x), hvp_pre, alpha, config.first_order)
            return policy.flatten(adapted, batched=True)

        def outer(y: Tensor) -> Tensor:
            new = policy.unflatten(y, batched=True)
            return mean_kl(policy, hvp_old, new, hvp_post.obs, hvp_post.mask)

        hvp = make_gauss_newton_hvp(inner, outer, theta0, damping=config.cg_damping)
    elif config.hvp_method == "first_order":

        def kl_first_order(x: Tensor) -> Tensor:
            new = adapt_steps(policy, policy.unflatten(x), hvp_pre, alpha, True)
            return mean_kl(policy, hvp_old, new, hvp_post.obs, hvp_post.mask)

        hvp = make_hvp(kl_first_order, theta0, damping=config.cg_damping)
    elif k != 1:

        def kl_sub(x: Tensor) -> Tensor:
            new = adapt_steps(policy, policy.unflatten(x), hvp_pre, alpha, config.first_order)
            return mean_kl(policy, hvp_old, new, hvp_post.obs, hvp_post.mask)

        hvp = make_hvp(kl_sub, theta0, damping=config.cg_damping)

    x_new, info = trpo_step(
        theta0,
        surrogate,
        kl,
        max_kl=config.max_kl,
        cg_iters=config.cg_iters,
        cg_damping=config.cg_damping,
        ls_ratio=config.ls_backtrack_ratio,
        ls_max_steps=config.ls_max_steps,
        eval_fn=evaluate,
        hvp=hvp,
    )
    new_params = {k: v.detach().clone() for k, v in policy.unflatten(x_new).items()}
    diag = {
        "surrogate_before": info.surrogate_before,
        "surrogate_after": info.surrogate_after,
        "kl_after": info.kl_after,
        "outer_grad_norm": info.grad_norm,
        "trpo_step_size": info.step_size,
        "ls_steps": float(info.ls_steps),
        "ls_accepted": float(info.accepted),
        "ls_step_fraction": info.step_fraction,
    }
    return new_params, diag


def ppo_meta_update(
    policy: GaussianMLPPolicy,
    params: Params,
    pre_batches: Sequence[TaskBatch],
    post_batch: TaskBatch,
    config: MetaConfig,
) -> tuple[Params, dict[str, float]]:
    """PPO-clip outer step: ``ppo_epochs`` full-batch Adam steps on ``theta``.

    Each epoch re-runs :func:`adapt_steps` so the gradient flows through the inner step. A
    fresh Adam state is used per call (no state is carried between meta steps).
    """
    alpha = config.alpha
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    old_task_params = _detach(adapt_steps(policy, _detach(params), pre_batches, alpha, True))
    opt = torch.optim.Adam(list(theta.values()), lr=config.ppo_lr)
    with torch.no_grad():
        surr_before = float(outer_surrogate(policy, old_task_params, post_batch))
    grad_norm = 0.0
    for epoch in range(config.ppo_epochs):
        task_params = adapt_steps(policy, theta, pre_batches, alpha, config.first_order)
        loss = -ppo_surrogate(policy, task_params, post_batch, config.ppo_clip)
        opt.zero_grad()
        loss.backward()
        if epoch == 0:
            grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in theta.values()))
        opt.step()
    new_params = {k: v.detach().clone() for k, v in theta.items()}
    new_task_params = _detach(adapt_steps(policy, new_params, pre_batches, alpha, True))
    with torch.no_grad():
        surr_after = float(outer_surrogate(policy, new_task_params, post_batch))
        kl_after = float(
            mean_kl(policy, old_task_params, new_task_params, post_batch.obs, post_batch.mask)
        )
    diag = {
        "surrogate_before": surr_before,
        "surrogate_after": surr_after,
        "kl_after": kl_after,
        "outer_grad_norm": grad_norm,
        "ls_steps": 0.0,
        "ls_accepted": 1.0,
    }
    return new_params, diag


# ---------------------------------------------------------------------------------------- step
def meta_step(
    policy: GaussianMLPPolicy,
    params: Params,
    sample_fn: Callable[..., ImaginedBatch],
    config: MetaConfig,
    generator: torch.Generator | None = None,
    ensemble_size: int | None = None,
) -> tuple[Params, dict[str, float | np.ndarray]]:
    """One MB-MPO meta-policy step (Alg. 1, lines 6-9) over ``config.num_tasks`` tasks.

    1. sample pre-update trajectories for all T tasks with ``theta`` expanded to T;
    2. fit per-task linear baselines, compute advantages, adapt ``theta -> theta'_t``
       (repeated ``num_inner_steps`` times, each with freshly sampled trajectories);
    3. sample post-update trajectories with ``theta'_t``;
    4. outer TRPO / PPO step on the post-adaptation surrogate through the inner step(s).

    Args:
        policy: architecture. params: unbatched meta-parameters ``theta``.
        sample_fn: ``sample_fn(task_params) -> ImaginedBatch`` with T-batched params (leading
            axis ``config.num_tasks``); called as ``sample_fn(task_params, generator=...)``
            when ``generator`` is given. Usually wraps :func:`mbmpo_ray.imagination.imagine`.
        config: :class:`MetaConfig` (validated here).
        generator: optional RNG forwarded to ``sample_fn``.
        ensemble_size: K, only used to report (and check) the task -> member mapping.

    Returns:
        ``(new_params, diagnostics)``. Diagnostics: ``pre_return_per_task`` /
        ``post_return_per_task`` (arrays of length T, mean undiscounted imagined return) and
        their ``*_mean``, ``adaptation_gain``, ``surrogate_before/after``, ``kl_after``,
        ``ls_steps``, ``ls_accepted`` (1.0/0.0), ``ls_step_fraction`` and ``trpo_step_size``
        (TRPO only), ``outer_grad_norm``, ``inner_grad_norm`` (mean over tasks
        of the first inner step) and ``inner_grad_norm_per_task``, ``baseline_ev_pre/post``,
        ``policy_std_mean``, ``entropy``, ``task_members`` (if ``ensemble_size``) and
        ``time_sample`` / ``time_optimize`` seconds.
    """
    config.validate()
    num_tasks = config.num_tasks
    diag: dict[str, float | np.ndarray] = {}
    if ensemble_size is not None:
        diag["task_members"] = task_members(num_tasks, ensemble_size).numpy()
    params = _detach(params)

    def sample(task_params: Params) -> ImaginedBatch:
        if generator is None:
            return sample_fn(task_params)
        return sample_fn(task_params, generator=generator)

    t0 = time.perf_counter()
    t_sample = 0.0
    pre_batches: list[TaskBatch] = []
    task_params = policy.expand_params(params, num_tasks)
    for k in range(config.num_inner_steps):
        ts = time.perf_counter()
        raw = sample(task_params)
        t_sample += time.perf_counter() - ts
        if raw.obs.shape[0] != num_tasks:
            raise ValueError(
                f"sample_fn returned {raw.obs.shape[0]} tasks but config.num_tasks={num_tasks}"
            )
        tb = process_batch(
            policy,
            task_params,
            raw,
            config.gamma,
            config.gae_lambda,
            config.normalize_advantages,
            config.baseline_reg_coeff,
        )
        pre_batches.append(tb)
        # one inner gradient serves the diagnostics and the (first-order, detached) adaptation
        inputs, g = inner_gradients(policy, task_params, tb, create_graph=False)
        if k == 0:
            pre_ret = imagined_return(raw).detach().double().numpy()
            diag["pre_return_per_task"] = pre_ret
            diag["pre_return_mean"] = float(pre_ret.mean())
            diag["baseline_ev_pre"] = explained_variance(tb.values, tb.returns, tb.mask)
            sq = sum(v.detach().pow(2).reshape(num_tasks, -1).sum(-1) for v in g.values())
            norms = torch.sqrt(sq).double().numpy()
            diag["inner_grad_norm_per_task"] = norms
            diag["inner_grad_norm"] = float(norms.mean())
        if config.alpha != 0.0:  # same arithmetic as adapt(..., first_order=True)
            task_params = {n: inputs[n] + config.alpha * g[n].detach() for n in inputs}
        task_params = _detach(task_params)
    ts = time.perf_counter()
    raw_post = sample(task_params)
    t_sample += time.perf_counter() - ts
    post = process_batch(
        policy,
        task_params,
        raw_post,
        config.gamma,
        config.gae_lambda,
        config.normalize_advantages,
        config.baseline_reg_coeff,
    )
    post_ret = imagined_return(raw_post).detach().double().numpy()
    diag["post_return_per_task"] = post_ret
    diag["post_return_mean"] = float(post_ret.mean())
    diag["adaptation_gain"] = float(post_ret.mean() - diag["pre_return_mean"])
    diag["baseline_ev_post"] = explained_variance(post.values, post.returns, post.mask)

    if config.outer_optimizer == "trpo":
        new_params, info = trpo_meta_update(policy, params, pre_batches, post, config)
    else:
        new_params, info = ppo_meta_update(policy, params, pre_batches, post, config)
    diag.update(info)
    diag["policy_std_mean"] = float(new_params["log_std"].exp().mean())
    diag["entropy"] = float(policy.entropy(new_params))
    diag["time_sample"] = t_sample
    diag["time_optimize"] = time.perf_counter() - t0 - t_sample
    return new_params, diag
