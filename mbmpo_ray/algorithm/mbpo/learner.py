"""MBPO's Learner: RLlib's SAC (loss, optimisers, entropy tuning) driven in blocks, with the
SAC update written as one pass over batched networks.

``MBPOTorchLearner`` adds to :class:`SACTorchLearner`:

* the data: a device copy of the real transitions (appended block by block) and the model
  buffer (:class:`~mbmpo_ray.buffer.ModelBuffer`, refilled every refit by
  :meth:`model_rollouts`, kept here next to the policy that generates it);
* :meth:`train_block`: ``num_updates`` SAC gradient steps in ONE call, each on a fresh batch
  of ``int(batch * real_ratio)`` real + the rest model rows, then a Polyak target update with
  ``tau`` after every step (RLlib's SAC updates the targets once per ``update`` call; the step
  is RLlib's ``update_target_network`` formula done in place, one ``torch._foreach_lerp_``);
* the SAC update itself as :func:`sac_losses` (RLlib's continuous SAC loss terms, unchanged:
  clipped double Q with a Huber critic loss, the reparameterised policy loss, the automatic
  entropy tuning of ``log_alpha``) on the module's stacked twin critics
  (:class:`~mbmpo_ray.algorithm.mbpo.rl_module.StackedQ`: one ``baddbmm`` per layer for both
  critics), one ``torch.autograd.grad`` of the summed losses (the four losses touch disjoint
  parameters, so this equals RLlib's one backward pass per optimiser), and the Adam steps of
  all optimisers as PyTorch's fused Adam kernel called directly on the optimisers' own
  states (:class:`FusedAdamSteps`); no host reads inside a block (its last update logs
  RLlib's SAC metrics as tensors). On a GPU with ``sac_cuda_graph`` the block's updates are
  replays of one captured CUDA graph;
* ``log_alpha`` and the model buffer in the Learner state, so checkpoints carry them;
* with ``num_learners = N > 1`` (no DDP wrapper; Ray Train's torch process group): every
  learner holds the same real data and the same model buffer (each rolls out its share of the
  branched rollouts, then they are all-gathered in rank order), draws the same global indices
  of every update's ``N x train_batch_size_per_learner`` rows and the same policy noise,
  updates on its own ``train_batch_size_per_learner`` of them, and the gradients are averaged
  with one ``all_reduce`` per update before the (identical) Adam and target steps. So N
  learners take the step of one learner with an N times larger batch, up to float summation
  order (tests/integration/test_multi_learner.py).

With ``sac_precision`` each update's forward pass and losses run under a bfloat16 autocast
(:meth:`_sac_autocast`; the output layers stay float32). RLlib's own path (``forward_train``
-> ``compute_losses`` -> ``compute_gradients`` -> optimiser steps) still works on the module
and is what the tests compare the update against.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, NamedTuple

import numpy as np
import ray
import torch
from ray.rllib.algorithms.sac.sac_learner import (
    LOGPS_KEY,
    QF_LOSS_KEY,
    QF_MAX_KEY,
    QF_MEAN_KEY,
    QF_MIN_KEY,
    QF_TWIN_LOSS_KEY,
    TD_ERROR_MEAN_KEY,
)
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import POLICY_LOSS_KEY
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import NUM_TARGET_UPDATES, TD_ERROR_KEY
from ray.rllib.utils.numpy import MAX_LOG_NN_OUTPUT, MIN_LOG_NN_OUTPUT

from mbmpo_ray.algorithm.distributed import (
    all_gather_rows,
    all_sum,
    average_,
    rank_and_world_size,
)
from mbmpo_ray.buffer import ModelBuffer
from mbmpo_ray.envs import EnvSpec
from mbmpo_ray.imagination import StateBounds, autocast_dtype, branched_rollouts
from mbmpo_ray.models import DynamicsEnsemble

MBPO_LEARNER_STATE = "mbpo"
_FIELDS = ("obs", "act", "next_obs", "reward", "done")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- SAC maths
def squashed_gaussian_sample(logits_B_2A: torch.Tensor, eps_B_A: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """RLlib's ``TorchSquashedGaussian`` on [-1, 1]: ``rsample_and_logp`` with the standard
    normal noise ``eps`` given.

    ``logits``: ``B x 2A`` (mean, log-std; log-std clipped to RLlib's [-5, 2]). Returns
    ``(tanh(z), log pi(tanh(z)))`` with ``z = mean + std * eps``: actions ``B x A`` and
    log-probabilities ``B`` (Gaussian log-density minus the tanh Jacobian
    ``2 (log 2 - z - softplus(-2 z))``, SAC's appendix C). Differentiable in ``logits``.
    """
    loc, log_std = logits_B_2A.chunk(2, dim=-1)
    log_std = log_std.clamp(MIN_LOG_NN_OUTPUT, MAX_LOG_NN_OUTPUT)
    z = loc + eps_B_A * log_std.exp()
    # N(z; loc, std) = -eps^2 / 2 - log std - log(2 pi) / 2, since (z - loc) / std = eps
    log_jacobian = 2.0 * (math.log(2.0) - z - torch.nn.functional.softplus(-2.0 * z))
    logp = (-0.5 * eps_B_A.square() - log_std - log_jacobian).sum(-1) - (
        _HALF_LOG_2PI * eps_B_A.shape[-1])
    return torch.tanh(z).clamp(-1.0, 1.0), logp


class SACLosses(NamedTuple):
    """One SAC update's losses (RLlib's continuous SAC) and what its metrics read.

    Shapes: ``K`` critics (2 with twin Q), ``B`` rows.
    """

    total: torch.Tensor  # scalar: critic.sum() + actor + alpha, differentiated once
    critic: torch.Tensor  # K: Huber TD loss of each critic (RLlib's qf_loss, qf_twin_loss)
    actor: torch.Tensor  # scalar: mean(alpha * log pi(a|s) - min_k Q_k(s, a)), a ~ pi
    alpha: torch.Tensor  # scalar: -mean(log_alpha * (log pi(a|s) + target_entropy))
    alpha_value: torch.Tensor  # 1: exp(log_alpha)
    logp: torch.Tensor  # B: log pi(a|s) of the reparameterised actions
    q_curr: torch.Tensor  # B: min_k Q_k(s, a), a ~ pi (the critics' parameters detached)
    td_error: torch.Tensor  # B: mean over critics of |Q_k(s, a_batch) - y|


def sac_losses(module, log_alpha: torch.Tensor, target_entropy: torch.Tensor | float,
               batch: dict[str, torch.Tensor], noise: tuple[torch.Tensor, torch.Tensor],
               gamma: float) -> SACLosses:
    """RLlib's continuous SAC loss (``SACTorchLearner._compute_loss_for_module_continuous``,
    Haarnoja et al. 2018 eqs. 5-7 and 17, clipped double Q of Fujimoto et al. 2018) on
    :class:`~mbmpo_ray.algorithm.mbpo.rl_module.MBPOTorchRLModule`'s stacked critics::

        a, log pi(a|s)   = pi(s, eps)                        (reparameterised)
        a', log pi(a'|s') = pi(s', eps')                      (no gradient)
        y      = r + gamma^n (1 - d) (min_k Q'_k(s', a') - alpha log pi(a'|s'))
        critic = mean(w * huber(Q_k(s, a_batch) - y))         per critic k
        actor  = mean(alpha log pi(a|s) - min_k Q_k(s, a))    (critics' parameters detached)
        alpha  = -mean(log_alpha (log pi(a|s) + target_entropy))

    with ``alpha = exp(log_alpha)`` detached in the first two. Each loss reaches only its own
    parameters, so one gradient of ``total`` gives every optimiser's gradient.

    Args:
        module: the RLModule (``policy_obs``, ``policy_logits``, ``qf``, ``target_qf``).
        log_alpha: ``1``, the entropy coefficient's log (requires grad).
        target_entropy: the entropy target.
        batch: RLlib's SAC batch of ``B`` rows: ``obs``, ``actions`` (in [-1, 1]),
            ``rewards``, ``new_obs``, ``terminateds``, ``n_step``, ``weights``.
        noise: ``(eps, eps')``, each ``B x A`` standard normal (RLlib draws them in this
            order inside ``forward_train``).
        gamma: discount.
    """
    obs = module.policy_obs(batch[Columns.OBS])
    next_obs = module.policy_obs(batch[Columns.NEXT_OBS])
    alpha = log_alpha.exp()
    alpha_d = alpha.detach()
    act_pi, logp = squashed_gaussian_sample(module.policy_logits(obs), noise[0])
    with torch.no_grad():  # the target: nothing in it is differentiated
        act_next, logp_next = squashed_gaussian_sample(module.policy_logits(next_obs), noise[1])
        q_next = module.target_qf(next_obs, act_next).min(0).values - alpha_d * logp_next
        q_next = (1.0 - batch[Columns.TERMINATEDS].float()) * q_next
        y = batch[Columns.REWARDS] + (gamma ** batch["n_step"]) * q_next
    q_pred_K_B = module.qf(obs, batch[Columns.ACTIONS])
    q_curr = module.qf(obs, act_pi, detach_params=True).min(0).values
    huber = torch.nn.functional.huber_loss(q_pred_K_B, y.expand_as(q_pred_K_B),
                                           reduction="none", delta=1.0)
    critic = (batch["weights"] * huber).mean(-1)
    actor = (alpha_d * logp - q_curr).mean()
    alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
    with torch.no_grad():
        td_error = (q_pred_K_B - y).abs().mean(0)
    return SACLosses(total=critic.sum() + actor + alpha_loss, critic=critic, actor=actor,
                     alpha=alpha_loss, alpha_value=alpha_d, logp=logp.detach(),
                     q_curr=q_curr.detach(), td_error=td_error)


class FusedAdamSteps:
    """The ``step()`` of several ``torch.optim.Adam`` as PyTorch's fused Adam kernel called
    directly, on the optimisers' own parameters and state tensors: their states (and so
    checkpoints) are exactly what ``Adam(fused=True).step()`` leaves, without its per-call
    Python work (grouping, state checks: ~0.1 ms per optimiser and step). Parameter groups
    with equal hyperparameters share one kernel call (SAC's three optimisers: one call when
    the actor, critic and alpha learning rates are equal, else one per rate).

    Built from optimisers that have stepped once (their state exists); rebuild it after
    their state is replaced (``load_state_dict``). ``lr`` is read at every call (RLlib may
    schedule it). Gradients are passed in (in the order of :attr:`params`), not read from
    ``.grad``.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.groups = [group for optim in optimizers for group in optim.param_groups]
        for group in self.groups:
            if group.get("amsgrad") or group.get("maximize") or group.get(
                    "decoupled_weight_decay") or group.get("differentiable"):
                raise ValueError("FusedAdamSteps: plain Adam only")
        states = {id(p): optim.state[p] for optim in optimizers
                  for group in optim.param_groups for p in group["params"]}
        self.params = [p for group in self.groups for p in group["params"]]
        for p in self.params:  # fused kernels keep the step counters beside the parameters
            state = states[id(p)]
            if state["step"].device != p.device or state["step"].dtype != torch.float32:
                state["step"] = state["step"].to(p.device, torch.float32)
        self._lists = [[states[id(p)][k] for p in self.params]
                       for k in ("exp_avg", "exp_avg_sq", "step")]
        bounds = np.cumsum([0] + [len(group["params"]) for group in self.groups])
        self._spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))

    def _hyper(self, group: dict) -> tuple:
        return (float(group["lr"]), *group["betas"], group["eps"], group["weight_decay"])

    def __call__(self, grads: list[torch.Tensor]) -> None:
        """One Adam step of every parameter with ``grads`` (aligned with :attr:`params`)."""
        hypers = [self._hyper(group) for group in self.groups]
        if all(h == hypers[0] for h in hypers):  # one call for all
            self._step(0, len(self.params), grads, hypers[0])
        else:
            for (a, b), hyper in zip(self._spans, hypers, strict=True):
                self._step(a, b, grads[a:b], hyper)

    def _step(self, a: int, b: int, grads: list[torch.Tensor], hyper: tuple) -> None:
        lr, beta1, beta2, eps, weight_decay = hyper
        exp_avg, exp_avg_sq, steps = (x[a:b] if b - a < len(self.params) else x
                                      for x in self._lists)
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(self.params[a:b] if b - a < len(self.params) else self.params,
                           grads, exp_avg, exp_avg_sq, [], steps, lr=lr, beta1=beta1,
                           beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False,
                           maximize=False)


