"""Hooks into the meta step: phase timing and the reduction across learners (no Ray).

* **Phases.** :func:`~mbmpo_ray.meta.step.meta_step` (and the inner loop / outer step it calls)
  runs each of its pieces under ``phase(name)``, a context-manager factory; the default
  :func:`no_phase` returns one shared :func:`contextlib.nullcontext`, so an unused hook costs
  a function call per phase. :data:`META_STEP_PHASES` lists the names in the order a meta step
  with one inner step and the TRPO outer step enters them (a benchmark times them; see
  ``benchmarks/bench_meta_step.py``).
* **Reduction over learners.** The tasks of a meta step may be split over N learners
  (:func:`task_range`). Everything the outer step needs from ALL tasks is a mean over tasks
  (the surrogate, its gradient, the KL, every KL Hessian-vector product), so each learner
  computes the mean over ITS tasks and :func:`task_mean_reduction` turns that into the mean
  over all tasks: ``all_reduce(local_mean * T_local / T)``, where ``all_reduce`` SUMS a tensor
  over the learners (:func:`identity` for one learner, :func:`torch_distributed_sum` for a
  ``torch.distributed`` process group). Splits need not be even. Every learner then sees the
  same reduced vectors, takes the same CG iterations and line-search decisions, and ends
  with the same parameters as one learner holding all tasks (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from torch import Tensor

PhaseFn = Callable[[str], AbstractContextManager[Any]]
AllReduce = Callable[[Tensor], Tensor]
Reduce = Callable[[Tensor], Tensor]

META_STEP_PHASES: tuple[str, ...] = (
    "sample_pre",  # sample_fn with theta expanded to the tasks (imagination)
    "advantages_pre",  # estimate_advantages: returns, linear baselines, GAE, old log-probs
    "inner_gradient",  # the per-task inner gradients (one backward pass, kept for diagnostics)
    "adapt",  # the first-order inner step theta -> theta'_t
    "diagnostics_pre",  # returns and inner-gradient norms of the pre-update batch
    "sample_post",  # sample_fn with the adapted theta'_t (imagination)
    "advantages_post",  # estimate_advantages of the post-update batch
    "diagnostics_post",  # post-update returns, adaptation gain, baseline fit
    "outer_setup",  # trpo_problem: the old adapted params theta'_t(theta_0)
    "hvp_setup",  # kl_hvp: the KL graphs the Hessian-vector products reuse
    "outer_gradient",  # surrogate and its gradient through the inner step (reduced)
    "cg",  # conjugate gradient: cg_iters Hessian-vector products (each reduced)
    "step_size",  # the step-size product s^T H s
    "line_search",  # backtracking: surrogate and KL per candidate (reduced)
)
"""Phase names in the order of a meta step with one inner step and TRPO (``inner_gradient``
only in :func:`~mbmpo_ray.meta.step.meta_step`; ``plasticity`` after ``diagnostics_pre`` when
a disagreement function is given; the PPO outer step is one ``outer_ppo`` phase; with
``num_inner_steps > 1`` the first four repeat, without ``inner_gradient``)."""

_NULL = nullcontext()


def no_phase(name: str) -> AbstractContextManager[Any]:
    """The default phase hook: a shared no-op context manager."""
    return _NULL


def identity(x: Tensor) -> Tensor:
    """The reduction of one learner: ``x`` itself."""
    return x


def task_range(num_tasks: int, num_learners: int, rank: int) -> range:
    """The contiguous tasks of learner ``rank`` out of ``num_learners`` (sizes differ by <= 1).

    ``task_range(20, 3, r)``: ``range(0, 7)``, ``range(7, 14)``, ``range(14, 20)``.
    """
    if not 0 <= rank < num_learners:
        raise ValueError(f"rank {rank} is not in [0, {num_learners})")
    if num_learners > num_tasks:
        raise ValueError(f"{num_learners} learners need at least as many tasks (got {num_tasks})")
    base, extra = divmod(num_tasks, num_learners)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def task_mean_reduction(all_reduce: AllReduce | None, local_tasks: int, num_tasks: int) -> Reduce:
    """``x -> all_reduce(x * local_tasks / num_tasks)``: a mean over this learner's
    ``local_tasks`` tasks to the mean over all ``num_tasks`` (``all_reduce`` sums over the
    learners). With ``all_reduce=None`` (one learner, all tasks) the :func:`identity`."""
    if all_reduce is None:
        if local_tasks != num_tasks:
            raise ValueError(f"{local_tasks} of {num_tasks} tasks need an all_reduce")
        return identity
    weight = local_tasks / num_tasks

    def reduce(x: Tensor) -> Tensor:
        return all_reduce(x * weight)

    return reduce


def torch_distributed_sum(group: Any = None) -> AllReduce:
    """An :data:`AllReduce` over a ``torch.distributed`` process group (gloo or NCCL):
    ``x -> sum over ranks of x`` (a copy; ``x`` is left as it was)."""
    import torch.distributed as dist

    def all_reduce(x: Tensor) -> Tensor:
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    return all_reduce
