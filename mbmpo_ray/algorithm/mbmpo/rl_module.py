"""RLModule wrapping the functional Gaussian MLP policy of :mod:`mbmpo_ray.meta`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override
from torch import nn

from mbmpo_ray.meta import GaussianMLPPolicy


class MBMPOTorchRLModule(TorchRLModule):
    """The pre-update policy theta as RLlib sees it.

    Holds the parameters of a :class:`~mbmpo_ray.meta.GaussianMLPPolicy` as an ``nn.ParameterDict``
    and outputs ``action_dist_inputs = [mean, log_std]`` for RLlib's ``TorchDiagGaussian``.
    The env runners also load *adapted* parameters theta'_k into it
    (:meth:`set_policy_params`) to collect real data with each member's adapted policy.

    ``model_config`` keys (filled by :class:`~mbmpo_ray.MBMPOConfig`):
    ``mbmpo_policy_hidden_sizes``, ``mbmpo_policy_activation``, ``mbmpo_init_log_std``,
    ``mbmpo_policy_obs_start``, ``mbmpo_seed``.
    """

    @override(TorchRLModule)
    def setup(self):
        mc = self.model_config or {}
        self.policy = GaussianMLPPolicy(
            obs_dim=int(np.prod(self.observation_space.shape)),
            act_dim=int(np.prod(self.action_space.shape)),
            hidden_sizes=tuple(mc.get("mbmpo_policy_hidden_sizes", (32, 32))),
            activation=mc.get("mbmpo_policy_activation", "tanh"),
            init_log_std=mc.get("mbmpo_init_log_std", 0.0),
            obs_start=mc.get("mbmpo_policy_obs_start", 0),
        )
        gen = torch.Generator().manual_seed(int(mc.get("mbmpo_seed", 0)))
        self.params = nn.ParameterDict(
            {k: nn.Parameter(v) for k, v in self.policy.init_params(gen).items()}
        )

    def policy_params(self) -> dict[str, torch.Tensor]:
        """Detached copies of theta (name -> tensor), in the policy's parameter order."""
        return {k: self.params[k].detach().clone() for k in self.policy.param_names}

    def set_policy_params(self, params: dict[str, Any]) -> None:
        """Load theta (tensors or arrays, same names and shapes) in place."""
        with torch.no_grad():
            for k in self.policy.param_names:
                p = self.params[k]
                v = params[k]
                v = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
                p.copy_(v.to(dtype=p.dtype, device=p.device))

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        p0 = self.params["log_std"]
        obs = batch[Columns.OBS].to(dtype=p0.dtype)
        mean, log_std = self.policy.mean_and_log_std(dict(self.params), obs)
        return {Columns.ACTION_DIST_INPUTS: torch.cat([mean, log_std.expand_as(mean)], -1)}
