"""Hyper-parameters of an MB-MPO meta step, declared as typed, validated settings."""

from __future__ import annotations

from dataclasses import dataclass

from mbmpo_ray import settings
from mbmpo_ray.settings import Rule, setting

OUTER_OPTIMIZERS = ("trpo", "ppo")
HVP_METHODS = ("gauss_newton", "exact", "first_order")

_POSITIVE = Rule(float, low=0.0, open_low=True)
_COUNT = Rule(int, low=1)


@dataclass
class MetaConfig:
    """Hyper-parameters of one MB-MPO meta step (defaults follow the paper, arXiv:1809.05214).

    Every field is a :func:`~mbmpo_ray.settings.setting` with a one-line doc and a
    :class:`~mbmpo_ray.settings.Rule`; :meth:`problems` lists every value of the wrong type or
    out of range, :meth:`validate` raises them all in one ``ValueError``. The algorithm config
    builds this class by field name (:func:`mbmpo_ray.settings.build`).

    ``cg_damping = 1e-5`` (rllab's / MAML-TRPO's value): the KL Hessian of a Gaussian policy
    is well scaled (``~1/sigma^2``) and CG is truncated at ``cg_iters`` iterations, which
    already regularises; damping only guards against exactly singular directions. Raise it
    (e.g. 0.1 as in OpenAI-baselines TRPO) if line searches keep being rejected.

    ``hvp_method``: ``"gauss_newton"`` computes ``J^T F J`` (exact at ``theta_old``, no
    third-order autodiff), ``"exact"`` differentiates the KL through the inner step twice,
    ``"first_order"`` uses the Fisher matrix of the adapted policies and ignores the inner-step
    Jacobian. ``hvp_subsample = 5`` is rllab's ``subsample_factor`` 0.2: the KL Hessian (the
    metric only; the gradient and the line search always use all rollouts) is taken on every
    5th rollout of each task. Paper size: 6.7x faster CG, direction cosine 0.9994 to the full
    batch (BENCHMARKS.md).
    """

    num_tasks: int = setting(
        20, "T, tasks per meta step (paper: 20, four per ensemble member); a multiple of K",
        _COUNT)
    inner_lr: float = setting(
        0.001, "inner (adaptation) step size alpha of Eq. 3; 0 disables adaptation",
        Rule(float, low=0.0))
    num_inner_steps: int = setting(
        1, "inner policy-gradient steps, each on freshly sampled imagined trajectories", _COUNT)
    first_order: bool = setting(
        False, "do not differentiate through the inner gradient (first-order MAML)", Rule(bool))
    gamma: float = setting(
        0.99, "discount factor", Rule(float, low=0.0, high=1.0, open_low=True))
    gae_lambda: float = setting(
        1.0, "GAE lambda (1.0: discounted return minus the linear baseline)",
        Rule(float, low=0.0, high=1.0))
    normalize_advantages: bool = setting(
        True, "standardise advantages per task over valid steps", Rule(bool))
    baseline_reg_coeff: float = setting(
        1e-5, "initial ridge regulariser of the linear feature baseline (x10 while not finite)",
        _POSITIVE)
    outer_optimizer: str = setting(
        "trpo", "outer optimiser: 'trpo' (paper) or 'ppo' (clipped surrogate, Adam)",
        Rule(str, choices=OUTER_OPTIMIZERS))
    max_kl: float = setting(
        0.01, "TRPO trust-region size delta (mean KL of the post-update policies)", _POSITIVE)
    cg_iters: int = setting(
        10, "conjugate-gradient iterations for the natural-gradient direction", _COUNT)
    cg_damping: float = setting(
        1e-5, "damping added to the KL Hessian-vector product (see the class docstring)",
        Rule(float, low=0.0))
    hvp_method: str = setting(
        "gauss_newton", "KL Hessian-vector product (see the class docstring)",
        Rule(str, choices=HVP_METHODS))
    hvp_subsample: int = setting(
        5, "the KL Hessian-vector products use every k-th rollout of each task (1: all)", _COUNT)
    ls_backtrack_ratio: float = setting(
        0.8, "line-search shrink factor per rejected candidate",
        Rule(float, low=0.0, high=1.0, open_low=True, open_high=True))
    ls_max_steps: int = setting(
        15, "line-search candidates before the old parameters are restored", _COUNT)
    ppo_clip: float = setting(0.2, "PPO ratio clipping epsilon", _POSITIVE)
    ppo_epochs: int = setting(
        5, "full-batch Adam epochs per PPO outer step (each re-runs the inner step)", _COUNT)
    ppo_lr: float = setting(1e-3, "Adam learning rate of the PPO outer step", _POSITIVE)

    def problems(self) -> list[str]:
        """One line per setting of the wrong type or out of range (empty: all fine)."""
        return settings.problems(self)

    def validate(self) -> MetaConfig:
        """Raise one ``ValueError`` listing every problem (each names its field); returns self."""
        settings.raise_if(self.problems(), "MetaConfig")
        return self
