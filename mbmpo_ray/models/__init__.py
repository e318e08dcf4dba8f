"""Dynamics models for MB-MPO: a batched MLP ensemble, its normalisers and its fitting loop.

Depends only on torch, numpy and :mod:`mbmpo_ray.settings` (pure Python); no Ray.

* :mod:`~mbmpo_ray.models.ensemble` -- :class:`EnsembleLinear`, :class:`DynamicsEnsemble`
* :mod:`~mbmpo_ray.models.normalizer` -- :class:`Normalizer`
* :mod:`~mbmpo_ray.models.training` -- :class:`FitConfig`, :class:`FitResult`,
  :func:`fit_ensemble`, :func:`fit_precision`, :func:`train_step`
"""

from mbmpo_ray.models.ensemble import DynamicsEnsemble, EnsembleLinear
from mbmpo_ray.models.normalizer import Normalizer
from mbmpo_ray.models.training import (
    FitConfig,
    FitResult,
    fit_ensemble,
    fit_precision,
    train_step,
)

__all__ = [
    "DynamicsEnsemble",
    "EnsembleLinear",
    "FitConfig",
    "FitResult",
    "Normalizer",
    "fit_ensemble",
    "fit_precision",
    "train_step",
]
