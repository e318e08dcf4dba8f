"""Meta-policy optimisation for MB-MPO (pure torch + numpy; no Ray).

Modules, by concern:

* :mod:`~mbmpo_ray.meta.config` - :class:`MetaConfig`, the validated hyper-parameters.
* :mod:`~mbmpo_ray.meta.policy` - :class:`GaussianMLPPolicy`, a functional, task-batchable
  Gaussian MLP policy.
* :mod:`~mbmpo_ray.meta.returns` - :func:`discount_cumsum`, :func:`compute_returns`,
  :func:`gae`, :func:`normalize_advantages`, :func:`explained_variance`, :func:`masked_mean`,
  :class:`LinearFeatureBaseline`.
* :mod:`~mbmpo_ray.meta.inner` - the MAML inner step (Eq. 3): :class:`TaskBatch`,
  :func:`imagined_return`, :func:`estimate_advantages`, :func:`inner_objective`,
  :func:`inner_gradients`, :func:`apply_inner_step`, :func:`adapt`, :func:`adapt_steps` and
  the inner loop :func:`adapt_tasks` (-> :class:`AdaptedTasks`).
* :mod:`~mbmpo_ray.meta.outer` - the outer step (Eq. 4): :func:`outer_surrogate`,
  :func:`ppo_surrogate`, :func:`mean_kl`, :func:`trpo_outer_step` (built from
  :func:`trpo_problem` and :func:`kl_hvp`) and :func:`ppo_outer_step`.
* :mod:`~mbmpo_ray.meta.optim` - TRPO helpers on flat vectors: :func:`conjugate_gradient`,
  :func:`make_hvp`, :func:`make_gauss_newton_hvp`, :func:`backtracking_line_search`,
  :func:`trpo_step`.
* :mod:`~mbmpo_ray.meta.step` - :func:`meta_step` (one meta-policy step: inner loop, post-update
  sampling, outer step) and :func:`adapt_policies` (the adapted task policies after the meta
  steps).
* :mod:`~mbmpo_ray.meta.hooks` - the phase hook (:data:`META_STEP_PHASES`, :func:`no_phase`)
  and the tasks of a meta step split over N learners: :func:`task_range`,
  :func:`task_mean_reduction`, :func:`torch_distributed_sum`.

"Meta update" names only the whole meta phase of an iteration on the Learner; one outer
optimisation step is an "outer step".
"""

from mbmpo_ray.meta.config import MetaConfig
from mbmpo_ray.meta.hooks import (
    META_STEP_PHASES,
    no_phase,
    task_mean_reduction,
    task_range,
    torch_distributed_sum,
)
from mbmpo_ray.meta.inner import (
    AdaptedTasks,
    TaskBatch,
    adapt,
    adapt_steps,
    adapt_tasks,
    apply_inner_step,
    estimate_advantages,
    imagined_return,
    inner_gradients,
    inner_objective,
)
from mbmpo_ray.meta.optim import (
    LineSearchResult,
    TRPOInfo,
    backtracking_line_search,
    conjugate_gradient,
    make_gauss_newton_hvp,
    make_hvp,
    surrogate_gradient,
    trpo_step,
)
from mbmpo_ray.meta.outer import (
    TRPOProblem,
    kl_hvp,
    mean_kl,
    outer_surrogate,
    ppo_outer_step,
    ppo_surrogate,
    trpo_outer_step,
    trpo_problem,
)
from mbmpo_ray.meta.policy import GaussianMLPPolicy
from mbmpo_ray.meta.returns import (
    LinearFeatureBaseline,
    compute_returns,
    discount_cumsum,
    explained_variance,
    gae,
    masked_mean,
    normalize_advantages,
)
from mbmpo_ray.meta.step import adapt_policies, meta_step

__all__ = [
    "META_STEP_PHASES",
    "AdaptedTasks",
    "GaussianMLPPolicy",
    "LineSearchResult",
    "LinearFeatureBaseline",
    "MetaConfig",
    "TRPOInfo",
    "TRPOProblem",
    "TaskBatch",
    "adapt",
    "adapt_policies",
    "adapt_steps",
    "adapt_tasks",
    "apply_inner_step",
    "backtracking_line_search",
    "compute_returns",
    "conjugate_gradient",
    "discount_cumsum",
    "estimate_advantages",
    "explained_variance",
    "gae",
    "imagined_return",
    "inner_gradients",
    "inner_objective",
    "kl_hvp",
    "make_gauss_newton_hvp",
    "make_hvp",
    "masked_mean",
    "mean_kl",
    "meta_step",
    "no_phase",
    "normalize_advantages",
    "outer_surrogate",
    "ppo_outer_step",
    "ppo_surrogate",
    "surrogate_gradient",
    "task_mean_reduction",
    "task_range",
    "torch_distributed_sum",
    "trpo_outer_step",
    "trpo_problem",
    "trpo_step",
]
