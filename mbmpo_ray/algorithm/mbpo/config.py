"""MBPOConfig: RLlib-style builder for MBPO (Janner et al. 2019) on RLlib's SAC."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.sac.sac import SACConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override

from mbmpo_ray import settings
from mbmpo_ray.algorithm.common import ModelEnvConfigMixin
from mbmpo_ray.buffer import ModelBuffer
from mbmpo_ray.envs import UnsupportedEnvError
from mbmpo_ray.imagination import rollout_length
from mbmpo_ray.models import FitConfig
from mbmpo_ray.models.ensemble import ACTIVATIONS as MODEL_ACTIVATIONS
from mbmpo_ray.settings import Rule

_POSITIVE = Rule(int, low=1)
_NON_NEGATIVE = Rule(int, low=0)

# Rules and one-line docs of MBPO's own settings; the model-fitting settings (model_lr, ...)
# are declared with theirs in FitConfig (mbmpo_ray/models/training.py); SAC's own settings
# (actor_lr, critic_lr, alpha_lr, tau, initial_alpha, target_entropy, twin_q, grad_clip,
# gamma, train_batch_size_per_learner) are RLlib's SACConfig attributes (checked in
# problems()). Defaults: the reference code (jannerm/mbpo), see MBPOConfig.__init__.
SETTINGS: dict[str, tuple[Rule, str]] = {
    # real data
    "initial_random_steps": (_NON_NEGATIVE, "real env steps with uniform random actions "
                             "before the first model fit"),
    "model_train_freq": (_POSITIVE, "real env steps between ensemble refits (and new "
                         "model rollouts): one train() call"),
    "env_steps_per_block": (_POSITIVE, "real env steps sampled per block; each block is "
                            "followed by its updates_per_step x block SAC updates in one "
                            "Learner call (1: MBPO's exact interleaving)"),
    "epoch_length": (_POSITIVE, "real env steps per MBPO epoch (the unit of rollout_schedule "
                     "and model_retain_epochs)"),
    "horizon": (Rule(int, low=1, optional=True), "real episode length (None: the env's "
                "default, 1000 for MuJoCo, 200 for Pendulum)"),
    "buffer_capacity": (_POSITIVE, "capacity of the real transition buffer"),
    # dynamics ensemble
    "ensemble_size": (_POSITIVE, "dynamics models in the probabilistic ensemble"),
    "num_elites": (_POSITIVE, "members with the lowest held-out loss that model rollouts use"),
    "model_hidden_sizes": (Rule(tuple), "hidden layer sizes of every ensemble member"),
    "model_activation": (Rule(str, choices=tuple(sorted(MODEL_ACTIVATIONS))),
                         "activation of the ensemble members"),
    "num_model_trainers": (_NON_NEGATIVE, "Ray actors fitting the members in parallel "
                           "(0: on the driver)"),
    "num_cpus_per_model_trainer": (Rule(float, low=0), "CPUs reserved by each model trainer"),
    "model_device": (Rule(str, choices=("cpu", "cuda")), "where the driver fits the ensemble: "
                     "'cuda' fits on this machine's GPU (needs num_model_trainers=0)"),
    # model rollouts
    "rollouts_per_step": (_POSITIVE, "branched rollouts started per real step: each refit "
                          "starts rollouts_per_step x model_train_freq of them"),
    "rollout_schedule": (Rule(tuple), "(epoch_a, epoch_b, k_a, k_b): rollout length k_a up "
                         "to epoch_a, linear to k_b at epoch_b"),
    "model_retain_epochs": (_POSITIVE, "epochs of model rollouts the model buffer keeps"),
    "deterministic_model_rollouts": (Rule(bool), "roll out each elite's mean instead of a "
                                     "sample of its Gaussian"),
    "rollout_chunk_size": (_POSITIVE, "start states per batched rollout call (memory bound)"),
    "imagine_clip_margin": (Rule(float, low=0, optional=True),
                            "model states and state changes are clipped to their real-data "
                            "range widened by this many widths per side (None: no clipping, "
                            "as the reference)"),
    # SAC on mixed batches
    "updates_per_step": (_POSITIVE, "G, SAC gradient steps per real env step"),
    "real_ratio": (Rule(float, low=0, high=1), "fraction of real transitions in each SAC "
                   "batch (int(batch * real_ratio) rows; the rest from the model buffer)"),
    "sac_hidden_sizes": (Rule(tuple), "hidden sizes of the SAC policy and Q networks"),
    "sac_activation": (Rule(str, choices=("relu", "tanh", "silu", "elu")),
                       "activation of the SAC networks"),
    "learner_torch_threads": (Rule(int, low=1, optional=True),
                              "torch threads of the Learner (None: its CPUs, or 1)"),
    "sac_precision": (Rule(str, choices=("float32", "bfloat16", "auto")),
                      "dtype of the SAC updates' matmuls: bfloat16 autocast of the hidden "
                      "layers (weights, output layers, losses, Adam and targets stay float32), "
                      "or 'auto' = bfloat16 where bf16 matmuls are fast (CPUs with "
                      "AVX512-BF16 or AMX, GPUs), else float32"),
    "sac_cuda_graph": (Rule(bool), "on a GPU Learner, replay the SAC update (forward, loss, "
                       "backward, Adam, Polyak) as one captured CUDA graph (experimental: not "
                       "yet run on a GPU; falls back to eager updates if capturing fails)"),
    # reporting
    "eval_episodes_per_iter": (_NON_NEGATIVE, "real episodes per iteration with the current "
                               "policy on a separate evaluation env"),
    "eval_explore": (Rule(bool), "evaluate the stochastic policy (False: its mean action, "
                     "as the reference)"),
}
FIT_SETTINGS = ("model_batch_size", "model_lr", "model_weight_decay", "model_max_epochs",
                "model_patience", "model_holdout_ratio", "model_max_holdout",
                "model_holdout_split", "model_improvement_threshold", "model_fit_steps",
                "model_check_steps", "model_new_data_fraction", "model_val_space",
                "model_precision")
# RLlib's SAC settings MBPO uses, with what they accept here
SAC_SETTINGS: dict[str, tuple[Rule, str]] = {
    "actor_lr": (Rule(float, low=0, open_low=True), "Adam lr of the policy (MBPO: 3e-4; "
                 "RLlib's SAC default is 3e-5)"),
    "critic_lr": (Rule(float, low=0, open_low=True), "Adam lr of the Q networks"),
    "alpha_lr": (Rule(float, low=0, open_low=True), "Adam lr of the entropy coefficient"),
    "tau": (Rule(float, low=0, high=1, open_low=True), "Polyak rate of the target Q networks, "
            "applied after every gradient step"),
    "initial_alpha": (Rule(float, low=0, open_low=True), "initial entropy coefficient"),
    "gamma": (Rule(float, low=0, high=1), "discount"),
    "train_batch_size_per_learner": (_POSITIVE, "SAC batch size (real + model rows)"),
    "twin_q": (Rule(bool), "clipped double Q (two critics)"),
    "grad_clip": (Rule(float, low=0, open_low=True, optional=True), "gradient clipping"),
}


def setting_docs() -> dict[str, str]:
    """``name -> one-line doc`` of every MBPO setting of :meth:`MBPOConfig.training`."""
    fit = settings.docs_of(FitConfig)
    docs = {name: doc for name, (_, doc) in SETTINGS.items()}
    docs.update({name: fit[name] for name in FIT_SETTINGS})
    docs.update({name: doc for name, (_, doc) in SAC_SETTINGS.items()})
    docs["target_entropy"] = "entropy target of the automatic alpha tuning ('auto': -|A|)"
    return docs


class MBPOConfig(ModelEnvConfigMixin, SACConfig):
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

    TUPLE_SETTINGS = ("model_hidden_sizes", "sac_hidden_sizes", "rollout_schedule")

    def __init__(self, algo_class=None):
        # One flat list of every setting's default, as RLlib's own configs do: longer than
        # 60 lines, but it reads better whole (one place to look a default up).
        from mbmpo_ray.algorithm.mbpo.algorithm import MBPO

        super().__init__(algo_class=algo_class or MBPO)
        # real data
        self.initial_random_steps: int = 5000
        self.model_train_freq: int = 250
        self.env_steps_per_block: int = 10
        self.epoch_length: int = 1000
        self.horizon: int | None = None
        self.buffer_capacity: int = 1_000_000
        # dynamics ensemble and its fit
        self.ensemble_size: int = 7
        self.num_elites: int = 5
        self.model_hidden_sizes: tuple[int, ...] = (200, 200, 200, 200)
        self.model_activation: str = "silu"
        self.model_batch_size: int = 256
        self.model_lr: float = 1e-3
        self.model_weight_decay: float = 5e-5
        self.model_max_epochs: int = 50
        self.model_patience: int = 5
        self.model_holdout_ratio: float = 0.2
        self.model_max_holdout: int = 5000
        self.model_holdout_split: str = "fixed"
        self.model_improvement_threshold: float = 0.01
        # 0: the paper's epochs over all data; a budget keeps the fit flat (issue 12)
        self.model_fit_steps: int = 0
        self.model_check_steps: int = 50
        self.model_new_data_fraction: float = 0.0
        self.model_val_space: str = "normalized"
        self.model_precision: str = "float32"
        self.num_model_trainers: int = 0
        self.num_cpus_per_model_trainer: float = 1
        self.model_device: str = "cpu"
        # model rollouts
        self.rollouts_per_step: int = 400
        self.rollout_schedule: tuple[int, int, int, int] = (20, 100, 1, 1)
        self.model_retain_epochs: int = 1
        self.deterministic_model_rollouts: bool = False
        self.rollout_chunk_size: int = 25_000
        self.imagine_clip_margin: float | None = None
        # SAC on mixed batches
        self.updates_per_step: int = 20
        self.real_ratio: float = 0.05
        self.sac_hidden_sizes: tuple[int, ...] = (256, 256)
        self.sac_activation: str = "relu"
        self.learner_torch_threads: int | None = None
        self.sac_precision: str = "float32"
        self.sac_cuda_graph: bool = False
        # reporting
        self.eval_episodes_per_iter: int = 1
        self.eval_explore: bool = False
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
        self,
        *,
        initial_random_steps: int = NotProvided,
        model_train_freq: int = NotProvided,
        env_steps_per_block: int = NotProvided,
        epoch_length: int = NotProvided,
        horizon: int | None = NotProvided,
        buffer_capacity: int = NotProvided,
        ensemble_size: int = NotProvided,
        num_elites: int = NotProvided,
        model_hidden_sizes: tuple[int, ...] = NotProvided,
        model_activation: str = NotProvided,
        model_batch_size: int = NotProvided,
        model_lr: float = NotProvided,
        model_weight_decay: float = NotProvided,
        model_max_epochs: int = NotProvided,
        model_patience: int = NotProvided,
        model_holdout_ratio: float = NotProvided,
        model_max_holdout: int = NotProvided,
        model_holdout_split: str = NotProvided,
        model_improvement_threshold: float = NotProvided,
        model_fit_steps: int = NotProvided,
        model_check_steps: int = NotProvided,
        model_new_data_fraction: float = NotProvided,
        model_val_space: str = NotProvided,
        model_precision: str = NotProvided,
        num_model_trainers: int = NotProvided,
        num_cpus_per_model_trainer: float = NotProvided,
        model_device: str = NotProvided,
        rollouts_per_step: int = NotProvided,
        rollout_schedule: tuple[int, int, int, int] = NotProvided,
        model_retain_epochs: int = NotProvided,
        deterministic_model_rollouts: bool = NotProvided,
        rollout_chunk_size: int = NotProvided,
        imagine_clip_margin: float | None = NotProvided,
        updates_per_step: int = NotProvided,
        real_ratio: float = NotProvided,
        sac_hidden_sizes: tuple[int, ...] = NotProvided,
        sac_activation: str = NotProvided,
        learner_torch_threads: int | None = NotProvided,
        sac_precision: str = NotProvided,
        sac_cuda_graph: bool = NotProvided,
        eval_episodes_per_iter: int = NotProvided,
        eval_explore: bool = NotProvided,
        **kwargs,
    ) -> MBPOConfig:
        """Set MBPO settings (docs: :func:`setting_docs`) and RLlib's SAC/common ones
        (``actor_lr``, ``tau``, ``gamma``, ...).

        Values are checked by :meth:`validate`, which reports every problem at once.
        """
        super().training(**kwargs)
        given = {k: v for k, v in locals().items()
                 if k not in ("self", "kwargs", "__class__") and v is not NotProvided}
        for name, value in given.items():
            if (name.endswith("_sizes") or name == "rollout_schedule") and isinstance(
                    value, list):
                value = tuple(value)
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ derived settings
    @property
    def fit_config(self) -> FitConfig:
        """The ensemble fitting settings (same names; the driver fits the normalisers)."""
        return settings.build(FitConfig, self, update_normalizers=False)

    def ensemble_kwargs(self, obs_dim: int, act_dim: int) -> dict[str, Any]:
        """Constructor arguments of the probabilistic
        :class:`~mbmpo_ray.models.DynamicsEnsemble`."""
        return dict(obs_dim=obs_dim, act_dim=act_dim, ensemble_size=self.ensemble_size,
                    hidden_sizes=tuple(self.model_hidden_sizes),
                    activation=self.model_activation, probabilistic=True,
                    num_elites=self.num_elites)

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
    @override(SACConfig)
    def validate(self) -> None:
        """Check every MBPO setting (types, values, combinations); side-effect free.

        Raises:
            ValueError: one line per problem, saying what each setting accepts.
        """
        super().validate()
        settings.raise_if(self.problems(), "MBPOConfig")

    def problems(self) -> list[str]:
        """Every invalid MBPO setting or combination, one line each (empty: valid)."""
        found = settings.problems(self, {k: rule for k, (rule, _) in SETTINGS.items()
                                         if k != "rollout_schedule"})  # checked below
        found += settings.problems(self, {k: rule for k, (rule, _) in SAC_SETTINGS.items()})
        found += self.fit_config.problems()
        found += self.env_problems("MBPO")
        s = self.rollout_schedule
        if not (isinstance(s, (tuple, list)) and len(s) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s)
                and 0 <= s[0] <= s[1] and min(s[2:]) >= 1 and all(float(v).is_integer()
                                                                  for v in s[2:])):
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
        found += self.device_problems()
        if self.num_model_trainers > self.ensemble_size:
            found.append(f"num_model_trainers={self.num_model_trainers} > ensemble_size="
                         f"{self.ensemble_size}: each trainer fits at least one member")
        if self.env_steps_per_block > self.model_train_freq:
            found.append(f"env_steps_per_block={self.env_steps_per_block} > model_train_freq="
                         f"{self.model_train_freq}: a block never spans a refit")
        if self.num_learners > 1:
            found.append("MBPO runs its SAC updates on one Learner: use "
                         ".learners(num_learners=0 or 1)")
        return found

    def validate_spaces(self, obs_space: gym.Space, act_space: gym.Space) -> None:
        """Reject spaces MBPO does not support, saying why."""
        if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1 or not (
                act_space.is_bounded()):
            raise ValueError(
                f"MBPO supports bounded continuous (1-D Box) action spaces only, got "
                f"{act_space}; the dynamics models and SAC's squashed Gaussian need them.")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"MBPO needs a flat Box observation space, got {obs_space}")

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
