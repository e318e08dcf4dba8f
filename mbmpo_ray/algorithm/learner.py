"""The central meta-learner: an RLlib TorchLearner that runs MB-MPO meta steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override

from mbmpo_ray.envs import get_env_spec
from mbmpo_ray.imagination import StateBounds, imagine
from mbmpo_ray.meta import adapt, meta_step, process_batch
from mbmpo_ray.models import DynamicsEnsemble


class MBMPOTorchLearner(TorchLearner):
    """Runs ``meta_steps_per_iter`` MB-MPO meta steps on the RLModule's policy parameters.

    Called by the algorithm through ``LearnerGroup.foreach_learner`` with the current ensemble
    weights and real start states (both object-store references when the learner is remote).
    Imagination, the inner step per task and the TRPO/PPO outer step all run on this Learner's
    device (a GPU when ``num_gpus_per_learner > 0``).
    """

    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        # One intra-op thread per reserved CPU: the meta step is many small kernels, and
        # oversubscribing cores shared with env runners / model trainers slows it ~10x.
        threads = self.config.learner_torch_threads
        if threads is None:
            cpus = self.config.num_cpus_per_learner
            threads = int(cpus) if isinstance(cpus, (int, float)) else 1
        torch.set_num_threads(max(1, threads))
        self._ensemble: DynamicsEnsemble | None = None

    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        raise NotImplementedError(
            "MBMPO does not train from sampled batches; the algorithm calls meta_update()."
        )

    def _get_ensemble(self, ensemble_kwargs: dict[str, Any]) -> DynamicsEnsemble:
        if self._ensemble is None:
            self._ensemble = DynamicsEnsemble(**ensemble_kwargs).to(self._device)
        return self._ensemble

    def meta_update(
        self,
        *,
        ensemble_kwargs: dict[str, Any],
        ensemble_state: dict[str, torch.Tensor],
        start_obs: np.ndarray,
        action_low: np.ndarray,
        action_high: np.ndarray,
        num_steps: int,
        seed: int,
        bounds: StateBounds | None = None,
    ) -> dict[str, Any]:
        """``num_steps`` meta steps, then the adapted policies theta'_k for real sampling.

        Args:
            ensemble_kwargs / ensemble_state: the fitted :class:`DynamicsEnsemble`.
            start_obs: ``M x D`` real states to start imagined rollouts from.
            action_low, action_high: the action box.
            num_steps: meta steps to run.
            seed: seeds this call's torch generator (derived from the iteration by the caller,
                so a restored run draws the same numbers).
            bounds: box imagined transitions are clipped to (None: no clipping).

        Returns:
            ``{"diagnostics": {...}, "adapted_params": [K dicts of numpy arrays]}``.
        """
        # Large inputs arrive as object-store references (closure args are not auto-resolved).
        if isinstance(ensemble_state, ray.ObjectRef):
            ensemble_state = ray.get(ensemble_state)
        if isinstance(start_obs, ray.ObjectRef):
            start_obs = ray.get(start_obs)
        cfg = self.config
        module = self.module[DEFAULT_MODULE_ID]
        policy = module.policy
        ensemble = self._get_ensemble(ensemble_kwargs)
        ensemble.load_state_dict(ensemble_state)
        spec = get_env_spec(cfg.model_env_id)
        meta_cfg = cfg.meta_config
        dev = self._device
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        start = torch.tensor(np.asarray(start_obs), dtype=torch.float32, device=dev)
        low = torch.as_tensor(action_low, dtype=torch.float32, device=dev)
        high = torch.as_tensor(action_high, dtype=torch.float32, device=dev)
        T, N = cfg.num_tasks, cfg.rollouts_per_task
        if bounds is not None:
            bounds = bounds.to(device=dev, dtype=torch.float32)

        def sample_fn(task_params):
            idx = torch.randint(len(start), (T, N), generator=gen, device=dev)
            return imagine(
                ensemble,
                lambda obs, g: policy.sample(task_params, obs, g, batched=True),
                start[idx],
                cfg.horizon,
                spec.reward_fn,
                spec.termination_fn,
                action_low=low,
                action_high=high,
                generator=gen,
                deterministic_model=cfg.deterministic_model_rollouts,
                bounds=bounds,
            )

        params = {k: v.to(dev) for k, v in module.policy_params().items()}
        history: list[dict[str, Any]] = []
        for _ in range(num_steps):
            params, diag = meta_step(policy, params, sample_fn, meta_cfg)
            history.append(diag)
        module.set_policy_params(params)

        # Adapted policies theta'_k of the updated theta, one per member, for real sampling.
        task_params = policy.expand_params(params, T)
        for _ in range(meta_cfg.num_inner_steps):
            tb = process_batch(
                policy, task_params, sample_fn(task_params), meta_cfg.gamma,
                meta_cfg.gae_lambda, meta_cfg.normalize_advantages, meta_cfg.baseline_reg_coeff,
            )
            task_params = {
                k: v.detach()
                for k, v in adapt(
                    policy, task_params, tb, meta_cfg.alpha, first_order=True,
                    batched_params=True,
                ).items()
            }
        per_member = T // cfg.ensemble_size
        adapted = [
            {k: v[m * per_member].cpu().numpy() for k, v in task_params.items()}
            for m in range(cfg.ensemble_size)
        ]
        return {"diagnostics": _summarise(history), "adapted_params": adapted}


def _summarise(history: list[dict[str, Any]]) -> dict[str, float]:
    """Scalar diagnostics of a run of meta steps: last value and mean over steps."""
    out: dict[str, float] = {}
    if not history:
        return out
    for key, last in history[-1].items():
        if isinstance(last, (int, float)) and not isinstance(last, bool):
            out[key] = float(last)
            out[f"{key}_mean_over_steps"] = float(np.mean([h[key] for h in history]))
        elif key.endswith("_per_task"):
            out[key.replace("_per_task", "_per_member_min")] = float(np.min(last))
    return out
