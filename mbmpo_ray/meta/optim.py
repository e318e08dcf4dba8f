"""Second-order optimisation helpers for TRPO (Schulman et al. 2015, Appendix C).

All functions operate on flat 1-D parameter vectors:

* :func:`conjugate_gradient` solves ``H x = g`` given only products ``v -> H v``;
* :func:`make_hvp` builds the damped Hessian-vector product of a scalar function (the KL);
* :func:`make_gauss_newton_hvp` builds the same product for ``outer(inner(x))`` at a minimum
  of ``outer`` without third-order autodiff;
* :func:`backtracking_line_search` shrinks a proposed step until the surrogate improves and
  the KL constraint holds, restoring the starting point if no step qualifies;
* :func:`trpo_step` combines them into one natural-gradient update.

When the tasks are split over learners, the functions given are one learner's share and a
``reduce`` (:mod:`~mbmpo_ray.meta.hooks`) combines the gradient, every Hessian-vector product
and the line-search values across learners, so every learner takes the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mbmpo_ray.meta.hooks import PhaseFn, Reduce, identity, no_phase


def conjugate_gradient(
    Avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A``.

    Args:
        Avp: function returning the product ``A v`` for a 1-D vector ``v``.
        b: right-hand side, 1-D.
        iters: maximum number of CG iterations (TRPO default 10).
        tol: stop once the squared residual norm ``r^T r`` drops below this.

    Returns:
        ``x`` (1-D, same dtype as ``b``), detached from any graph.
    """
    b = b.detach()
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = torch.dot(r, r)
    for _ in range(iters):
        if float(rr) < tol:
            break
        Ap = Avp(p).detach()
        pAp = torch.dot(p, Ap)
        if float(pAp) <= 0.0 or not math.isfinite(float(pAp)):
            break
        step = rr / pAp
        x = x + step * p
        r = r - step * Ap
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def make_hvp(
    fn: Callable[[Tensor], Tensor], x: Tensor, damping: float = 0.0, reduce: Reduce = identity
) -> Callable[[Tensor], Tensor]:
    """Damped Hessian-vector product closure ``v -> (nabla^2 fn(x)) v + damping * v``.

    The gradient ``nabla fn(x)`` is built once with ``create_graph=True``; each call then
    differentiates ``grad . v`` (Pearlmutter's trick), so ``fn`` may itself contain gradients
    (e.g. a KL through a MAML inner step: third-order autodiff).

    Args:
        fn: scalar function of a flat parameter vector (for TRPO: the mean KL).
        x: point at which the Hessian is taken (1-D; copied and detached).
        damping: Tikhonov damping added to the product.
        reduce: applied to each product before the damping is added, e.g. this learner's
            share of the tasks -> all tasks (:func:`~mbmpo_ray.meta.hooks.task_mean_reduction`).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(x), x, create_graph=True)

    def hvp(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(grad, x, grad_outputs=v.detach(), retain_graph=True)
        return reduce(hv.detach()) + damping * v

    return hvp


def make_gauss_newton_hvp(
    inner_fn: Callable[[Tensor], Tensor],
    outer_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    damping: float = 0.0,
    reduce: Reduce = identity,
) -> Callable[[Tensor], Tensor]:
    """Gauss-Newton product ``v -> J^T (nabla^2 outer(y)) J v + damping * v`` at ``x``.

    For ``f(x) = outer(inner(x))`` with ``y = inner(x)`` and ``J = d inner / dx``, the Hessian
    is ``J^T (nabla^2 outer) J + sum_i d outer/d y_i * nabla^2 y_i``. The second term vanishes
    when ``nabla outer(y(x)) = 0``, which is the case for TRPO's ``KL(pi_old || pi_y)`` at the
    old parameters, so there this equals the exact Hessian of the KL (cf. :func:`make_hvp`)
    while avoiding third-order autodiff through a MAML inner step.

    ``J v`` uses the double-backward trick (``J v = d/du <J^T u, v>`` with a dummy ``u``);
    ``J^T w`` is one backward pass. The graphs are built once and reused by every call.

    Args:
        inner_fn: ``x -> y`` (any output shape), e.g. the adapted parameters ``theta'(theta)``.
        outer_fn: scalar function of ``y``, e.g. the mean KL from the old adapted policies.
        x: point of evaluation (1-D; copied and detached). damping: added ``damping * v``.
        reduce: applied to each product before the damping (as in :func:`make_hvp`).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = inner_fn(x)
        y_leaf = y.detach().requires_grad_(True)
        (grad_y,) = torch.autograd.grad(outer_fn(y_leaf), y_leaf, create_graph=True)
        dummy = torch.zeros_like(y, requires_grad=True)
        (jt_dummy,) = torch.autograd.grad(y, x, grad_outputs=dummy, create_graph=True)

    def hvp(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (jv,) = torch.autograd.grad(jt_dummy, dummy, grad_outputs=v.detach(), retain_graph=True)
            (hjv,) = torch.autograd.grad(grad_y, y_leaf, grad_outputs=jv, retain_graph=True)
            (out,) = torch.autograd.grad(y, x, grad_outputs=hjv, retain_graph=True)
        return reduce(out.detach()) + damping * v

    return hvp


@dataclass
class LineSearchResult:
    """Outcome of :func:`backtracking_line_search`.

    Attributes:
        x: accepted point, or a clone of the starting point when nothing was accepted.
        accepted: whether a step was accepted.
        num_steps: number of candidate points evaluated.
        objective: objective at ``x``.
        constraint: constraint value (KL) at ``x`` (0.0 when nothing was accepted).
        step_fraction: fraction of the full step taken (0.0 when rejected).
    """

    x: Tensor
    accepted: bool
    num_steps: int
    objective: float
    constraint: float
    step_fraction: float


def backtracking_line_search(
    eval_fn: Callable[[Tensor], tuple[float, float]],
    x0: Tensor,
    full_step: Tensor,
    objective0: float,
    max_constraint: float,
    ratio: float = 0.8,
    max_steps: int = 15,
) -> LineSearchResult:
    """Try ``x0 + ratio^i * full_step`` for ``i = 0..max_steps-1`` (objective is MAXIMISED).

    A candidate is accepted when its objective is finite and strictly greater than
    ``objective0`` AND its constraint value is finite and ``<= max_constraint``. If no candidate
    qualifies, the starting point ``x0`` is returned unchanged (old parameters restored).

    Args:
        eval_fn: ``x -> (objective, constraint)`` as Python floats.
        x0: starting point (1-D). full_step: proposed step (1-D).
        objective0: objective at ``x0``. max_constraint: KL bound ``delta``.
        ratio: backtracking shrink factor (0.8 in rllab's TRPO). max_steps: candidates tried.
    """
    x0 = x0.detach()
    for i in range(max_steps):
        frac = ratio**i
        x = x0 + frac * full_step.detach()
        obj, con = eval_fn(x)
        if math.isfinite(obj) and math.isfinite(con) and obj > objective0 and con <= max_constraint:
            return LineSearchResult(x, True, i + 1, obj, con, frac)
    return LineSearchResult(x0.clone(), False, max_steps, objective0, 0.0, 0.0)


@dataclass
class TRPOInfo:
    """Diagnostics of :func:`trpo_step` (see :class:`LineSearchResult` for the last four)."""

    surrogate_before: float
    surrogate_after: float
    kl_after: float
    grad_norm: float
    step_size: float
    accepted: bool
    ls_steps: int
    step_fraction: float


def surrogate_gradient(
    surrogate_fn: Callable[[Tensor], Tensor], x0: Tensor, reduce: Reduce = identity
) -> tuple[float, Tensor]:
    """``(L(x0), grad L(x0))`` of a surrogate, each passed through ``reduce`` (as one vector:
    the gradient and the value, so one collective when the tasks are split over learners)."""
    x = x0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        surr_t = surrogate_fn(x)
        (grad,) = torch.autograd.grad(surr_t, x)
    if reduce is identity:
        return float(surr_t.detach()), grad.detach()
    both = reduce(torch.cat([grad.detach(), surr_t.detach().reshape(1).to(grad.dtype)]))
    return float(both[-1]), both[:-1]


def trpo_step(
    x0: Tensor,
    surrogate_fn: Callable[[Tensor], Tensor],
    kl_fn: Callable[[Tensor], Tensor],
    max_kl: float = 0.01,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    ls_ratio: float = 0.8,
    ls_max_steps: int = 15,
    eval_fn: Callable[[Tensor], tuple[float, float]] | None = None,
    hvp: Callable[[Tensor], Tensor] | None = None,
    *,
    reduce: Reduce = identity,
    phase: PhaseFn = no_phase,
) -> tuple[Tensor, TRPOInfo]:
    """One TRPO update maximising ``surrogate_fn`` s.t. ``kl_fn <= max_kl``.

    ``g = grad L(x0)``, ``s = CG(H + damping I, g)``, full step ``sqrt(2 delta / s^T H s) s``,
    then :func:`backtracking_line_search`.

    Args:
        x0: flat parameters (1-D).
        surrogate_fn: differentiable surrogate ``L(x)`` (to maximise).
        kl_fn: differentiable mean KL ``KL(x0 || x)`` (zero with zero gradient at ``x0``).
        max_kl: trust region ``delta`` (paper 0.01).
        cg_iters, cg_damping: conjugate-gradient iterations and damping.
        ls_ratio, ls_max_steps: line-search shrink factor and number of candidates.
        eval_fn: optional cheaper ``x -> (surrogate, kl)`` for the line search; it must return
            the same (reduced) values (e.g. one first-order inner step shared by both, without
            the second-order graph). Default: ``surrogate_fn`` and ``kl_fn``, reduced.
        hvp: optional ready-made damped KL Hessian-vector product at ``x0`` (e.g. from
            :func:`make_gauss_newton_hvp`, built with the same ``reduce``); default
            ``make_hvp(kl_fn, x0, cg_damping, reduce)``.
        reduce: ``surrogate_fn`` and ``kl_fn`` are one learner's share (mean over its tasks);
            ``reduce`` makes the mean over all tasks of the gradient and the surrogate (and of
            the default ``hvp`` / ``eval_fn``), see :mod:`~mbmpo_ray.meta.hooks`. Identity:
            one learner.
        phase: phase hook (:mod:`~mbmpo_ray.meta.hooks`): ``outer_gradient``, ``cg``,
            ``step_size``, ``line_search`` (and ``hvp_setup`` when ``hvp`` is built here).

    Returns:
        ``(x_new, info)``; ``x_new`` equals ``x0`` when the line search rejects every step.
    """
    x0 = x0.detach()
    with phase("outer_gradient"):
        surr0, grad = surrogate_gradient(surrogate_fn, x0, reduce)
    grad_norm = float(grad.norm())
    rejected = TRPOInfo(surr0, surr0, 0.0, grad_norm, 0.0, False, 0, 0.0)
    if not math.isfinite(grad_norm) or grad_norm == 0.0:
        return x0.clone(), rejected
    if hvp is None:
        with phase("hvp_setup"):
            hvp = make_hvp(kl_fn, x0, damping=cg_damping, reduce=reduce)
    with phase("cg"):
        direction = conjugate_gradient(hvp, grad, iters=cg_iters)
    with phase("step_size"):
        shs = float(torch.dot(direction, hvp(direction)))
    if not math.isfinite(shs) or shs <= 0.0:
        return x0.clone(), rejected
    step_size = math.sqrt(2.0 * max_kl / shs)
    full_step = step_size * direction

    if eval_fn is None:

        def eval_fn(xc: Tensor) -> tuple[float, float]:
            both = reduce(torch.stack([surrogate_fn(xc).detach(), kl_fn(xc).detach()]))
            return float(both[0]), float(both[1])

    with phase("line_search"):
        res = backtracking_line_search(
            eval_fn, x0, full_step, surr0, max_kl, ratio=ls_ratio, max_steps=ls_max_steps
        )
    info = TRPOInfo(surr0, res.objective, res.constraint, grad_norm, step_size, res.accepted,
                    res.num_steps, res.step_fraction)
    return res.x, info
