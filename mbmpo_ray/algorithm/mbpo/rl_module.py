"""RLlib's default SAC RLModule with MBPO's critic architecture and the observation dims the
policy must not see removed."""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.sac.sac_catalog import SACCatalog
from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import Encoder, Model
from ray.rllib.core.models.configs import MLPEncoderConfig
from ray.rllib.core.models.torch.heads import TorchMLPHead
from ray.rllib.utils.annotations import override


class Float32MLPHead(TorchMLPHead):
    """RLlib's MLP head computed in float32 even under a bfloat16 autocast (the Learner's
    ``sac_precision``): Q values (hundreds on HalfCheetah, where bf16's 8-bit mantissa rounds
    in steps of 2) and the policy's mean and log-std keep float32 precision; only the wide
    hidden layers of the encoders run in bf16. Without autocast it is the plain head."""

    def _forward(self, inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        if not torch.is_autocast_enabled(inputs.device.type):
            return super()._forward(inputs, **kwargs)
        with torch.autocast(inputs.device.type, enabled=False):
            return super()._forward(inputs.float(), **kwargs)


def _float32_head(head: Model) -> Model:
    """``head`` as a :class:`Float32MLPHead` (the same module and parameters: the class adds
    no state, so the random initialisation and checkpoints are unchanged); other kinds as
    they are."""
    if type(head) is TorchMLPHead:
        head.__class__ = Float32MLPHead
    return head


class MBPOCatalog(SACCatalog):
    """:class:`SACCatalog` whose continuous Q encoder is one MLP on ``[obs, action]``
    (``fcnet_hiddens``, ``fcnet_activation``): the critic of SAC (Haarnoja et al. 2018) and of
    MBPO's reference code. RLlib's default instead encodes obs and action in two streams and
    fuses them with two more layers (``fusionnet_hiddens``), about 7x the FLOPs per Q
    evaluation at 256 units; the policy network is RLlib's unchanged. Its heads (the output
    layers) stay float32 under a bf16 autocast (:class:`Float32MLPHead`)."""

    @override(SACCatalog)
    def build_pi_head(self, framework: str) -> Model:
        return _float32_head(super().build_pi_head(framework))

    @override(SACCatalog)
    def build_qf_head(self, framework: str) -> Model:
        return _float32_head(super().build_qf_head(framework))

    @override(SACCatalog)
    def _build_qf_encoder_continuous(self, framework: str) -> Encoder:
        obs_cfg = self._encoder_config  # the policy's MLP encoder config, on obs only
        in_dim = int(self.observation_space.shape[0]) + int(self.action_space.shape[0])
        fields = {f.name: getattr(obs_cfg, f.name) for f in dataclasses.fields(MLPEncoderConfig)
                  if hasattr(obs_cfg, f.name)}
        fields["input_dims"] = [in_dim]
        self.qf_encoder_config = MLPEncoderConfig(**fields)
        return self.qf_encoder_config.build(framework=framework)


class MBPOTorchRLModule(DefaultSACTorchRLModule):
    """:class:`DefaultSACTorchRLModule` (policy, twin Q networks and their targets, squashed
    Gaussian actions; RLlib's forward passes) with

    * the critic of :class:`MBPOCatalog` (one MLP on ``[obs, action]``), and
    * the first ``model_config["mbpo_obs_start"]`` observation dims dropped: they (e.g.
      HalfCheetah's unbounded x position) are in the env's observation only so the model
      reward can be computed (:class:`~mbmpo_ray.envs.EnvSpec.policy_obs_start`); the networks
      are built for, and see, the rest.
    """

    def __init__(self, *args, **kwargs):
        start = int((kwargs.get("model_config") or {}).get("mbpo_obs_start", 0))
        space = kwargs.get("observation_space")
        if start and isinstance(space, gym.spaces.Box):
            kwargs["observation_space"] = gym.spaces.Box(
                np.asarray(space.low)[start:], np.asarray(space.high)[start:],
                dtype=space.dtype)
        if kwargs.get("catalog_class") is None:
            kwargs["catalog_class"] = MBPOCatalog
        self._obs_start = start
        super().__init__(*args, **kwargs)

    def _policy_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not self._obs_start:
            return batch
        out = dict(batch)
        for key in (Columns.OBS, Columns.NEXT_OBS):
            if key in out:
                out[key] = out[key][..., self._obs_start:]
        return out

    @override(DefaultSACTorchRLModule)
    def _forward_inference(self, batch: dict, **kwargs) -> dict[str, Any]:
        return super()._forward_inference(self._policy_view(batch))

    @override(DefaultSACTorchRLModule)
    def _forward_exploration(self, batch: dict, **kwargs) -> dict[str, Any]:
        return super()._forward_inference(self._policy_view(batch))

    @override(DefaultSACTorchRLModule)
    def _forward_train(self, batch: dict) -> dict[str, Any]:
        return super()._forward_train(self._policy_view(batch))

    @override(DefaultSACTorchRLModule)
    def _qf_forward_train_helper(self, batch: dict[str, Any], encoder, head,
                                 squeeze: bool = True):
        """Q(obs, action) through the MLP critic: the encoder sees ``[obs, action]``."""
        if isinstance(self.action_space, gym.spaces.Box):
            batch = {Columns.OBS: torch.cat((batch[Columns.OBS], batch[Columns.ACTIONS]), -1)}
        return super()._qf_forward_train_helper(batch, encoder, head, squeeze=squeeze)
