"""MBPOConfig: RLlib-style builder for MBPO (Janner et al. 2019) on RLlib's SAC."""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.sac.sac import SACConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override

from mbmpo_ray import settings
from mbmpo_ray.algorithm.base_config import FitSettingsConfig, ModelBasedConfig
from mbmpo_ray.buffer import ModelBuffer
from mbmpo_ray.envs import UnsupportedEnvError
from mbmpo_ray.imagination import rollout_length
from mbmpo_ray.settings import Declared, Rule

_POSITIVE = Rule(int, low=1)
_NON_NEGATIVE = Rule(int, low=0)

# MBPO's own settings (the shared ones are in algorithm/base_config.py). SAC's own settings
# (actor_lr, critic_lr, alpha_lr, tau, initial_alpha, target_entropy, twin_q, grad_clip,
# gamma, train_batch_size_per_learner) are RLlib's SACConfig attributes (SAC_RULES).
# Defaults: the reference code (jannerm/mbpo).
OWN: dict[str, Declared] = {
    # real data
    "model_train_freq": Declared(250, "real env steps between ensemble refits (and new model "
                                 "rollouts): one train() call", _POSITIVE),
    "env_steps_per_block": Declared(10, "real env steps sampled per block; each block is "
                                    "followed by its updates_per_step x block SAC updates in "
                                    "one Learner call (1: MBPO's exact interleaving)",
                                    _POSITIVE),
    "epoch_length": Declared(1000, "real env steps per MBPO epoch (the unit of "
                             "rollout_schedule and model_retain_epochs)", _POSITIVE),
    "horizon": Declared(None, "real episode length (None: the env's default, 1000 for MuJoCo, "
                        "200 for Pendulum)", Rule(int, low=1, optional=True)),
    # dynamics ensemble
    "num_elites": Declared(5, "members with the lowest held-out loss that model rollouts use",
                           _POSITIVE),
    # model rollouts
    "rollouts_per_step": Declared(400, "branched rollouts started per real step: each refit "
                                  "starts rollouts_per_step x model_train_freq of them",
                                  _POSITIVE),
    "rollout_schedule": Declared((20, 100, 1, 1), "(epoch_a, epoch_b, k_a, k_b): rollout "
                                 "length k_a up to epoch_a, linear to k_b at epoch_b",
                                 Rule(tuple, low=0)),
    "model_retain_epochs": Declared(1, "epochs of model rollouts the model buffer keeps",
                                    _POSITIVE),
    "rollout_chunk_size": Declared(25_000, "start states per batched rollout call (memory "
                                   "bound)", _POSITIVE),
    # SAC on mixed batches
    "updates_per_step": Declared(20, "G, SAC gradient steps per real env step", _POSITIVE),
    "real_ratio": Declared(0.05, "fraction of real transitions in each SAC batch (int(batch * "
                           "real_ratio) rows; the rest from the model buffer)",
                           Rule(float, low=0, high=1)),
    "sac_hidden_sizes": Declared((256, 256), "hidden sizes of the SAC policy and Q networks",
                                 Rule(tuple)),
    "sac_activation": Declared("relu", "activation of the SAC networks",
                               Rule(str, choices=("relu", "tanh", "silu", "elu"))),
    "sac_precision": Declared(
        "float32", "dtype of the SAC updates' matmuls: bfloat16 autocast of the hidden layers "
        "(weights, output layers, losses, Adam and targets stay float32), or 'auto' = "
        "bfloat16 where bf16 matmuls are fast (CPUs with AVX512-BF16 or AMX, GPUs), else "
        "float32", Rule(str, choices=("float32", "bfloat16", "auto"))),
    "sac_cuda_graph": Declared(False, "on a GPU Learner, replay the SAC update (forward, loss, "
                               "backward, Adam, Polyak) as one captured CUDA graph "
                               "(experimental: falls back to eager updates if capturing "
                               "fails)", Rule(bool)),
}
# RLlib's SAC settings MBPO uses, with what they accept here
SAC_RULES: dict[str, tuple[Rule, str]] = {
    "actor_lr": (Rule(float, low=0, open_low=True), "Adam lr of the policy (MBPO: 3e-4; "
                 "RLlib's SAC default is 3e-5)"),
    "critic_lr": (Rule(float, low=0, open_low=True), "Adam lr of the Q networks"),
    "alpha_lr": (Rule(float, low=0, open_low=True), "Adam lr of the entropy coefficient"),
    "tau": (Rule(float, low=0, high=1, open_low=True), "Polyak rate of the target Q networks, "
            "applied after every gradient step"),
    "initial_alpha": (Rule(float, low=0, open_low=True), "initial entropy coefficient"),
    "train_batch_size_per_learner": (_POSITIVE, "SAC batch size (real + model rows)"),
    "twin_q": (Rule(bool), "clipped double Q (two critics)"),
    "grad_clip": (Rule(float, low=0, open_low=True, optional=True), "gradient clipping"),
}


