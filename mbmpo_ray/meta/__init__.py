"""Meta-policy optimisation for MB-MPO (pure torch + numpy; no Ray).

Public API:

* :class:`GaussianMLPPolicy` - functional, task-batchable Gaussian MLP policy.
* returns: :func:`discount_cumsum`, :func:`compute_returns`, :func:`gae`,
  :func:`normalize_advantages`, :func:`explained_variance`, :class:`LinearFeatureBaseline`.
* optimisation: :func:`conjugate_gradient`, :func:`make_hvp`, :func:`make_gauss_newton_hvp`,
  :func:`backtracking_line_search`, :func:`trpo_step`.
* MAML / MB-MPO: :class:`MetaConfig`, :class:`TaskBatch`, :func:`process_batch`,
  :func:`adapt`, :func:`adapt_steps`, :func:`outer_surrogate`, :func:`mean_kl`,
  :func:`trpo_meta_update`, :func:`ppo_meta_update`, :func:`meta_step`, :func:`task_members`.
"""

from mbmpo_ray.meta.maml import (
    MetaConfig,
    TaskBatch,
    adapt,
    adapt_steps,
    imagined_return,
    inner_gradients,
    inner_objective,
    mean_kl,
    meta_step,
    outer_surrogate,
    ppo_meta_update,
    ppo_surrogate,
    process_batch,
    task_members,
    trpo_meta_update,
)
from mbmpo_ray.meta.optim import (
    LineSearchResult,
    TRPOInfo,
    backtracking_line_search,
    conjugate_gradient,
    make_gauss_newton_hvp,
    make_hvp,
    trpo_step,
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

__all__ = [
    "GaussianMLPPolicy",
    "LineSearchResult",
    "LinearFeatureBaseline",
    "MetaConfig",
    "TRPOInfo",
    "TaskBatch",
    "adapt",
    "adapt_steps",
    "backtracking_line_search",
    "compute_returns",
    "conjugate_gradient",
    "discount_cumsum",
    "explained_variance",
    "gae",
    "imagined_return",
    "inner_gradients",
    "inner_objective",
    "make_gauss_newton_hvp",
    "make_hvp",
    "masked_mean",
    "mean_kl",
    "meta_step",
    "normalize_advantages",
    "outer_surrogate",
    "ppo_meta_update",
    "ppo_surrogate",
    "process_batch",
    "task_members",
    "trpo_meta_update",
    "trpo_step",
]
