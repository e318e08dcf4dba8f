"""MBPO's SAC RLModule: RLlib's SAC policy, its twin critics as one batched stack, and the
observation dims the policy must not see removed.

The policy (``pi_encoder`` + ``pi``, RLlib's SAC catalog) is what env runners run and what
weight syncs carry. The critics and their targets are each ONE module,
:class:`StackedQ`: both Q networks of clipped double Q (Fujimoto et al. 2018; SAC, Haarnoja
et al. 2018) with their layers stacked, ``K x in x out``, so one ``torch.baddbmm`` per layer
evaluates both (the ``EnsembleLinear`` idea of mbrl-lib's dynamics ensembles).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.sac.default_sac_rl_module import DefaultSACRLModule
from ray.rllib.algorithms.sac.sac_catalog import SACCatalog
from ray.rllib.algorithms.sac.sac_learner import ACTION_DIST_INPUTS_NEXT, QF_PREDS, QF_TWIN_PREDS
from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.models.base import ENCODER_OUT, Model
from ray.rllib.core.models.torch.heads import TorchMLPHead
from ray.rllib.core.rl_module.apis import QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.annotations import override
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "tanh": torch.tanh, "silu": nn.functional.silu,
    "swish": nn.functional.silu, "elu": nn.functional.elu,
}

# the largest observation value the policy acts on (max_abs_real_value's default)
_MAX_POLICY_INPUT = 1e8


class Float32MLPHead(TorchMLPHead):
    """RLlib's MLP head computed in float32 even under a bfloat16 autocast (the Learner's
    ``sac_precision``): the policy's mean and log-std keep float32 precision; only the wide
    hidden layers of the encoder run in bf16. Without autocast it is the plain head."""

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
    """:class:`SACCatalog` whose policy head stays float32 under a bf16 autocast
    (:class:`Float32MLPHead`). The critics are not built by the catalog: see
    :class:`StackedQ`."""

    @override(SACCatalog)
    def build_pi_head(self, framework: str) -> Model:
        return _float32_head(super().build_pi_head(framework))


def stacked_mlp(x: torch.Tensor, weights: Sequence[torch.Tensor],
                biases: Sequence[torch.Tensor], activation: Callable) -> torch.Tensor:
    """K MLPs of one shape on one batch each: ``h <- act(b_l + h @ W_l)``, no activation
    after the last layer, which runs in float32 under an autocast.

    Args:
        x: ``B x D`` (the same rows for all K networks) or ``K x B x D``.
        weights: per layer ``K x in x out``.
        biases: per layer ``K x 1 x out``.
        activation: elementwise function after every layer but the last.

    Returns:
        ``K x B x out``.
    """
    k = weights[0].shape[0]
    h = x.expand(k, *x.shape) if x.dim() == 2 else x
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if i < last:
            h = activation(torch.baddbmm(b, h, w))
        elif torch.is_autocast_enabled(h.device.type):
            with torch.autocast(h.device.type, enabled=False):
                h = torch.baddbmm(b, h.float(), w)
        else:
            h = torch.baddbmm(b, h, w)
    return h


class StackedQ(nn.Module):
    """``K`` Q networks ``Q_k(obs, act)`` of one shape as one module: layer ``l`` holds
    ``weights[l]``: ``K x in x out`` and ``biases[l]``: ``K x 1 x out``; one
    ``torch.baddbmm`` per layer evaluates all K (K = 2 for SAC's clipped double Q).

    Each network is the MLP ``[obs, act] -> hidden... -> 1`` with ``activation`` after every
    hidden layer, initialised as ``torch.nn.Linear`` does (what RLlib's MLPs use without a
    configured initializer): weights and biases uniform in ``+-1/sqrt(in)``.
    """

    def __init__(self, k: int, in_dim: int, hiddens: Sequence[int], activation: str):
        super().__init__()
        self.k, self.in_dim = int(k), int(in_dim)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation.lower()]
        dims = [self.in_dim, *(int(h) for h in hiddens), 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(k, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(k, 1, d_out).uniform_(-bound, bound)))

    def params(self, detach: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(weights, biases)``, detached (no gradient to them, still to the inputs) if
        asked: what SAC's policy loss needs of the critics."""
        if detach:
            return [w.detach() for w in self.weights], [b.detach() for b in self.biases]
        return list(self.weights), list(self.biases)

    def forward(self, obs: torch.Tensor, act: torch.Tensor,
                detach_params: bool = False) -> torch.Tensor:
        """``obs``: ``B x O``, ``act``: ``B x A`` (or both ``K x B x .``) -> ``K x B``."""
        weights, biases = self.params(detach_params)
        return stacked_mlp(torch.cat((obs, act), -1), weights, biases,
                           self.activation).squeeze(-1)

    @torch.no_grad()
    def load_linear_layers(self, nets: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]]
                           ) -> None:
        """Set network ``k``'s layers from ``nets[k]`` = ``[(weight out x in, bias out)]``
        (``torch.nn.Linear``'s layout), e.g. from separate critics."""
        for k, layers in enumerate(nets):
            for w_l, b_l, (w, b) in zip(self.weights, self.biases, layers, strict=True):
                w_l[k].copy_(torch.as_tensor(w).T)
                b_l[k, 0].copy_(torch.as_tensor(b))


