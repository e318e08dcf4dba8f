"""Ensemble fitting for the algorithms: member groups fitted in parallel on model-trainer actors
(or on the driver), warm-started, with their optimiser states kept by the driver."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayError, RayTaskError

from mbmpo_ray.models import DynamicsEnsemble, FitConfig, FitResult, fit_ensemble, fit_precision

logger = logging.getLogger(__name__)


def fit_members(
    ensemble_kwargs: dict[str, Any],
    member_state: dict[str, torch.Tensor],
    data: dict[str, np.ndarray],
    fit_config: FitConfig,
    seed: int,
    optimizer_state: dict | None,
    new_rows: int = 0,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor], FitResult, dict]:
    """Fit a subset of members (given as a :meth:`DynamicsEnsemble.member_state`) on ``data``
    (``obs``, ``act``, ``next_obs`` and optionally ``row_ids`` for a fixed holdout split);
    the last ``new_rows`` rows are new since the previous fit.

    ``ensemble_kwargs`` describe an ensemble of just these members (``ensemble_size`` = subset).
    ``device``: where the fit runs ("cuda": the GPU; the minibatch order still comes from a CPU
    generator, so it is the same on either device).

    Returns the fitted member state, the :class:`FitResult` and the Adam state (warm start),
    as CPU tensors.
    """
    size = ensemble_kwargs["ensemble_size"]
    sub = DynamicsEnsemble(**ensemble_kwargs)
    sub.load_member_state(range(size), member_state)
    sub.to(device)
    gen = torch.Generator().manual_seed(int(seed))
    result, opt_state = fit_ensemble(
        sub, data["obs"], data["act"], data["next_obs"], fit_config,
        generator=gen, optimizer_state=optimizer_state, row_ids=data.get("row_ids"),
        new_rows=new_rows,
    )
    return _to_cpu(sub.member_state(range(size))), result, _to_cpu(opt_state)


def _to_cpu(tree: Any) -> Any:
    """``tree`` (dicts, lists, tuples of tensors and other values) with CPU tensors."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree


@ray.remote(max_concurrency=2)
class ModelTrainer:
    """A Ray actor fitting the members it is handed (stateless between calls, so a restarted
    actor simply redoes the call; the caller keeps weights and optimiser state).

    Two threads: :meth:`ping` answers while :meth:`fit` runs, so the caller can tell a busy
    trainer from a dead one that Ray cannot restart."""

    def __init__(self, num_threads: int = 1):
        torch.set_num_threads(max(1, int(num_threads)))

    def fit(self, *args) -> tuple[dict[str, torch.Tensor], FitResult, dict]:
        """:func:`fit_members` in this actor (``data`` arrives as an object-store reference)."""
        return fit_members(*args)

    def ping(self) -> bool:
        return True


