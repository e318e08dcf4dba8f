"""The central meta-learner: an RLlib TorchLearner that runs MB-MPO meta steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override

from mbmpo_ray.algorithm.distributed import rank_and_world_size
from mbmpo_ray.envs import EnvSpec
from mbmpo_ray.imagination import (
    AutocastDynamics,
    BiasedDynamics,
    ImaginationSampler,
    StateBounds,
    autocast_dtype,
    first_task_of_each_member,
)
from mbmpo_ray.meta import adapt_policies, meta_step, torch_distributed_sum
from mbmpo_ray.models import DynamicsEnsemble


class MBMPOTorchLearner(TorchLearner):
    """Runs the meta phase of an MB-MPO iteration on the RLModule's policy parameters.

    Called by the algorithm through ``LearnerGroup.foreach_learner`` with the current ensemble
    weights and real start states (object-store references when the learner is remote). This
    class only places tensors on its device (a GPU when ``num_gpus_per_learner > 0``), sets its
    threads and loops :func:`~mbmpo_ray.meta.meta_step`; the maths lives in ``mbmpo_ray.meta``
    and ``mbmpo_ray.imagination``.

    With ``num_learners = N > 1`` (Ray Train's torch process group: gloo on CPUs, NCCL on GPUs)
    learner ``rank`` imagines, adapts and differentiates only its tasks
    (:func:`learner_tasks`); the outer gradient, every Hessian-vector product, the line-search
    values and the divergence flag are summed over the learners with ``torch.distributed``
    collectives, so every learner takes the same meta steps. Each returns its share of the
    results, which :func:`merge_learner_results` puts together in task order.
    """

    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        if self.config.num_learners > self.config.num_tasks:
            raise ValueError(f"num_learners={self.config.num_learners} > num_tasks="
                             f"{self.config.num_tasks}: every learner needs a task")
        # One intra-op thread per reserved CPU (see MBMPOConfig.learner_threads)
        torch.set_num_threads(self.config.learner_threads())
        self._ensemble: DynamicsEnsemble | None = None

    @override(TorchLearner)
    def _make_modules_ddp_if_necessary(self) -> None:
        """No DDP wrapper: DDP averages the gradients of ``loss.backward()``, which the meta
        step never calls (it reduces its vectors itself, :mod:`mbmpo_ray.meta.hooks`); the
        plain module keeps ``policy_params()`` / ``set_policy_params()`` and its state keys."""

    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        raise NotImplementedError(
            "MBMPO does not train from sampled batches; the algorithm calls meta_update()."
        )

    def rank_and_world_size(self) -> tuple[int, int]:
        """This learner's rank and the number of learners in its torch process group
        (``(0, 1)`` for a single learner)."""
        return rank_and_world_size(self.config.num_learners)

    def meta_update(
        self,
        *,
        ensemble_kwargs: dict[str, Any],
        ensemble_state: dict[str, torch.Tensor],
        start_obs: np.ndarray,
        env_spec: EnvSpec,
        action_low: np.ndarray,
        action_high: np.ndarray,
        seed: int,
        bounds: StateBounds | None = None,
        max_abs_return: float | None = None,
    ) -> dict[str, Any]:
        """``meta_steps_per_iter`` meta steps over this learner's tasks, then their adapted
        policies.

        Args:
            ensemble_kwargs / ensemble_state: the fitted :class:`DynamicsEnsemble`.
            start_obs: ``M x D`` real states to start imagined rollouts from.
            env_spec: the env's model reward and termination functions.
            action_low, action_high: the action box.
            seed: seeds this call's random streams, one per task (derived from the iteration
                by the caller, so a restored run draws the same numbers).
            bounds: box imagined transitions are clipped to (None: no clipping).
            max_abs_return: an imagined return above this magnitude, a non-finite one, or
                non-finite new parameters mark the imagination as diverged (on any learner):
                that meta step's parameter change is discarded, the remaining steps are
                skipped and every member's "adapted" policy is theta itself (None: non-finite
                values only).

        Returns:
            This learner's share, for :func:`merge_learner_results`: ``{"rank", "tasks",
            "history": [diagnostics of every meta step, this learner's per-task values],
            "theta": the new theta (numpy), "adapted": {task: adapted params (numpy)} for the
            first task of each member among this learner's, "diverged": "" or why}``.
        """
        cfg = self.config
        module = self.module[DEFAULT_MODULE_ID]
        rank, world_size = self.rank_and_world_size()
        tasks = learner_tasks(cfg.num_tasks, world_size, rank)
        sampler = self._imagination_sampler(
            ensemble_kwargs, ensemble_state, start_obs, env_spec, action_low, action_high,
            seed, bounds, tasks)
        params = {k: v.to(self._device) for k, v in module.policy_params().items()}
        params, history, diverged = self._meta_steps(params, sampler, tasks, max_abs_return)
        module.set_policy_params(params)
        out = {"rank": rank, "tasks": list(tasks), "history": history, "diverged": diverged,
               "theta": {k: v.detach().cpu().numpy() for k, v in params.items()},
               "adapted": {}}
        if diverged:
            return out
        # Adapted policies theta'_t of the updated theta (no collective: per-task work)
        task_params = adapt_policies(module.policy, params, sampler, cfg.meta_config,
                                     tasks=tasks)
        bad = [k for k, v in task_params.items() if not bool(torch.isfinite(v).all())]
        if bad:
            out["diverged"] = f"non-finite adapted parameters {bad}"
            return out
        firsts = set(first_task_of_each_member(cfg.num_tasks, cfg.ensemble_size))
        out["adapted"] = {t: {k: v[i].cpu().numpy() for k, v in task_params.items()}
                          for i, t in enumerate(tasks) if t in firsts}
        return out

    def _meta_steps(self, params: dict[str, torch.Tensor], sampler: ImaginationSampler,
                    tasks: range, max_abs_return: float | None):
        """The iteration's meta steps from ``params``: ``(params, history, diverged)``."""
        cfg = self.config
        policy, meta_cfg = self.module[DEFAULT_MODULE_ID].policy, cfg.meta_config
        world_size = self.rank_and_world_size()[1]
        all_reduce = torch_distributed_sum() if world_size > 1 else None
        history, diverged = [], ""
        for step in range(cfg.meta_steps_per_iter):
            # plasticity (KL of the inner step vs model disagreement): last step only, cheap
            last = step == cfg.meta_steps_per_iter - 1
            new_params, diag = meta_step(policy, params, sampler, meta_cfg,
                                         disagreement_fn=sampler.disagreement if last else None,
                                         tasks=tasks, all_reduce=all_reduce)
            history.append(diag)
            diverged = _divergence(diag, new_params, max_abs_return)
            if world_size > 1:  # every learner stops together (no one waits in a collective)
                diverged = self._any_learner(diverged)
            if diverged:
                break
            params = new_params
        return params, history, diverged

    def _any_learner(self, reason: str) -> str:
        """``reason``, or a note that another learner diverged, if any learner's is set."""
        flag = torch.tensor([1.0 if reason else 0.0], device=self._device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return reason or ("imagination diverged on another learner" if flag.item() else "")

    def _imagination_sampler(self, ensemble_kwargs, ensemble_state, start_obs, env_spec,
                             action_low, action_high, seed, bounds,
                             tasks: range) -> ImaginationSampler:
        # Large inputs arrive as object-store references (closure args are not auto-resolved).
        if isinstance(ensemble_state, ray.ObjectRef):
            ensemble_state = ray.get(ensemble_state)
        if isinstance(start_obs, ray.ObjectRef):
            start_obs = ray.get(start_obs)
        cfg, dev = self.config, self._device
        if self._ensemble is None:
            self._ensemble = DynamicsEnsemble(**ensemble_kwargs).to(dev)
        self._ensemble.load_state_dict(ensemble_state)
        dynamics = self._ensemble
        dtype = autocast_dtype(cfg.imagination_precision, dev.type)
        if dtype is not None:
            dynamics = AutocastDynamics(dynamics, dtype)
        biases = cfg.model_biases()
        if biases is not None:
            dynamics = BiasedDynamics(dynamics, biases, cfg.model_bias_std)
        # a copy: object-store arrays are read-only, which torch warns about
        as_tensor = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32, device=dev)  # noqa: E731
        return ImaginationSampler(
            dynamics,
            self.module[DEFAULT_MODULE_ID].policy,
            as_tensor(start_obs),
            num_tasks=cfg.num_tasks,
            rollouts_per_task=cfg.rollouts_per_task,
            horizon=cfg.rollout_horizon,
            reward_fn=env_spec.reward_fn,
            termination_fn=env_spec.termination_fn,
            action_low=as_tensor(action_low),
            action_high=as_tensor(action_high),
            seed=int(seed),
            tasks=tasks,
            deterministic_model=cfg.deterministic_model_rollouts,
            bounds=None if bounds is None else bounds.to(device=dev, dtype=torch.float32),
        )


def learner_tasks(num_tasks: int, world_size: int, rank: int) -> range:
    """The tasks of learner ``rank`` of ``world_size``: every ``world_size``-th task from
    ``rank`` (sizes differ by <= 1). Strided rather than contiguous (``task_range``): tasks are
    member-major (:func:`~mbmpo_ray.imagination.task_members`) and every imagined step is one
    model call over all K members, padded to the most tasks any member has on this learner, so
    a stride spreads each learner's tasks evenly over the members and its model work is 1/N."""
    if not 0 <= rank < world_size <= num_tasks:
        raise ValueError(f"need 0 <= rank ({rank}) < world_size ({world_size}) <= num_tasks "
                         f"({num_tasks})")
    return range(rank, num_tasks, world_size)


# Diagnostics of one learner's tasks: per-task arrays (concatenated in task order) and
# per-learner scalars (averaged, weighted by the learner's number of tasks); "time_*": the
# slowest learner's; everything else is already the same on every learner.
_PER_LEARNER_PREFIXES = ("baseline_ev_", "plasticity_")


def merge_learner_results(results: list[dict[str, Any]], num_tasks: int,
                          ensemble_size: int) -> dict[str, Any]:
    """The learners' :meth:`~MBMPOTorchLearner.meta_update` shares as one result:
    ``{"history": [diagnostics of every meta step over all tasks], "adapted_params": [K
    dicts, member k's adapted policy], "diverged": "" or why}``. If any learner diverged,
    every member's "adapted" policy is theta."""
    results = sorted(results, key=lambda r: r["rank"])
    tasks = [t for r in results for t in r["tasks"]]
    if sorted(tasks) != list(range(num_tasks)):
        raise RuntimeError(f"the learners' results cover tasks {sorted(tasks)}, not all "
                           f"{num_tasks}: a learner is missing")
    order = np.argsort(tasks)
    weights = np.array([len(r["tasks"]) for r in results]) / num_tasks
    history = [_merge_diagnostics([r["history"][i] for r in results], order, weights)
               for i in range(len(results[0]["history"]))]
    diverged = next((r["diverged"] for r in results if r["diverged"]), "")
    firsts = first_task_of_each_member(num_tasks, ensemble_size)
    if diverged:
        adapted = [results[0]["theta"]] * len(firsts)
    else:
        by_task = {t: p for r in results for t, p in r["adapted"].items()}
        adapted = [by_task[t] for t in firsts]
    return {"history": history, "adapted_params": adapted, "diverged": diverged}


def _merge_diagnostics(diags: list[dict[str, Any]], order: np.ndarray,
                       weights: np.ndarray) -> dict[str, Any]:
    """One meta step's diagnostics of every learner (rank order) over all tasks."""
    out = dict(diags[0])
    for key in diags[0]:
        if key.endswith("_per_task") or key == "task_members":
            out[key] = np.concatenate([d[key] for d in diags])[order]
        elif key.startswith(_PER_LEARNER_PREFIXES):
            out[key] = float(np.dot(weights, [d[key] for d in diags]))
        elif key.startswith("time_"):
            out[key] = max(d[key] for d in diags)
    return out


def _divergence(diag: dict[str, Any], new_params: dict[str, torch.Tensor],
                max_abs_return: float | None) -> str:
    """Why a meta step's imagination diverged ("" if it did not)."""
    for key in ("pre_return_mean", "post_return_mean"):
        value = float(diag.get(key, 0.0))
        if not np.isfinite(value):
            return f"imagined {key}={value}"
        if max_abs_return is not None and abs(value) > max_abs_return:
            return f"imagined {key}={value:.3g} beyond max_abs_imagined_return={max_abs_return:g}"
    bad = [k for k, v in new_params.items() if not bool(torch.isfinite(v).all())]
    if bad:
        return f"non-finite policy parameters {bad} after the meta step"
    return ""