def _linear_layers(state: dict[str, Any], prefixes: Sequence[str]
                   ) -> list[tuple[Any, Any]]:
    """The ``(weight, bias)`` pairs of the Linear layers under ``prefixes`` of an RLlib
    state dict, in order (RLlib's MLPs: ``<prefix>.net.mlp.<i>.weight``)."""
    layers = []
    for prefix in prefixes:
        pattern = re.compile(re.escape(prefix) + r"\.net\.mlp\.(\d+)\.weight$")
        found = sorted((int(m.group(1)), key) for key in state
                       if (m := pattern.match(key)))
        layers += [(state[key], state[key[:-len("weight")] + "bias"]) for _, key in found]
    return layers


def stack_separate_critics(state: dict[str, Any]) -> dict[str, Any]:
    """A module state of the layout before the critics were stacked (RLlib's default:
    ``qf_encoder``, ``qf``, ``qf_twin_encoder``, ``qf_twin`` and their ``target_`` copies)
    in the stacked layout (``qf.weights.l``: ``K x in x out``, ...); other states as they
    are. Lets checkpoints of earlier versions load."""
    if not any(key.startswith("qf_encoder.") for key in state):
        return state
    out = {k: v for k, v in state.items()
           if not re.match(r"(target_)?qf(_twin)?(_encoder)?\.", k)}
    for prefix in ("", "target_"):
        nets = [_linear_layers(state, (f"{prefix}qf{twin}_encoder", f"{prefix}qf{twin}"))
                for twin in ("", "_twin") if f"{prefix}qf{twin}_encoder.net.mlp.0.weight"
                in state]
        if not nets:
            continue
        for layer in range(len(nets[0])):
            ws = [np.asarray(net[layer][0]).T for net in nets]
            bs = [np.asarray(net[layer][1])[None] for net in nets]
            out[f"{prefix}qf.weights.{layer}"] = np.ascontiguousarray(np.stack(ws))
            out[f"{prefix}qf.biases.{layer}"] = np.stack(bs)
    return out