class TensorRing:
    """FIFO store of transitions as tensors on one device, grown geometrically up to
    ``capacity`` (then the oldest rows are overwritten); sampled uniformly by index."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device):
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, int(capacity)
        self.device = device
        self._data = self._alloc(min(self.capacity, 1024))
        self._size = self._next = 0

    def _alloc(self, n: int) -> dict[str, torch.Tensor]:
        f = dict(dtype=torch.float32, device=self.device)
        return {"obs": torch.zeros(n, self.obs_dim, **f), "act": torch.zeros(n, self.act_dim, **f),
                "next_obs": torch.zeros(n, self.obs_dim, **f), "reward": torch.zeros(n, **f),
                "done": torch.zeros(n, **f)}

    def __len__(self) -> int:
        return self._size

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        n = int(rows["reward"].shape[0])
        if n == 0:
            return
        if n > self.capacity:
            rows = {k: v[-self.capacity:] for k, v in rows.items()}
            n = self.capacity
        cur = len(self._data["reward"])
        if self._size + n > cur and cur < self.capacity:
            new = min(self.capacity, max(self._size + n, 2 * cur))
            data = self._alloc(new)
            order = (torch.arange(self._size, device=self.device) if self._size < cur else
                     (self._next + torch.arange(cur, device=self.device)) % cur)
            for k in _FIELDS:
                data[k][: self._size] = self._data[k][order]
            self._data, self._next, cur = data, self._size % new, new
        idx = (self._next + torch.arange(n, device=self.device)) % cur
        for k in _FIELDS:
            self._data[k][idx] = rows[k].to(self._data[k].dtype)
        self._next = int((self._next + n) % cur)
        self._size = min(self._size + n, self.capacity)

    def take(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``idx`` (indices into the ``len(self)`` stored rows, any order)."""
        return {k: v[idx] for k, v in self._data.items()}


