"""The central meta-learner: an RLlib TorchLearner that runs MB-MPO meta steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override

from mbmpo_ray.envs import EnvSpec
from mbmpo_ray.imagination import (
    AutocastDynamics,
    BiasedDynamics,
    ImaginationSampler,
    StateBounds,
    autocast_dtype,
    first_task_of_each_member,
)
from mbmpo_ray.meta import adapt_policies, meta_step
from mbmpo_ray.models import DynamicsEnsemble


class MBMPOTorchLearner(TorchLearner):
    """Runs the meta phase of an MB-MPO iteration on the RLModule's policy parameters.

    Called by the algorithm through ``LearnerGroup.foreach_learner`` with the current ensemble
    weights and real start states (object-store references when the learner is remote). This
    class only places tensors on its device (a GPU when ``num_gpus_per_learner > 0``), sets its
    threads and loops :func:`~mbmpo_ray.meta.meta_step`; the maths lives in ``mbmpo_ray.meta``
    and ``mbmpo_ray.imagination``.
    """

    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        # One intra-op thread per reserved CPU (see MBMPOConfig.learner_threads)
        torch.set_num_threads(self.config.learner_threads())
        self._ensemble: DynamicsEnsemble | None = None

    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        raise NotImplementedError(
            "MBMPO does not train from sampled batches; the algorithm calls meta_update()."
        )

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
        """``meta_steps_per_iter`` meta steps, then the adapted policies theta'_k.

        Args:
            ensemble_kwargs / ensemble_state: the fitted :class:`DynamicsEnsemble`.
            start_obs: ``M x D`` real states to start imagined rollouts from.
            env_spec: the env's model reward and termination functions.
            action_low, action_high: the action box.
            seed: seeds this call's torch generator (derived from the iteration by the caller,
                so a restored run draws the same numbers).
            bounds: box imagined transitions are clipped to (None: no clipping).
            max_abs_return: an imagined return above this magnitude, a non-finite one, or
                non-finite new parameters mark the imagination as diverged: that meta step's
                parameter change is discarded, the remaining steps are skipped and every
                member's "adapted" policy is theta itself (None: non-finite values only).

        Returns:
            ``{"history": [diagnostics of every meta step], "adapted_params": [K dicts of
            numpy arrays, one adapted policy per ensemble member], "diverged": "" or why}``.
        """
        cfg = self.config
        module = self.module[DEFAULT_MODULE_ID]
        policy, meta_cfg = module.policy, cfg.meta_config
        sampler = self._imagination_sampler(
            ensemble_kwargs, ensemble_state, start_obs, env_spec, action_low, action_high,
            seed, bounds)
        params = {k: v.to(self._device) for k, v in module.policy_params().items()}
        history, diverged = [], ""
        for step in range(cfg.meta_steps_per_iter):
            # plasticity (KL of the inner step vs model disagreement): last step only, cheap
            last = step == cfg.meta_steps_per_iter - 1
            new_params, diag = meta_step(policy, params, sampler, meta_cfg,
                                         disagreement_fn=sampler.disagreement if last else None)
            history.append(diag)
            diverged = _divergence(diag, new_params, max_abs_return)
            if diverged:
                break
            params = new_params
        module.set_policy_params(params)

        # Adapted policies theta'_t of the updated theta; member k's is that of its first task.
        members = first_task_of_each_member(cfg.num_tasks, cfg.ensemble_size)
        if diverged:
            theta = {k: v.detach().cpu().numpy() for k, v in params.items()}
            return {"history": history, "adapted_params": [theta] * len(members),
                    "diverged": diverged}
        task_params = adapt_policies(policy, params, sampler, meta_cfg)
        adapted = [{k: v[t].cpu().numpy() for k, v in task_params.items()} for t in members]
        bad = [k for k, v in task_params.items() if not bool(torch.isfinite(v).all())]
        if bad:
            theta = {k: v.detach().cpu().numpy() for k, v in params.items()}
            return {"history": history, "adapted_params": [theta] * len(members),
                    "diverged": f"non-finite adapted parameters {bad}"}
        return {"history": history, "adapted_params": adapted, "diverged": ""}

    def _imagination_sampler(self, ensemble_kwargs, ensemble_state, start_obs, env_spec,
                             action_low, action_high, seed, bounds) -> ImaginationSampler:
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
            generator=torch.Generator(device=dev).manual_seed(int(seed)),
            deterministic_model=cfg.deterministic_model_rollouts,
            bounds=None if bounds is None else bounds.to(device=dev, dtype=torch.float32),
        )


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