class MBPOTorchRLModule(DefaultSACTorchRLModule):
    """RLlib's SAC RLModule (squashed Gaussian policy ``pi_encoder`` + ``pi``, twin Q
    networks and their targets, RLlib's forward passes and output keys) with

    * the twin critics as ONE :class:`StackedQ` (``qf``: K = 2 with ``twin_q``, else 1; its
      Polyak copy ``target_qf``), each an MLP on ``[obs, action]`` (``fcnet_hiddens``,
      ``fcnet_activation``) as in SAC and MBPO's reference code;
    * the first ``model_config["mbpo_obs_start"]`` observation dims dropped: they (e.g.
      HalfCheetah's unbounded x position) are in the env's observation only so the model
      reward can be computed (:class:`~mbmpo_ray.envs.EnvSpec.policy_obs_start`); the networks
      are built for, and see, the rest.

    Env runners use :meth:`forward_inference` / :meth:`forward_exploration` (the policy only,
    an ``inference_only`` module builds no critics); the Learner's SAC update uses
    :meth:`policy_logits` and :attr:`qf` directly (:mod:`~mbmpo_ray.algorithm.mbpo.learner`);
    :meth:`forward_train` gives RLlib's SAC outputs, so RLlib's SAC loss runs on it too.
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

    @override(RLModule)
    def setup(self) -> None:
        self.twin_q = bool(self.model_config["twin_q"])
        self.pi_encoder = self.catalog.build_encoder(framework=self.framework)
        self.pi = self.catalog.build_pi_head(framework=self.framework)
        if not self.inference_only:
            cfg = self.model_config
            in_dim = (int(np.prod(self.observation_space.shape))
                      + int(np.prod(self.action_space.shape)))
            hiddens = [*cfg["fcnet_hiddens"], *(cfg.get("head_fcnet_hiddens") or [])]
            self.qf = StackedQ(2 if self.twin_q else 1, in_dim, hiddens,
                               cfg["fcnet_activation"])

    @override(TargetNetworkAPI)
    def make_target_networks(self) -> None:
        self.target_qf = make_target_network(self.qf)

    @override(DefaultSACRLModule)
    def get_non_inference_attributes(self) -> list[str]:
        return ["qf", "target_qf"]

    @override(TargetNetworkAPI)
    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.qf, self.target_qf)]

    @override(DefaultSACTorchRLModule)
    def set_state(self, state: dict[str, Any]) -> None:
        """RLlib's, also for states with the separate critics of earlier versions."""
        super().set_state(stack_separate_critics(state))

    # ------------------------------------------------------------------ forward passes
    def policy_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """The observation dims the networks see (``... x O_env -> ... x O``)."""
        return obs[..., self._obs_start:] if self._obs_start else obs

    def policy_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """``B x O`` policy observations -> ``B x 2A`` squashed-Gaussian inputs (mean,
        log-std)."""
        return self.pi(self.pi_encoder({Columns.OBS: obs})[ENCODER_OUT])

    @override(DefaultSACTorchRLModule)
    def _forward_inference(self, batch: dict, **kwargs) -> dict[str, Any]:
        # acting on a real env whose observation is not finite or explodes (a broken user
        # env): act on zeros / the clipped value instead of failing the runner with NaN
        # logits (the bad rows are dropped from the data, max_abs_real_value)
        obs = torch.nan_to_num(batch[Columns.OBS], nan=0.0, posinf=0.0, neginf=0.0)
        obs = obs.clamp(-_MAX_POLICY_INPUT, _MAX_POLICY_INPUT)
        return {Columns.ACTION_DIST_INPUTS: self.policy_logits(self.policy_obs(obs))}

    @override(DefaultSACTorchRLModule)
    def _forward_exploration(self, batch: dict, **kwargs) -> dict[str, Any]:
        return self._forward_inference(batch)

    @override(DefaultSACTorchRLModule)
    def _forward_train(self, batch: dict) -> dict[str, Any]:
        """RLlib's continuous SAC forward pass (its output keys and sampling order) on the
        stacked critics; RLlib's SAC loss consumes it."""
        if not isinstance(self.action_space, gym.spaces.Box):
            raise ValueError(f"MBPO needs a Box action space, got {self.action_space}")
        obs, next_obs = self.policy_obs(batch[Columns.OBS]), self.policy_obs(
            batch[Columns.NEXT_OBS])
        out = {}
        q_k_b = self.qf(obs, batch[Columns.ACTIONS])
        out[QF_PREDS] = q_k_b[0]
        if self.twin_q:
            out[QF_TWIN_PREDS] = q_k_b[1]
        logits, logits_next = self.policy_logits(obs), self.policy_logits(next_obs)
        out[Columns.ACTION_DIST_INPUTS], out[ACTION_DIST_INPUTS_NEXT] = logits, logits_next
        dist_cls = self.get_train_action_dist_cls()
        act, out["logp_resampled"] = dist_cls.from_logits(logits).rsample_and_logp()
        act_next, logp_next = dist_cls.from_logits(logits_next).sample_and_logp()
        out["logp_next_resampled"] = logp_next.detach()
        out["q_curr"] = self.qf(obs, act, detach_params=True).min(0).values
        with torch.no_grad():
            out["q_target_next"] = self.target_qf(next_obs, act_next).min(0).values
        return out

    @override(QNetAPI)
    def compute_q_values(self, batch: dict[str, Any], squeeze: bool = True) -> torch.Tensor:
        """``min_k Q_k(obs, act)`` (``B``; ``B x 1`` with ``squeeze=False``)."""
        q = self.qf(self.policy_obs(batch[Columns.OBS]), batch[Columns.ACTIONS]).min(0).values
        return q if squeeze else q.unsqueeze(-1)

    @override(TargetNetworkAPI)
    def forward_target(self, batch: dict[str, Any], squeeze: bool = True) -> torch.Tensor:
        """``min_k Q'_k(obs, act)`` of the target critics."""
        q = self.target_qf(self.policy_obs(batch[Columns.OBS]),
                           batch[Columns.ACTIONS]).min(0).values
        return q if squeeze else q.unsqueeze(-1)