class MBPOTorchLearner(SACTorchLearner):
    """RLlib's SAC Learner with MBPO's data, model rollouts and block updates (module doc)."""

    @override(SACTorchLearner)
    def build(self) -> None:
        super().build()
        threads = self.config.learner_torch_threads
        if threads is None:
            cpus = self.config.num_cpus_per_learner
            threads = int(cpus) if isinstance(cpus, (int, float)) and cpus >= 1 else 1
        torch.set_num_threads(max(1, threads))
        self._real: TensorRing | None = None
        self._model_buffer: ModelBuffer | None = None
        self._model_t: dict[str, torch.Tensor] | None = None
        self._ensemble: DynamicsEnsemble | None = None
        self._act_low = self._act_high = None
        self._graph: torch.cuda.CUDAGraph | None = None  # the SAC update on a GPU
        self._graph_batch: dict[str, torch.Tensor] | None = None
        self._graph_failed = False
        self._targets_mains: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._adam: FusedAdamSteps | None = None  # built after the first optimiser steps
        self._bf16: bool | None = None  # sac_precision, resolved on the first update
        self._rank_world: tuple[int, int] | None = None
        self._noise_rows: torch.Tensor | None = None  # N learners: see train_block

    @override(TorchLearner)
    def _make_modules_ddp_if_necessary(self) -> None:
        """No DDP wrapper: the SAC update differentiates with ``torch.autograd.grad``, which
        DDP does not reduce; :meth:`_sac_step` averages the gradients itself."""

    def rank_and_world_size(self) -> tuple[int, int]:
        """This learner's rank and the number of learners (``(0, 1)`` for one)."""
        if self._rank_world is None:
            self._rank_world = rank_and_world_size(self.config.num_learners)
        return self._rank_world

    @override(SACTorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        """RLlib's SAC optimisers: Adam (eps 1e-7) for the critics (``qf``: both critics of
        the stacked module, whose losses add up to this optimiser's loss), for the policy
        and for ``log_alpha``, at ``critic_lr``, ``actor_lr``, ``alpha_lr``; with PyTorch's
        fused kernel (:meth:`_fuse_adam`)."""
        module = self._module[module_id]
        log_alpha = self.curr_log_alpha[module_id]
        for name, params, lr in (
                ("qf", self.get_parameters(module.qf), config.critic_lr),
                ("policy", self.get_parameters(module.pi_encoder)
                 + self.get_parameters(module.pi), config.actor_lr),
                ("alpha", [log_alpha], config.alpha_lr)):
            self.register_optimizer(module_id=module_id, optimizer_name=name,
                                    optimizer=torch.optim.Adam(params, eps=1e-7),
                                    params=params, lr_or_lr_schedule=lr)
        self._fuse_adam()

    def _fuse_adam(self) -> None:
        """Switch every Adam to PyTorch's fused kernel (again after loading a state: its
        param groups carry the flags of the Learner that saved it): the same update rule in
        one vectorised pass instead of ~10 elementwise passes per parameter (torch's CPU
        default); the SAC update calls that kernel directly (:class:`FusedAdamSteps`)."""
        self._adam = None
        for optim in self._optimizer_parameters:
            if isinstance(optim, torch.optim.Adam):
                optim.defaults.update(foreach=False, fused=True)
                for group in optim.param_groups:
                    group.update(foreach=False, fused=True)

    @override(SACTorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        """RLlib's SAC loss; the twin critic's loss is added to the critic optimiser's
        (``qf``: one optimiser over both stacked critics)."""
        total = super().compute_loss_for_module(module_id=module_id, config=config,
                                                batch=batch, fwd_out=fwd_out)
        twin = self._temp_losses.pop((module_id, QF_TWIN_LOSS_KEY), None)
        if twin is not None:
            self._temp_losses[(module_id, QF_LOSS_KEY)] = (
                self._temp_losses[(module_id, QF_LOSS_KEY)] + twin)
        return total

    # ------------------------------------------------------------------ data
    def setup_data(self, *, obs_dim: int, act_dim: int, action_low, action_high,
                   capacity: int) -> None:
        """Create the (empty) real store and model buffer; the action box maps env actions
        to the module's [-1, 1] actions."""
        dev = self._device
        self._act_low = torch.tensor(np.asarray(action_low), dtype=torch.float32, device=dev)
        self._act_high = torch.tensor(np.asarray(action_high), dtype=torch.float32,
                                         device=dev)
        self._real = TensorRing(obs_dim, act_dim, capacity, dev)
        if self._model_buffer is None:
            self._model_buffer = ModelBuffer(obs_dim, act_dim, 1)
        self._refresh_model_tensors()

    def load_real(self, real: dict[str, np.ndarray]) -> None:
        """Replace the real store by ``real`` (the driver's buffer, e.g. after a restore)."""
        if isinstance(real, ray.ObjectRef):
            real = ray.get(real)
        self._real = TensorRing(self._real.obs_dim, self._real.act_dim, self._real.capacity,
                                self._device)
        self._add_real(real)

    def _add_real(self, rows: dict[str, np.ndarray] | None) -> None:
        if rows is None or len(rows["reward"]) == 0:
            return
        self._real.add(self._to_policy_tensors(rows))

    def _to_policy_tensors(self, rows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Transitions with env-space actions -> tensors with the module's [-1, 1] actions."""
        dev = self._device
        t = {k: torch.tensor(np.asarray(rows[k]), dtype=torch.float32, device=dev)
             for k in _FIELDS}
        t["act"] = (2.0 * (t["act"] - self._act_low) / (self._act_high - self._act_low)
                    - 1.0).clamp(-1.0, 1.0)
        return t

    def _to_env_actions(self, a: torch.Tensor) -> torch.Tensor:
        low, high = self._act_low, self._act_high
        return (low + (a + 1.0) * 0.5 * (high - low)).clamp(low, high)

    def _refresh_model_tensors(self) -> None:
        buf = self._model_buffer
        self._model_t = self._to_policy_tensors(buf.all()) if len(buf) else None

    # ------------------------------------------------------------------ model rollouts
    def model_rollouts(
        self,
        *,
        ensemble_kwargs: dict[str, Any],
        ensemble_state: dict[str, torch.Tensor],
        env_spec: EnvSpec,
        num_rollouts: int,
        length: int,
        buffer_capacity: int,
        seed: int,
        bounds: StateBounds | None = None,
    ) -> dict[str, float]:
        """Branched rollouts of the current policy from ``num_rollouts`` real start states in
        the fitted ensemble (:func:`~mbmpo_ray.imagination.branched_rollouts`); their
        transitions go into the model buffer, resized to ``buffer_capacity`` first."""
        if isinstance(ensemble_state, ray.ObjectRef):
            ensemble_state = ray.get(ensemble_state)
        cfg, dev = self.config, self._device
        if self._ensemble is None:
            self._ensemble = DynamicsEnsemble(**ensemble_kwargs).to(dev)
        self._ensemble.load_state_dict(ensemble_state)
        rank, world = self.rank_and_world_size()
        torch.manual_seed(seed)
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        start = self._real.take(torch.randint(len(self._real), (num_rollouts,), generator=gen,
                                              device=dev))["obs"]
        if world > 1:  # this learner's share, with its own random streams
            start = start[rank * num_rollouts // world:(rank + 1) * num_rollouts // world]
            torch.manual_seed(seed + 7919 * rank)
            gen.manual_seed(int(seed) + 7919 * rank)
        module = self.module[DEFAULT_MODULE_ID].unwrapped()
        dist_cls = module.get_exploration_action_dist_cls()

        def policy(obs: torch.Tensor, _gen) -> torch.Tensor:
            inputs = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
            return self._to_env_actions(dist_cls.from_logits(inputs).sample())

        roll = branched_rollouts(
            self._ensemble, policy, start, length, env_spec.reward_fn, env_spec.termination_fn,
            action_low=self._act_low, action_high=self._act_high, generator=gen,
            deterministic_model=cfg.deterministic_model_rollouts, bounds=bounds,
            max_rows_per_call=cfg.rollout_chunk_size)
        rows = all_gather_rows({"obs": roll.obs, "act": roll.actions,
                                "next_obs": roll.next_obs, "reward": roll.rewards,
                                "done": roll.dones.float()}, world)
        rows = {k: v.cpu().numpy() for k, v in rows.items()}
        rows["done"] = rows["done"] > 0.5
        dropped = all_sum([float(roll.dropped)], world)[0]
        buf = self._model_buffer
        buf.set_capacity(buffer_capacity)
        buf.add(**rows)
        self._refresh_model_tensors()
        n = len(rows["reward"])
        return {"model_steps": float(n), "rollout_length": float(length),
                "dropped_non_finite": dropped,
                "reward_mean": float(rows["reward"].mean()) if n else float("nan"),
                "terminal_fraction": float(rows["done"].mean()) if n else 0.0,
                "model_buffer_size": float(len(buf))}

    # ------------------------------------------------------------------ SAC updates
    def train_block(self, *, new_real: dict[str, np.ndarray] | None, num_updates: int,
                    seed: int) -> dict[str, Any]:
        """Append ``new_real`` to the real store, then ``num_updates`` SAC gradient steps on
        mixed batches (see the module doc). Returns the reduced Learner metrics (RLlib's SAC
        losses, alpha, Q statistics of the last step; target update count)."""
        if isinstance(new_real, ray.ObjectRef):
            new_real = ray.get(new_real)
        self._add_real(new_real)
        if num_updates <= 0:
            return {}
        n_real, n_model = self.config.batch_split()
        model = self._model_t
        if model is None or n_model == 0:
            n_real, n_model = n_real + n_model, 0
        dev = self._device
        rank, world = self.rank_and_world_size()
        torch.manual_seed(seed)
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        # every learner draws the global indices of all N batches and keeps its own columns
        real_idx = torch.randint(len(self._real), (num_updates, world * n_real), generator=gen,
                                 device=dev)[:, rank * n_real:(rank + 1) * n_real]
        model_idx = (torch.randint(len(model["reward"]), (num_updates, world * n_model),
                                   generator=gen, device=dev
                                   )[:, rank * n_model:(rank + 1) * n_model]
                     if n_model else None)
        # ... and its rows' places in the global batch [real rows of all, model rows of all]
        # (the policy noise is drawn for the global batch)
        self._noise_rows = None if world == 1 else torch.cat((
            torch.arange(rank * n_real, (rank + 1) * n_real, device=dev),
            torch.arange(world * n_real + rank * n_model, world * n_real + (rank + 1) * n_model,
                         device=dev)))
        mid = DEFAULT_MODULE_ID

        def rows_of(i: int) -> dict[str, torch.Tensor]:
            rows = self._real.take(real_idx[i])
            if n_model:
                rows = {k: torch.cat((rows[k], model[k][model_idx[i]])) for k in _FIELDS}
            return rows

        done = 0
        if num_updates > 1 and self._use_cuda_graph() and world == 1:
            done = self._graphed_updates(rows_of, num_updates - 1)
        for i in range(done, num_updates):  # the last one logs the metrics
            batch = self._sac_batch(rows_of(i))
            if i == num_updates - 1:
                self._update(batch)
            else:
                self._quiet_update(batch)
            self._polyak()
        self._weights_seq_no += 1
        self.metrics.log_value((mid, NUM_TARGET_UPDATES), num_updates, reduce="lifetime_sum")
        return self.metrics.reduce()

    def _sac_batch(self, rows: dict[str, torch.Tensor]) -> dict[str, Any]:
        ones = torch.ones(len(rows["obs"]), device=rows["obs"].device)
        return {DEFAULT_MODULE_ID: {
            Columns.OBS: rows["obs"], Columns.ACTIONS: rows["act"],
            Columns.REWARDS: rows["reward"], Columns.NEXT_OBS: rows["next_obs"],
            Columns.TERMINATEDS: rows["done"], "n_step": ones, "weights": ones,
        }}

    def _polyak(self) -> None:
        """target <- tau * main + (1 - tau) * target, in place (RLlib's formula)."""
        if self._targets_mains is None:
            self._targets_mains = self._target_param_lists()
        targets, mains = self._targets_mains
        with torch.no_grad():
            torch._foreach_lerp_(targets, mains, self.config.tau)

    def _sac_autocast(self) -> contextlib.AbstractContextManager:
        """The context of one update's forward pass and losses: a bfloat16 autocast where
        ``sac_precision`` asks for it ('auto': where bf16 matmuls are fast here), else none.
        Entered per update, never across one: autocast caches the bf16 copies of the weights
        until the context exits, and Adam changes the weights after every update."""
        if self._bf16 is None:
            self._bf16 = autocast_dtype(self.config.sac_precision, self._device.type) is not None
        if not self._bf16:
            return contextlib.nullcontext()
        # no weight cache while a CUDA graph is captured (its casts are replayed instead)
        return torch.autocast(self._device.type, dtype=torch.bfloat16,
                              cache_enabled=not self._use_cuda_graph())

    @override(SACTorchLearner)
    def _update(self, batch: dict[str, Any]):
        """One SAC update (:meth:`_sac_step`) that logs RLlib's SAC metrics (as tensors: no
        host read here); returns ``(fwd_out, loss_per_module, metrics)`` as RLlib's
        ``_update`` does (``fwd_out`` empty: the update keeps no RLlib forward outputs)."""
        losses = self._sac_step(batch)
        self._log_sac_metrics(losses)
        return {}, {DEFAULT_MODULE_ID: losses.total.detach()}, {}

    def _quiet_update(self, batch: dict[str, Any]) -> None:
        """One SAC update without metrics: the updates inside a block (all but its last)."""
        self._sac_step(batch)

    def _sac_step(self, batch: dict[str, Any]) -> SACLosses:
        """One SAC gradient step on RLlib's SAC ``batch`` (:meth:`_sac_batch`): the losses of
        :func:`sac_losses` (under :meth:`_sac_autocast`), one ``autograd.grad`` of their sum
        for all parameters (critics, policy, ``log_alpha``), averaged over the learners where
        there are several, RLlib's gradient
        post-processing where configured (``grad_clip``: the critic optimiser's norm covers
        both stacked critics), non-finite gradients zeroed as RLlib's ``apply_gradients``
        does (``nan_to_num``, without its warning and host read), then every optimiser's
        Adam step. The policy noise comes from torch's global generator, drawn as RLlib's
        ``forward_train`` draws it (current state, then next state)."""
        mid = DEFAULT_MODULE_ID
        rows = batch[mid]
        act = rows[Columns.ACTIONS]
        world = self.rank_and_world_size()[1]
        if world == 1:
            noise = (torch.empty_like(act).normal_(), torch.empty_like(act).normal_())
        else:  # the global batch's noise, this learner's rows of it
            shape = (world * act.shape[0], act.shape[1])
            noise = tuple(act.new_empty(shape).normal_()[self._noise_rows] for _ in range(2))
        with self._sac_autocast():
            losses = sac_losses(self.module[mid].unwrapped(), self.curr_log_alpha[mid],
                                self.target_entropy[mid], rows, noise, self.config.gamma)
        params = self._sac_params()
        grads = list(torch.autograd.grad(losses.total, params))
        average_(grads, world)  # N learners: the gradient of the global batch's mean losses
        cfg = self.config
        if cfg.grad_clip is not None or cfg.log_gradients:
            processed = self.postprocess_gradients(dict(zip(params, grads, strict=True)))
            grads = [processed[p] for p in params]
        if not cfg.torch_skip_nan_gradients:
            for g in grads:
                torch.nan_to_num_(g)
        self._adam_step(params, grads)
        return losses

    def _sac_params(self) -> list[torch.Tensor]:
        """Every optimised parameter, in the order of the optimisers' parameter groups."""
        return [p for optim in self._optimizer_parameters for group in optim.param_groups
                for p in group["params"]]

    def _adam_step(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Every optimiser's Adam step with ``grads``: the fused kernel called directly
        (:class:`FusedAdamSteps`) once the optimisers have state, their ``step()`` before."""
        optims = list(self._optimizer_parameters)
        if self._adam is None and all(p in optim.state for optim in optims
                                      for group in optim.param_groups
                                      for p in group["params"]):
            self._adam = FusedAdamSteps(optims)
        if self._adam is not None:
            self._adam(grads)
            return
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        for optim in optims:
            optim.step()
        for p in params:
            p.grad = None

    def _log_sac_metrics(self, losses: SACLosses) -> None:
        """RLlib's SAC metrics (its keys, ``window=1``) from one update's losses."""
        mid = DEFAULT_MODULE_ID
        alpha = losses.alpha_value
        self.metrics.log_value((mid, TD_ERROR_KEY), losses.td_error, reduce="item_series")
        self.metrics.log_dict({
            POLICY_LOSS_KEY: losses.actor.detach(),
            QF_LOSS_KEY: losses.critic[0].detach(),
            "alpha_loss": losses.alpha.detach(),
            "alpha_value": alpha[0],
            "log_alpha_value": torch.log(alpha)[0],
            "target_entropy": self.target_entropy[mid],
            LOGPS_KEY: losses.logp.mean(),
            QF_MEAN_KEY: losses.q_curr.mean(),
            QF_MAX_KEY: losses.q_curr.max(),
            QF_MIN_KEY: losses.q_curr.min(),
            TD_ERROR_MEAN_KEY: losses.td_error.mean(),
        }, key=mid, window=1)
        if len(losses.critic) > 1:
            self.metrics.log_value((mid, QF_TWIN_LOSS_KEY), losses.critic[1].detach(),
                                   window=1)

    # ------------------------------------------------------------------ CUDA graph
    def _use_cuda_graph(self) -> bool:
        return (self._device.type == "cuda" and self.config.sac_cuda_graph
                and not self._graph_failed)

    def _graphed_updates(self, rows_of, n: int) -> int:
        """Updates ``0 .. k-1`` of the block (``k <= n``) as replays of one CUDA graph of
        :meth:`_quiet_update` + the Polyak step; returns ``k``. The graph is captured once (its
        three warm-up updates are real updates of this block) and kept until the Learner's
        state is set; the rows are gathered into its static batch outside it. If capturing
        fails, logs why once and updates eagerly from then on."""
        done = 0
        if self._graph is None:
            done = self._capture_graph(rows_of, n)
            if self._graph is None:
                return done
        static = self._graph_batch
        for i in range(done, n):
            rows = rows_of(i)
            for k in _FIELDS:
                static[k].copy_(rows[k])
            self._graph.replay()
        return n

    def _capture_graph(self, rows_of, n: int) -> int:
        """Warm up on a side stream (3 real updates, at most ``n``), then capture one update
        with Adam in capturable mode (its step counters on the GPU, no host reads; it stays
        so for the eager updates too). Returns the updates done."""
        first = rows_of(0)
        static = {k: v.clone() for k, v in first.items()}
        batch = self._sac_batch(static)
        optims = list(self._optimizer_parameters)
        for optim in optims:
            for group in optim.param_groups:
                group["capturable"] = True
            for state in optim.state.values():
                if "step" in state:
                    state["step"] = state["step"].to(device=self._device, dtype=torch.float32)
        self._adam = None  # (rebuilt on those step tensors)
        done = 0
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            while done < min(3, n):
                for k in _FIELDS:
                    static[k].copy_(rows_of(done)[k])
                self._quiet_update(batch)
                self._polyak()
                done += 1
        torch.cuda.current_stream().wait_stream(side)
        if done == n:
            return done
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._quiet_update(batch)
                self._polyak()
        except Exception as e:  # noqa: BLE001 - any capture failure: stay eager
            logger.warning("MBPO: capturing the SAC update as a CUDA graph failed (%s: %s); "
                           "updating eagerly", type(e).__name__, e)
            self._graph_failed = True
            torch.cuda.synchronize()
            return done
        self._graph, self._graph_batch = graph, static
        return done

    def _target_param_lists(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Parameters of the target networks and of their main networks, in matching order
        (RLlib's ``get_target_network_pairs``), for one in-place Polyak step per gradient step
        (what RLlib's ``update_target_network`` computes, without a state-dict round trip)."""
        targets, mains = [], []
        for main_net, target_net in self.module[DEFAULT_MODULE_ID].unwrapped(
                ).get_target_network_pairs():
            main_p, target_p = dict(main_net.named_parameters()), target_net.named_parameters()
            for name, p in target_p:
                targets.append(p.data)
                mains.append(main_p[name].data)
        return targets, mains

    @override(SACTorchLearner)
    def compute_gradients(self, loss_per_module, **kwargs):
        """One backward pass of the summed SAC loss (TorchLearner's default) instead of
        SACTorchLearner's one pass per optimiser: the same gradients, because the four losses
        touch disjoint parameters (the policy loss sees the Q networks with their gradients
        off and alpha detached; the critic losses see detached targets, log-probs and alpha;
        the alpha loss sees detached log-probs), at a fraction of the autograd overhead. RLlib's
        path on this module (``forward_train`` -> ``compute_losses`` -> this) is what the
        tests compare :meth:`_sac_step` against; the backward pass runs outside any autocast
        (the gradients follow the dtypes the forward pass chose)."""
        self._temp_losses.clear()
        with torch.autocast(self._device.type, enabled=False):
            return TorchLearner.compute_gradients(self, loss_per_module, **kwargs)

    @override(SACTorchLearner)
    def _get_optimizer_state(self) -> dict[str, Any]:
        """RLlib's, with Adam's ``capturable`` flag off (set on a GPU for the CUDA graph), so
        a checkpoint loads into a CPU Learner too (the flag decides where Adam's step
        counters live)."""
        state = super()._get_optimizer_state()
        for entry in state.values():
            for group in entry["state"].get("param_groups", []):
                if "capturable" in group:
                    group["capturable"] = False
        return state

    @override(SACTorchLearner)
    def _set_optimizer_state(self, state: dict[str, Any]) -> None:
        """RLlib's (with the moments copied), then the fused kernel again (:meth:`_fuse_adam`).
        A state from before the critics were stacked (optimisers ``qf`` and ``qf_twin`` over
        separate critics) leaves the critic optimiser fresh (its moments do not fit the
        stacked layout)."""
        twins = [name for name in state if name.endswith("_qf_twin")]
        if twins:
            logger.warning("MBPO: optimizer state with separate twin critics (an earlier "
                           "version); the critics' Adam moments start afresh")
            drop = {*twins, *(name[:-len("_twin")] for name in twins)}
            state = {k: v for k, v in state.items() if k not in drop}
        super()._set_optimizer_state(state)
        # Own copies of the loaded moments: RLlib hands them over as tensors on the
        # object store's shared, zero-copy NumPy buffers, which Adam then updates in place -
        # every learner given the same state would step on the same memory.
        for optim in self._optimizer_parameters:
            for entry in optim.state.values():
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor):
                        entry[key] = value.clone()
        self._fuse_adam()

    # ------------------------------------------------------------------ state
    def model_buffer_state(self) -> dict[str, Any]:
        return self._model_buffer.get_state()

    def _alpha_state(self) -> dict[str, np.ndarray]:
        return {mid: v.detach().cpu().numpy().copy() for mid, v in self.curr_log_alpha.items()}

    @override(SACTorchLearner)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(MBPO_LEARNER_STATE, components, not_components):
            state[MBPO_LEARNER_STATE] = {
                "log_alpha": self._alpha_state(),
                "model_buffer": (None if self._model_buffer is None
                                 else self._model_buffer.get_state()),
            }
        return state

    @override(SACTorchLearner)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._fuse_adam()
        self._graph = self._graph_batch = None  # new optimizer state tensors: recapture
        self._targets_mains = None
        ours = state.get(MBPO_LEARNER_STATE)
        if ours is None:
            return
        with torch.no_grad():
            for mid, value in ours["log_alpha"].items():
                self.curr_log_alpha[mid].copy_(torch.as_tensor(value))
        if ours["model_buffer"] is not None:
            self._model_buffer = ModelBuffer.from_state(ours["model_buffer"])
            if self._act_low is not None:
                self._refresh_model_tensors()
