"""Fitting ensemble members, on the driver or on model-trainer Ray actors."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch

from mbmpo_ray.models import DynamicsEnsemble, FitConfig, FitResult, fit_ensemble


def fit_members(
    ensemble_kwargs: dict[str, Any],
    member_state: dict[str, torch.Tensor],
    data: dict[str, np.ndarray],
    fit_config: FitConfig,
    seed: int,
    optimizer_state: dict | None,
) -> tuple[dict[str, torch.Tensor], FitResult, dict]:
    """Fit a subset of members (given as a :meth:`DynamicsEnsemble.member_state`) on ``data``
    (``obs``, ``act``, ``next_obs`` and optionally ``row_ids`` for a fixed holdout split).

    ``ensemble_kwargs`` describe an ensemble of just these members (``ensemble_size`` = subset).

    Returns the fitted member state, the :class:`FitResult` and the Adam state (warm start).
    """
    size = ensemble_kwargs["ensemble_size"]
    sub = DynamicsEnsemble(**ensemble_kwargs)
    sub.load_member_state(range(size), member_state)
    gen = torch.Generator().manual_seed(int(seed))
    result, opt_state = fit_ensemble(
        sub, data["obs"], data["act"], data["next_obs"], fit_config,
        generator=gen, optimizer_state=optimizer_state, row_ids=data.get("row_ids"),
    )
    return sub.member_state(range(size)), result, opt_state


@ray.remote
class ModelTrainer:
    """A Ray actor fitting the members it is handed (stateless between calls, so a restarted
    actor simply redoes the call; the caller keeps weights and optimiser state)."""

    def __init__(self, num_threads: int = 1):
        torch.set_num_threads(max(1, int(num_threads)))

    def fit(self, *args) -> tuple[dict[str, torch.Tensor], FitResult, dict]:
        """:func:`fit_members` in this actor (``data`` arrives as an object-store reference)."""
        return fit_members(*args)

    def ping(self) -> bool:
        return True