class EnsembleFitter:
    """Owns the dynamics ensemble, its member groups, the model-trainer actors and the Adam
    states of every group.

    The K members are split into ``num_trainers`` groups (one per actor; one group fitted on the
    driver when ``num_trainers == 0``). Each :meth:`fit` refits the normalisers on all data
    here, then fits every group warm-started from the current weights and its last Adam state,
    and selects the elites from the validation losses. A group whose fit diverged keeps its
    pre-fit weights and optimiser state.

    Faults (never a silent wait): a trainer is used once it has answered a ping; the fit
    waits at most ``probe_timeout_s`` for a new or restarting trainer to come up. A group
    whose trainer is not up by then, dies during the fit, or stops answering pings while
    fitting (checked every ``probe_interval_s``) is fitted on the driver (same seed and
    threads, same result) with a logged warning. Ray restarts a killed trainer in the
    background (``max_restarts=-1``); a trainer that is dead for good or hung is replaced by a
    new actor. A fit therefore takes at most about ``probe_timeout_s + probe_interval_s`` longer
    than fitting the lost groups on the driver.

    Args:
        ensemble_kwargs: :class:`DynamicsEnsemble` constructor arguments.
        fit_config: the :class:`FitConfig` of every fit.
        num_trainers: model-trainer actors (0: fit on the driver).
        cpus_per_trainer: CPUs each actor reserves (and torch threads it uses, at least 1).
        probe_timeout_s: seconds a pending trainer has to answer a ping.
        probe_interval_s: seconds between pings of a trainer whose fit is pending.
        device: where the driver fits ("cuda" needs ``num_trainers == 0``; the trainer actors
            fit on their CPUs).
        num_elites: members the whole ensemble keeps as elites (None: all).
    """

    def __init__(self, ensemble_kwargs: dict[str, Any], fit_config: FitConfig,
                 num_trainers: int = 0, cpus_per_trainer: float = 1, *,
                 probe_timeout_s: float = 30.0, probe_interval_s: float = 5.0,
                 device: str = "cpu", num_elites: int | None = None):
        if device != "cpu" and num_trainers:
            raise ValueError(f"device={device!r} fits on the driver: num_trainers must be 0")
        self.device = device
        self.ensemble_kwargs = dict(ensemble_kwargs)
        # the elites are chosen on the whole ensemble; member groups (sub-ensembles built from
        # ensemble_kwargs) can be smaller, so the kwargs never carry num_elites
        self.ensemble = DynamicsEnsemble(**self.ensemble_kwargs, num_elites=num_elites)
        K = self.ensemble.ensemble_size
        self.groups = [g.tolist() for g in np.array_split(np.arange(K), max(1, num_trainers))]
        self.fit_config = self._resolve_precision(fit_config, len(self.groups[0]))
        self.optimizer_states: list[dict | None] = [None] * len(self.groups)
        self.cpus_per_trainer = cpus_per_trainer
        self.probe_timeout_s = float(probe_timeout_s)
        self.probe_interval_s = float(min(probe_interval_s, probe_timeout_s))
        self.trainers: list[Any] = []
        self._ready: list[Any] = []  # per trainer: a ping; done once the actor is up
        self._waited: set[Any] = set()  # pings already waited for in vain
        self._last_why: dict[int, str] = {}
        for _ in range(num_trainers):
            self._add_trainer()
        self.num_driver_fallbacks = 0  # lifetime: group fits done on the driver instead
        self.next_new_id = 0  # rows with a row id from here on are new since the last fit

    def _resolve_precision(self, fit_config: FitConfig, group_size: int) -> FitConfig:
        """``fit_config`` with ``model_precision='auto'`` decided once, here, for a member
        group of ``group_size`` on the fitting device (:func:`fit_precision`), so every
        trainer fits in the same dtype."""
        if fit_config.model_precision != "auto":
            return fit_config
        group = DynamicsEnsemble(**{**self.ensemble_kwargs, "ensemble_size": group_size})
        chosen = fit_precision(group.to(self.device), fit_config.model_batch_size)
        logger.info("model_precision='auto': the model fit runs in %s here", chosen)
        return dataclasses.replace(fit_config, model_precision=chosen)

    def _add_trainer(self, g: int | None = None) -> None:
        """Start a trainer actor (as group ``g``'s replacement, or appended)."""
        trainer = ModelTrainer.options(
            num_cpus=self.cpus_per_trainer, max_restarts=-1, max_task_retries=0
        ).remote(self.cpus_per_trainer)
        if g is None:
            self.trainers.append(trainer)
            self._ready.append(trainer.ping.remote())
        else:
            self.trainers[g], self._ready[g] = trainer, trainer.ping.remote()

    def _replace_trainer(self, g: int) -> None:
        try:
            ray.kill(self.trainers[g], no_restart=True)
        except Exception:  # already gone
            pass
        self._add_trainer(g)

    def fit(self, data: dict[str, np.ndarray], seed: int) -> dict[str, float]:
        """Fit all members on ``data`` (``obs``, ``act``, ``next_obs``, ``row_ids``).

        Returns scalar metrics: mean and per-member validation loss, mean train loss and
        epochs, ``diverged`` (1.0 if any group's fit diverged and was rolled back, or the
        losses are not finite) and ``driver_fallbacks`` (groups fitted on the driver because
        their trainer was not available).
        """
        self.ensemble.update_normalizers(data["obs"], data["act"], data["next_obs"])
        new_rows = len(data["obs"])
        if "row_ids" in data and len(data["row_ids"]):
            new_rows = int((np.asarray(data["row_ids"]) >= self.next_new_id).sum())
            self.next_new_id = int(np.max(data["row_ids"])) + 1
        args = [({**self.ensemble_kwargs, "ensemble_size": len(members)},
                 self.ensemble.member_state(members), data, self.fit_config,
                 seed * 31 + g, self.optimizer_states[g], new_rows)
                for g, members in enumerate(self.groups)]
        if not self.trainers:
            return self._merge([fit_members(*a, device=self.device) for a in args], 0)
        up, down = self._trainers_up()
        data_ref = ray.put(data) if up else None
        refs = {g: self.trainers[g].fit.remote(*args[g][:2], data_ref, *args[g][3:])
                for g in up}
        outs: dict[int, Any] = {}
        for g, why in down.items():
            outs[g] = self._fit_on_driver(g, args[g], why)
        remote = self._collect(refs, args, outs)
        return self._merge([outs[g] for g in range(len(self.groups))],
                           len(self.groups) - remote)

    def _trainers_up(self) -> tuple[list[int], dict[int, str]]:
        """Trainers that answer, and why the others are not used this time. A trainer is
        waited for (at most ``probe_timeout_s``, all together) once per ping; one that did not
        answer in time is not waited for again, and used as soon as it answers."""
        pending = list(self._ready)
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
        if len(ready) < len(pending) and any(r not in self._waited for r in pending):
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=self.probe_timeout_s)
        ready = set(ready)
        self._waited = {r for r in pending if r not in ready}
        up, down = [], {}
        for g, ref in enumerate(self._ready):
            if ref not in ready:
                down[g] = (f"is not up (not within {self.probe_timeout_s:.0f} s: starting, "
                           "restarting, or no free resources to run it)")
                continue
            try:
                ray.get(ref)
                up.append(g)
                self._last_why.pop(g, None)
            except ActorUnavailableError:  # restarting: ask again, use it once it answers
                down[g] = "is restarting"
                self._ready[g] = self.trainers[g].ping.remote()
            except RayError as e:  # dead for good (or its ping was lost): a new actor
                down[g] = f"is dead ({type(e).__name__}); starting a new one"
                self._replace_trainer(g)
        return up, down

    def _collect(self, refs: dict[int, Any], args: list[tuple], outs: dict[int, Any]) -> int:
        """The trainer calls' results into ``outs`` (the groups of trainers lost meanwhile
        fitted here); returns how many groups were fitted by their trainer."""
        remote = 0
        pending = dict(refs)
        checked = {g: time.monotonic() for g in pending}
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending),
                                timeout=self.probe_interval_s)
            ready = set(ready)
            for g, ref in list(pending.items()):
                lost = None
                if ref in ready:
                    try:
                        outs[g] = ray.get(ref)
                        remote += 1
                    except RayTaskError as e:  # an error of the fit itself: not a fault
                        raise e.as_instanceof_cause() from None
                    except RayError as e:  # the actor died; Ray restarts it
                        lost = f"died during the fit ({type(e).__name__})"
                        self._ready[g] = self.trainers[g].ping.remote()
                elif time.monotonic() - checked[g] >= self.probe_interval_s:
                    lost = self._probe(g)
                    checked[g] = time.monotonic()
                if g in outs:
                    del pending[g]
                elif lost is not None:
                    del pending[g]
                    outs[g] = self._fit_on_driver(g, args[g], lost)
        return remote

    def _probe(self, g: int) -> str | None:
        """None if trainer ``g`` (busy fitting) answers a ping in time, else why not (and a
        replacement actor is started)."""
        try:
            ray.get(self.trainers[g].ping.remote(), timeout=self.probe_timeout_s)
            return None
        except GetTimeoutError:
            self._replace_trainer(g)
            return f"stopped answering (no reply within {self.probe_timeout_s:.0f} s)"
        except RayError as e:
            self._ready[g] = self.trainers[g].ping.remote()
            return f"died during the fit ({type(e).__name__})"

    def _fit_on_driver(self, g: int, args: tuple, why: str):
        # one warning per reason and trainer in a row (a trainer that stays down is not
        # announced every iteration)
        level = logging.DEBUG if self._last_why.get(g) == why else logging.WARNING
        self._last_why[g] = why
        logger.log(level, "model trainer %d (members %s) %s; fitting its members on the "
                   "driver", g, self.groups[g], why)
        self.num_driver_fallbacks += 1
        return fit_members(*args)

    def _merge(self, outs: list[tuple[dict, FitResult, dict]],
               fallbacks: int) -> dict[str, float]:
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
        if diverged or not np.isfinite(val).all():
            diverged = True
            logger.warning("the dynamics ensemble diverged while fitting (non-finite loss); "
                           "the diverged members keep their previous weights")
        out = {"val_loss_mean": float(val.mean()), "train_loss_mean": float(train.mean()),
               "epochs_mean": float(epochs.mean()), "diverged": float(diverged),
               "driver_fallbacks": float(fallbacks)}
        out.update({f"val_loss_member_{k}": float(v) for k, v in enumerate(val)})
        return out

    def ensemble_state(self) -> dict[str, torch.Tensor]:
        """The ensemble's weights and normalisers (CPU tensors)."""
        return {k: v.cpu() for k, v in self.ensemble.state_dict().items()}

    def get_state(self) -> dict[str, Any]:
        """Weights, normalisers, optimiser states and where the new rows start (part of every
        checkpoint)."""
        return {"ensemble": self.ensemble_state(), "optimizer_states": self.optimizer_states,
                "next_new_id": self.next_new_id}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ensemble.load_state_dict(state["ensemble"])
        self.optimizer_states = list(state["optimizer_states"])
        self.next_new_id = int(state.get("next_new_id", 0))  # absent before 2026-11-23

    def stop(self) -> None:
        """Kill the model-trainer actors."""
        for t in self.trainers:
            ray.kill(t)
        self.trainers = []
