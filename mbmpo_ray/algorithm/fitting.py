"""Ensemble fitting for the algorithms: member groups fitted in parallel on model-trainer actors
(or on the driver), warm-started, with their optimiser states kept by the driver."""

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


class EnsembleFitter:
    """Owns the dynamics ensemble, its member groups, the model-trainer actors and the Adam
    states of every group.

    The K members are split into ``num_trainers`` groups (one per actor; one group fitted on the
    driver when ``num_trainers == 0``). Each :meth:`fit` refits the normalisers on all data
    here, then fits every group warm-started from the current weights and its last Adam state,
    and selects the elites from the validation losses. A group whose fit diverged keeps its
    pre-fit weights and optimiser state.

    Args:
        ensemble_kwargs: :class:`DynamicsEnsemble` constructor arguments.
        fit_config: the :class:`FitConfig` of every fit.
        num_trainers: model-trainer actors (0: fit on the driver).
        cpus_per_trainer: CPUs each actor reserves (and torch threads it uses, at least 1).
    """

    def __init__(self, ensemble_kwargs: dict[str, Any], fit_config: FitConfig,
                 num_trainers: int = 0, cpus_per_trainer: float = 1):
        self.ensemble_kwargs = dict(ensemble_kwargs)
        self.fit_config = fit_config
        self.ensemble = DynamicsEnsemble(**self.ensemble_kwargs)
        K = self.ensemble.ensemble_size
        self.groups = [g.tolist() for g in np.array_split(np.arange(K), max(1, num_trainers))]
        self.optimizer_states: list[dict | None] = [None] * len(self.groups)
        self.trainers = [
            ModelTrainer.options(
                num_cpus=cpus_per_trainer, max_restarts=-1, max_task_retries=-1
            ).remote(cpus_per_trainer)
            for _ in range(num_trainers)
        ]

    def fit(self, data: dict[str, np.ndarray], seed: int) -> dict[str, float]:
        """Fit all members on ``data`` (``obs``, ``act``, ``next_obs``, ``row_ids``).

        Returns scalar metrics: mean and per-member validation loss, mean train loss and
        epochs, and ``diverged`` (1.0 if any group's fit diverged and was rolled back).
        """
        self.ensemble.update_normalizers(data["obs"], data["act"], data["next_obs"])
        data_ref = ray.put(data) if self.trainers else data
        calls = []
        for g, members in enumerate(self.groups):
            args = ({**self.ensemble_kwargs, "ensemble_size": len(members)},
                    self.ensemble.member_state(members), data_ref, self.fit_config,
                    seed * 31 + g, self.optimizer_states[g])
            calls.append(self.trainers[g].fit.remote(*args) if self.trainers
                         else fit_members(*args))
        outs = ray.get(calls) if self.trainers else calls
        return self._merge(outs)

    def _merge(self, outs: list[tuple[dict, FitResult, dict]]) -> dict[str, float]:
        K = self.ensemble.ensemble_size
        val, train, epochs = np.zeros(K), np.zeros(K), np.zeros(K)
        diverged = False
        for g, (members, (state, result, opt_state)) in enumerate(
            zip(self.groups, outs, strict=True)
        ):
            if result.diverged:  # the trainer restored the pre-fit weights; keep ours
                diverged = True
            else:
                self.ensemble.load_member_state(members, state, load_shared=False)
                self.optimizer_states[g] = opt_state
            val[members], train[members] = result.val_loss, result.train_loss
            epochs[members] = result.epochs
        self.ensemble.select_elites(val)
        out = {"val_loss_mean": float(val.mean()), "train_loss_mean": float(train.mean()),
               "epochs_mean": float(epochs.mean()), "diverged": float(diverged)}
        out.update({f"val_loss_member_{k}": float(v) for k, v in enumerate(val)})
        return out

    def ensemble_state(self) -> dict[str, torch.Tensor]:
        """The ensemble's weights and normalisers (CPU tensors)."""
        return {k: v.cpu() for k, v in self.ensemble.state_dict().items()}

    def get_state(self) -> dict[str, Any]:
        """Weights, normalisers and optimiser states (part of every checkpoint)."""
        return {"ensemble": self.ensemble_state(), "optimizer_states": self.optimizer_states}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ensemble.load_state_dict(state["ensemble"])
        self.optimizer_states = list(state["optimizer_states"])

    def stop(self) -> None:
        """Kill the model-trainer actors."""
        for t in self.trainers:
            ray.kill(t)
        self.trainers = []