def setting_docs() -> dict[str, str]:
    """``name -> one-line doc`` of every MBPO setting of :meth:`MBPOConfig.training`."""
    docs = MBPOConfig.setting_docs()
    docs.update({name: doc for name, (_, doc) in SAC_RULES.items()})
    docs["gamma"] = "discount"
    docs["target_entropy"] = "entropy target of the automatic alpha tuning ('auto': -|A|)"
    return docs


class MBPOConfig(ModelBasedConfig, FitSettingsConfig, SACConfig):
    """Configuration of :class:`~mbmpo_ray.MBPO` (Janner et al. 2019).

    Builder use, as for any RLlib algorithm::

        config = (
            MBPOConfig()
            .environment("HalfCheetah-v5")
            .env_runners(num_env_runners=1)
            .training(updates_per_step=20, real_ratio=0.05, rollout_schedule=(20, 100, 1, 1))
            .debugging(seed=0)
        )
        algo = config.build_algo()

    A subclass of RLlib's ``SACConfig``: SAC's settings (``actor_lr``, ``critic_lr``,
    ``alpha_lr``, ``tau``, ``initial_alpha``, ``target_entropy``, ``twin_q``, ``gamma``,
    ``train_batch_size_per_learner``) keep their RLlib names; MBPO's own settings are typed
    attributes with one-line docs in :func:`setting_docs`.

    Defaults follow the reference code (jannerm/mbpo, ``examples/config``/``mbpo/static``):
    5,000 random steps, refit every 250 steps, 7 x (4 x 200 SiLU) probabilistic members with
    5 elites, model batch 256, holdout 0.2 (max 5,000), patience 5; 400 rollouts per real step,
    k = 1, one epoch of model data retained; SAC 256 x 256 ReLU, batch 256 with 5% real rows,
    G = 20 updates per step, lr 3e-4 for actor, critics and alpha, tau 0.005 after every
    gradient step, automatic entropy tuning (to RLlib's 'auto', -|A|; the reference sets a
    target per env, e.g. -|A| / 2 on HalfCheetah), gamma 0.99. Per-env values (G, k schedule,
    target entropy, ...) are in ``tune_configs/mbpo_*.py``.

    Where this differs from the reference: RLlib's SAC loss uses a Huber critic loss (the
    reference: MSE) and initial alpha 1.0 (as the reference); the real env is stepped in blocks
    of ``env_steps_per_block`` steps followed by that block's ``updates_per_step x block``
    updates (the reference: one step, G updates; a block of 1 is the same).
    """

    ALGO_NAME = "mbpo"
    DISPLAY_NAME = "MBPO"
    OWN = OWN
    BOUNDED_ACTIONS = True
    TUPLE_SETTINGS = ("model_hidden_sizes", "sac_hidden_sizes", "rollout_schedule")
    # the reference's values of shared settings whose default is MB-MPO's paper value
    DEFAULTS = {"ensemble_size": 7, "model_hidden_sizes": (200, 200, 200, 200),
                "model_activation": "silu", "model_batch_size": 256, "model_weight_decay": 5e-5,
                "deterministic_model_rollouts": False, "imagine_clip_margin": None,
                "eval_episodes_per_iter": 1, "eval_explore": False}

    def __init__(self, algo_class=None):
        from mbmpo_ray.algorithm.mbpo.algorithm import MBPO

        super().__init__(algo_class=algo_class or MBPO)
        self._init_declared()
        # RLlib's SAC settings with MBPO's values
        self.actor_lr = 3e-4
        self.critic_lr = 3e-4
        self.alpha_lr = 3e-4
        self.tau = 5e-3
        self.initial_alpha = 1.0
        self.target_entropy = "auto"
        self.gamma = 0.99
        self.train_batch_size_per_learner = 256
        # One train() call is exactly one training_step (model_train_freq real steps).
        self.min_time_s_per_iteration = None
        self.min_sample_timesteps_per_iteration = 0
        self.min_train_timesteps_per_iteration = 0
        self.num_env_runners = 0
        # With remote env runners the driver's runner keeps a synced policy copy (evaluation
        # with a remote Learner uses it).
        self.create_env_on_local_worker = True
        # No per-step isfinite checks of every gradient by RLlib's TorchLearner (the
        # reference has none; they cost ~10% of a SAC step on a CPU).
        self.torch_skip_nan_gradients = True
        # The policy acts in [-1, 1] (squashed Gaussian); RLlib unsquashes for the env.
        self.normalize_actions = True
        self.clip_actions = False

    @override(SACConfig)
    def training(
        self, *,
        model_train_freq: int = NotProvided, env_steps_per_block: int = NotProvided,
        epoch_length: int = NotProvided, horizon: int | None = NotProvided,
        num_elites: int = NotProvided, rollouts_per_step: int = NotProvided,
        rollout_schedule: tuple[int, int, int, int] = NotProvided,
        model_retain_epochs: int = NotProvided, rollout_chunk_size: int = NotProvided,
        updates_per_step: int = NotProvided, real_ratio: float = NotProvided,
        sac_hidden_sizes: tuple[int, ...] = NotProvided, sac_activation: str = NotProvided,
        sac_precision: str = NotProvided, sac_cuda_graph: bool = NotProvided,
        **kwargs,
    ) -> MBPOConfig:
        """MBPO's own settings (docs: :func:`setting_docs`); the shared and fit settings and
        RLlib's SAC ones (``actor_lr``, ``tau``, ``gamma``, ...) go up the MRO.
        :meth:`validate` checks the values."""
        super().training(**kwargs)
        if model_train_freq is not NotProvided:
            self.model_train_freq = model_train_freq
        if env_steps_per_block is not NotProvided:
            self.env_steps_per_block = env_steps_per_block
        if epoch_length is not NotProvided:
            self.epoch_length = epoch_length
        if horizon is not NotProvided:
            self.horizon = horizon
        if num_elites is not NotProvided:
            self.num_elites = num_elites
        if rollouts_per_step is not NotProvided:
            self.rollouts_per_step = rollouts_per_step
        if rollout_schedule is not NotProvided:
            self.rollout_schedule = tuple(rollout_schedule)
        if model_retain_epochs is not NotProvided:
            self.model_retain_epochs = model_retain_epochs
        if rollout_chunk_size is not NotProvided:
            self.rollout_chunk_size = rollout_chunk_size
        if updates_per_step is not NotProvided:
            self.updates_per_step = updates_per_step
        if real_ratio is not NotProvided:
            self.real_ratio = real_ratio
        if sac_hidden_sizes is not NotProvided:
            self.sac_hidden_sizes = tuple(sac_hidden_sizes)
        if sac_activation is not NotProvided:
            self.sac_activation = sac_activation
        if sac_precision is not NotProvided:
            self.sac_precision = sac_precision
        if sac_cuda_graph is not NotProvided:
            self.sac_cuda_graph = sac_cuda_graph
        return self

    # ------------------------------------------------------------------ derived settings
    def ensemble_kwargs(self, obs_dim: int, act_dim: int) -> dict[str, Any]:
        """Constructor arguments of the probabilistic
        :class:`~mbmpo_ray.models.DynamicsEnsemble` (its elites: :meth:`elites`)."""
        return dict(obs_dim=obs_dim, act_dim=act_dim, ensemble_size=self.ensemble_size,
                    hidden_sizes=tuple(self.model_hidden_sizes),
                    activation=self.model_activation, probabilistic=True)

    def elites(self) -> int | None:
        """Members the model rollouts use (``num_elites``)."""
        return self.num_elites

    @property
    def real_steps_per_iter(self) -> int:
        """Real env steps per ``train()`` call after the first (= ``model_train_freq``)."""
        return self.model_train_freq

    def epoch(self, real_steps: int) -> float:
        """MBPO epoch of a run that has taken ``real_steps`` real steps (the random steps
        come before epoch 0, as in the reference)."""
        return max(0, real_steps - self.initial_random_steps) / self.epoch_length

    def rollout_length(self, real_steps: int) -> int:
        """k after ``real_steps`` real steps (:func:`~mbmpo_ray.imagination.rollout_length`
        of the current whole epoch)."""
        return rollout_length(math.floor(self.epoch(real_steps)), self.rollout_schedule)

    def model_buffer_capacity(self, k: int) -> int:
        """Model-buffer rows for ``model_retain_epochs`` epochs of rollouts of length k."""
        return ModelBuffer.capacity_for(
            k, self.rollouts_per_step * self.model_train_freq,
            self.epoch_length / self.model_train_freq, self.model_retain_epochs)

    def batch_split(self) -> tuple[int, int]:
        """``(real rows, model rows)`` of each SAC batch, as the reference:
        ``int(batch * real_ratio)`` real rows."""
        n_real = int(self.train_batch_size_per_learner * self.real_ratio)
        return n_real, self.train_batch_size_per_learner - n_real

    # ------------------------------------------------------------------ validation
    def problems(self) -> list[str]:
        """Every invalid MBPO setting or combination, one line each (empty: valid)."""
        found = self.shared_problems()
        found += settings.problems(self, {k: rule for k, (rule, _) in SAC_RULES.items()})
        s = self.rollout_schedule
        if Rule(tuple, low=0).accepts(s) and not (len(s) == 4 and s[0] <= s[1]
                                                   and min(s[2:]) >= 1):
            found.append(f"rollout_schedule must be (epoch_a, epoch_b, k_a, k_b) with "
                         f"0 <= epoch_a <= epoch_b and integer k >= 1, got {s!r}")
        if not (self.target_entropy == "auto" or (
                isinstance(self.target_entropy, (int, float))
                and not isinstance(self.target_entropy, bool))):
            found.append(f"target_entropy must be 'auto' or a number, got "
                         f"{self.target_entropy!r}")
        if self.n_step != 1:
            found.append(f"MBPO uses 1-step SAC targets: n_step must be 1, got {self.n_step!r}")
        if found:  # the combinations below assume valid single settings
            return found
        if self.num_elites > self.ensemble_size:
            found.append(f"num_elites={self.num_elites} > ensemble_size={self.ensemble_size}; "
                         "lower it")
        if self.env_steps_per_block > self.model_train_freq:
            found.append(f"env_steps_per_block={self.env_steps_per_block} > model_train_freq="
                         f"{self.model_train_freq}: a block never spans a refit")
        if self.sac_cuda_graph and self.num_learners > 1:
            found.append(f"sac_cuda_graph captures one learner's update; with num_learners="
                         f"{self.num_learners} (gradients all-reduced every update) set "
                         "sac_cuda_graph=False")
        return found

    # ------------------------------------------------------------------ RLlib hooks
    @property
    @override(SACConfig)
    def _model_config_auto_includes(self) -> dict[str, Any]:
        try:
            obs_start = self.env_spec().policy_obs_start
        except (UnsupportedEnvError, AttributeError):
            obs_start = 0
        return super()._model_config_auto_includes | {
            "fcnet_hiddens": list(self.sac_hidden_sizes),
            "fcnet_activation": self.sac_activation,
            "mbpo_obs_start": obs_start,
        }

    @override(SACConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from mbmpo_ray.algorithm.mbpo.rl_module import MBPOTorchRLModule

        return RLModuleSpec(module_class=MBPOTorchRLModule)

    @override(SACConfig)
    def get_default_learner_class(self):
        from mbmpo_ray.algorithm.mbpo.learner import MBPOTorchLearner

        return MBPOTorchLearner
