"""MBMPOConfig: RLlib-style builder for the MB-MPO algorithm (defaults from the paper)."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override

from mbmpo_ray import settings
from mbmpo_ray.algorithm.common import ModelEnvConfigMixin
from mbmpo_ray.meta import MetaConfig
from mbmpo_ray.models import FitConfig
from mbmpo_ray.models.ensemble import ACTIVATIONS as MODEL_ACTIVATIONS
from mbmpo_ray.settings import Rule

_POSITIVE = Rule(int, low=1)
_NON_NEGATIVE = Rule(int, low=0)

# Rules and one-line docs of the settings that are MB-MPO's own; the settings passed on to the
# maths (inner_lr, max_kl, model_lr, ...) are declared, with their rules and docs, in
# MetaConfig (mbmpo_ray/meta/config.py) and FitConfig (mbmpo_ray/models/training.py).
SETTINGS: dict[str, tuple[Rule, str]] = {
    # real data
    "initial_random_steps": (_NON_NEGATIVE, "real env steps with uniform random actions first"),
    "real_steps_per_iter": (_POSITIVE, "real env steps per iteration, split over K adapted "
                            "policies"),
    "buffer_capacity": (_POSITIVE, "capacity of the real transition buffer (paper: 1e5)"),
    "max_abs_real_value": (Rule(float, low=0, open_low=True, optional=True),
                           "real transitions with a value above this magnitude (an exploding "
                           "env) are dropped like non-finite ones, and counted (None: keep "
                           "every finite value)"),
    # dynamics ensemble
    "ensemble_size": (_POSITIVE, "K, dynamics models in the ensemble"),
    "model_hidden_sizes": (Rule(tuple), "hidden layer sizes of every ensemble member"),
    "model_activation": (Rule(str, choices=tuple(sorted(MODEL_ACTIVATIONS))),
                         "activation of the ensemble members"),
    "probabilistic_model": (Rule(bool), "Gaussian NLL head (PETS/MBPO) instead of the paper's "
                            "L2 head"),
    "num_model_trainers": (_NON_NEGATIVE, "Ray actors fitting the members in parallel "
                           "(0: on the driver)"),
    "num_cpus_per_model_trainer": (Rule(float, low=0), "CPUs reserved by each model trainer"),
    "model_device": (Rule(str, choices=("cpu", "cuda")), "where the driver fits the ensemble: "
                     "'cuda' fits on this machine's GPU (needs num_model_trainers=0)"),
    # imagination
    "rollouts_per_task": (_POSITIVE, "imagined rollouts per task"),
    "horizon": (_POSITIVE, "real episode length (and imagined rollout length unless "
                "imagined_horizon is set)"),
    "imagined_horizon": (Rule(int, low=1, optional=True),
                         "imagined rollout length (None: horizon; the paper's long-horizon "
                         "runs imagined 500 steps of 1000-step real episodes)"),
    "model_bias_max": (Rule(float, low=0, optional=True),
                       "model-bias experiment: member k's imagined next states get "
                       "+ N(b_k, model_bias_std^2), b_k ~ U[0, model_bias_max] drawn once per "
                       "member from the seed (None: off)"),
    "model_bias_std": (Rule(float, low=0), "noise std of the model-bias experiment"),
    "imagination_precision": (Rule(str, choices=("float32", "bfloat16", "auto")),
                              "dtype of the model in imagination: bfloat16 autocast, or 'auto' "
                              "= bfloat16 only where bf16 matmuls are fast (CPUs with "
                              "AVX512-BF16 or AMX, GPUs), else float32"),
    "deterministic_model_rollouts": (Rule(bool), "imagine with the mean prediction of each "
                                     "member"),
    "imagine_from": (Rule(str, choices=("reset", "buffer")),
                     "start states of imagined rollouts: 'reset' (fresh initial states of the "
                     "real env, as the paper's code) or 'buffer' (any real state seen)"),
    "num_start_states": (_POSITIVE, "start states drawn per iteration for imagine_from='reset'"),
    "imagine_clip_margin": (Rule(float, low=0, optional=True),
                            "imagined states and state changes are clipped to their real-data "
                            "range widened by this many widths per side (None: no clipping)"),
    # meta-policy optimisation
    "meta_steps_per_iter": (_POSITIVE, "meta-policy optimisation steps per iteration"),
    "policy_hidden_sizes": (Rule(tuple), "hidden sizes of the Gaussian MLP policy"),
    "policy_activation": (Rule(str, choices=("tanh", "relu", "elu")), "activation of the "
                          "policy"),
    "init_log_std": (Rule(float), "initial log standard deviation of the policy"),
    "learner_torch_threads": (Rule(int, low=1, optional=True),
                              "torch threads of the meta-learner (None: the CPUs reserved for "
                              "it and the actors that wait during the meta step; "
                              "MBMPOConfig.learner_threads())"),
    "max_abs_imagined_return": (Rule(float, low=0, open_low=True, optional=True),
                                "an imagined return above this magnitude (or a non-finite one) "
                                "marks the imagination as diverged: that meta step is skipped "
                                "and flagged (None: only non-finite values)"),
    # reporting
    "eval_episodes_per_iter": (_NON_NEGATIVE, "real episodes per iteration with the pre-update "
                               "policy"),
    "eval_explore": (Rule(bool), "evaluate the stochastic policy as sampled (False: mean "
                     "action)"),
}
# RLlib's own settings that MB-MPO relies on (set with .env_runners(), .learners(),
# .debugging(), .fault_tolerance(), or the CLI's --seed / --num-env-runners): checked by
# validate() before RLlib's own checks, so a wrong type or value gets one clear line.
_SECONDS = Rule(float, low=0, open_low=True)
RLLIB_RULES: dict[str, Rule] = {
    "num_env_runners": _NON_NEGATIVE,
    "num_envs_per_env_runner": _POSITIVE,
    "num_cpus_per_env_runner": Rule(float, low=0),
    "num_gpus_per_env_runner": Rule(float, low=0),
    "num_learners": _NON_NEGATIVE,
    "num_gpus_per_learner": Rule(float, low=0),
    "seed": Rule(int, low=0, optional=True),
    "gamma": Rule(float, low=0, high=1, open_low=True),
    "restart_failed_env_runners": Rule(bool),
    "max_num_env_runner_restarts": _NON_NEGATIVE,
    "sample_timeout_s": Rule(float, low=0, open_low=True, optional=True),
    "env_runner_health_probe_timeout_s": _SECONDS,
    "env_runner_restore_timeout_s": _SECONDS,
}

# Settings of MetaConfig and FitConfig that .training() exposes (same names, no renaming).
META_SETTINGS = ("num_tasks", "inner_lr", "num_inner_steps", "first_order", "gae_lambda",
                 "outer_optimizer", "max_kl", "cg_iters", "cg_damping", "hvp_method",
                 "hvp_subsample", "ppo_clip", "ppo_epochs", "ppo_lr")
FIT_SETTINGS = ("model_batch_size", "model_lr", "model_max_epochs", "model_patience",
                "model_holdout_ratio", "model_max_holdout", "model_holdout_split",
                "model_fit_steps", "model_check_steps", "model_new_data_fraction",
                "model_val_space")


def setting_docs() -> dict[str, str]:
    """``name -> one-line doc`` of every MB-MPO setting of :meth:`MBMPOConfig.training`."""
    meta, fit = settings.docs_of(MetaConfig), settings.docs_of(FitConfig)
    docs = {name: doc for name, (_, doc) in SETTINGS.items()}
    docs.update({name: meta[name] for name in META_SETTINGS})
    docs.update({name: fit[name] for name in FIT_SETTINGS})
    return docs


class MBMPOConfig(ModelEnvConfigMixin, AlgorithmConfig):
    """Configuration of :class:`~mbmpo_ray.MBMPO` (Clavera et al. 2018).

    Builder use, as for any RLlib algorithm::

        config = (
            MBMPOConfig()
            .environment("HalfCheetah-v5")
            .env_runners(num_env_runners=2)
            .learners(num_learners=0)
            .training(ensemble_size=5, inner_lr=0.001, horizon=200)
            .debugging(seed=0)
        )
        algo = config.build_algo()

    Every MB-MPO setting is an attribute with its paper default (set in ``__init__``); its
    one-line doc is in :func:`setting_docs` (``SETTINGS`` here, the maths settings in
    ``MetaConfig`` / ``FitConfig``, which are built from these attributes by name).
    ``gamma`` (0.99) is RLlib's own setting.
    """

    TUPLE_SETTINGS = ("model_hidden_sizes", "policy_hidden_sizes")

    def __init__(self, algo_class=None):
        from mbmpo_ray.algorithm.mbmpo.algorithm import MBMPO

        super().__init__(algo_class=algo_class or MBMPO)
        # real data
        self.initial_random_steps: int = 5000
        self.real_steps_per_iter: int = 4000
        self.buffer_capacity: int = 1_000_000
        self.max_abs_real_value: float | None = 1e8
        # dynamics ensemble and its fit
        self.ensemble_size: int = 5
        self.model_hidden_sizes: tuple[int, ...] = (512, 512)
        self.model_activation: str = "relu"
        self.probabilistic_model: bool = False
        self.model_batch_size: int = 500
        self.model_lr: float = 1e-3
        self.model_max_epochs: int = 50
        self.model_patience: int = 5
        self.model_holdout_ratio: float = 0.2
        self.model_max_holdout: int = 5000
        self.model_holdout_split: str = "fixed"
        # 0: the paper's epochs over all data; a budget keeps the fit flat (issue 12)
        self.model_fit_steps: int = 0
        self.model_check_steps: int = 50
        self.model_new_data_fraction: float = 0.0
        self.model_val_space: str = "normalized"
        self.num_model_trainers: int = 0
        self.num_cpus_per_model_trainer: float = 1
        self.model_device: str = "cpu"
        # imagination
        self.num_tasks: int = 20
        self.rollouts_per_task: int = 50
        self.horizon: int = 200
        self.imagined_horizon: int | None = None
        self.model_bias_max: float | None = None
        self.model_bias_std: float = 0.1
        self.imagination_precision: str = "float32"
        self.deterministic_model_rollouts: bool = True
        self.imagine_from: str = "reset"
        self.num_start_states: int = 5000
        self.imagine_clip_margin: float | None = 1.0
        # meta-policy optimisation
        self.meta_steps_per_iter: int = 30
        self.inner_lr: float = 0.001
        self.num_inner_steps: int = 1
        self.first_order: bool = False
        self.gae_lambda: float = 1.0
        self.outer_optimizer: str = "trpo"
        self.max_kl: float = 0.01
        self.cg_iters: int = 10
        self.cg_damping: float = 1e-5
        self.hvp_method: str = "gauss_newton"
        self.hvp_subsample: int = 5
        self.ppo_clip: float = 0.2
        self.ppo_epochs: int = 5
        self.ppo_lr: float = 1e-3
        self.policy_hidden_sizes: tuple[int, ...] = (32, 32)
        self.policy_activation: str = "tanh"
        self.init_log_std: float = 0.0
        self.learner_torch_threads: int | None = None
        self.max_abs_imagined_return: float | None = 1e6
        # reporting
        self.eval_episodes_per_iter: int = 5
        self.eval_explore: bool = True
        # RLlib settings with MB-MPO values
        self.gamma = 0.99
        self.lr = 1e-3  # Adam of the Learner (unused by the TRPO outer step)
        # The env runners sample with the module's Gaussian and let RLlib clip to the box;
        # actions are not rescaled (the models and reward functions see env-space actions).
        self.normalize_actions = False
        self.clip_actions = True
        self.batch_mode = "truncate_episodes"
        self.num_env_runners = 0

    @override(AlgorithmConfig)
    def training(
        self,
        *,
        initial_random_steps: int = NotProvided,
        real_steps_per_iter: int = NotProvided,
        buffer_capacity: int = NotProvided,
        max_abs_real_value: float | None = NotProvided,
        ensemble_size: int = NotProvided,
        model_hidden_sizes: tuple[int, ...] = NotProvided,
        model_activation: str = NotProvided,
        probabilistic_model: bool = NotProvided,
        model_batch_size: int = NotProvided,
        model_lr: float = NotProvided,
        model_max_epochs: int = NotProvided,
        model_patience: int = NotProvided,
        model_holdout_ratio: float = NotProvided,
        model_max_holdout: int = NotProvided,
        model_holdout_split: str = NotProvided,
        model_fit_steps: int = NotProvided,
        model_check_steps: int = NotProvided,
        model_new_data_fraction: float = NotProvided,
        model_val_space: str = NotProvided,
        num_model_trainers: int = NotProvided,
        num_cpus_per_model_trainer: float = NotProvided,
        model_device: str = NotProvided,
        num_tasks: int = NotProvided,
        rollouts_per_task: int = NotProvided,
        horizon: int = NotProvided,
        imagined_horizon: int | None = NotProvided,
        model_bias_max: float | None = NotProvided,
        model_bias_std: float = NotProvided,
        imagination_precision: str = NotProvided,
        deterministic_model_rollouts: bool = NotProvided,
        imagine_from: str = NotProvided,
        num_start_states: int = NotProvided,
        imagine_clip_margin: float | None = NotProvided,
        meta_steps_per_iter: int = NotProvided,
        inner_lr: float = NotProvided,
        num_inner_steps: int = NotProvided,
        first_order: bool = NotProvided,
        gae_lambda: float = NotProvided,
        outer_optimizer: str = NotProvided,
        max_kl: float = NotProvided,
        cg_iters: int = NotProvided,
        cg_damping: float = NotProvided,
        hvp_method: str = NotProvided,
        hvp_subsample: int = NotProvided,
        ppo_clip: float = NotProvided,
        ppo_epochs: int = NotProvided,
        ppo_lr: float = NotProvided,
        policy_hidden_sizes: tuple[int, ...] = NotProvided,
        policy_activation: str = NotProvided,
        init_log_std: float = NotProvided,
        learner_torch_threads: int | None = NotProvided,
        max_abs_imagined_return: float | None = NotProvided,
        eval_episodes_per_iter: int = NotProvided,
        eval_explore: bool = NotProvided,
        **kwargs,
    ) -> MBMPOConfig:
        """Set MB-MPO settings (docs: :func:`setting_docs`) and RLlib's common ones (``gamma``).

        Values are checked by :meth:`validate`, which reports every problem at once.
        """
        super().training(**kwargs)
        given = {k: v for k, v in locals().items()
                 if k not in ("self", "kwargs", "__class__") and v is not NotProvided}
        for name, value in given.items():
            if name.endswith("_sizes") and isinstance(value, list):
                value = tuple(value)
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ derived configs
    @property
    def fit_config(self) -> FitConfig:
        """The ensemble fitting settings (same names; the driver fits the normalisers)."""
        return settings.build(FitConfig, self, update_normalizers=False)

    @property
    def meta_config(self) -> MetaConfig:
        """The meta-policy optimisation settings (same names)."""
        return settings.build(MetaConfig, self)

    def learner_threads(self) -> int:
        """Torch threads of the meta-learner: ``learner_torch_threads`` if set; else, for the
        local learner (``num_learners=0``), every CPU the algorithm reserves (driver, env
        runners, model trainers; at most this machine's cores), because the meta step runs
        while the env runners and model trainers wait (2 threads: 0.6x the meta-step time of
        1, BENCHMARKS.md); for a remote learner its ``num_cpus_per_learner``. Never more
        threads than reserved CPUs: OpenMP threads that share a core with another busy
        process slow the meta step 4-16x."""
        if self.learner_torch_threads is not None:
            return self.learner_torch_threads
        if self.num_learners == 0:
            bundles = self.algo_class.default_resource_request(self).bundles
            reserved = sum(b.get("CPU", 0) for b in bundles)
        else:
            cpus = self.num_cpus_per_learner
            reserved = cpus if isinstance(cpus, (int, float)) else 1
        # a share rounded down to fit a cluster (e.g. 1 + 3 x 0.33) still counts as 2 CPUs
        return max(1, min(int(reserved + 0.05), os.cpu_count() or 1))

    @property
    def rollout_horizon(self) -> int:
        """Length of imagined rollouts: ``imagined_horizon``, else ``horizon``."""
        return self.imagined_horizon or self.horizon

    def model_biases(self) -> np.ndarray | None:
        """``[K]`` per-member biases ``b_k ~ U[0, model_bias_max]`` of the model-bias
        experiment, a fixed function of the seed (None: the experiment is off)."""
        if self.model_bias_max is None:
            return None
        rng = np.random.default_rng([int(self.seed or 0), 0xB1A5])
        return rng.uniform(0.0, self.model_bias_max, self.ensemble_size)

    def ensemble_kwargs(self, obs_dim: int, act_dim: int) -> dict[str, Any]:
        """Constructor arguments of the :class:`~mbmpo_ray.models.DynamicsEnsemble`."""
        return dict(obs_dim=obs_dim, act_dim=act_dim, ensemble_size=self.ensemble_size,
                    hidden_sizes=tuple(self.model_hidden_sizes),
                    activation=self.model_activation, probabilistic=self.probabilistic_model)

    # ------------------------------------------------------------------ validation
    @override(AlgorithmConfig)
    def validate(self) -> None:
        """Check every MB-MPO setting (types and values); side-effect free.

        Raises:
            ValueError: one line per problem, saying what each setting accepts.
        """
        # ours first: RLlib's checks assume well-typed values
        settings.raise_if(self.problems(), "MBMPOConfig")
        super().validate()

    def problems(self) -> list[str]:
        """Every invalid MB-MPO setting or combination, one line each (empty: valid)."""
        found = settings.problems(self, {k: rule for k, (rule, _) in SETTINGS.items()})
        found += settings.problems(self, RLLIB_RULES)
        cpus = self.num_cpus_per_learner
        if not (cpus == "auto" or Rule(float, low=0).accepts(cpus)):
            found.append(f"num_cpus_per_learner must be a number >= 0 or 'auto', got {cpus!r}")
        found += self.meta_config.problems() + self.fit_config.problems()
        found += self.env_problems("MBMPO")
        if found:  # the combinations below assume valid single settings
            return found
        K = self.ensemble_size
        if self.num_tasks % K:
            found.append(
                f"num_tasks={self.num_tasks} must be a multiple of ensemble_size={K} so every "
                f"model is used equally; e.g. num_tasks={K * max(1, round(self.num_tasks / K))}")
        found += self.device_problems()
        if self.num_model_trainers > K:
            found.append(f"num_model_trainers={self.num_model_trainers} > ensemble_size={K}: "
                         "each trainer fits at least one member; lower it")
        if self.num_learners > 1:
            found.append("MBMPO runs its meta-learner on one Learner: use "
                         ".learners(num_learners=0 or 1)")
        return found

    def validate_spaces(self, obs_space: gym.Space, act_space: gym.Space) -> None:
        """Reject spaces MB-MPO does not support, saying why."""
        if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
            raise ValueError(
                f"MBMPO supports continuous (1-D Box) action spaces only, got {act_space}; "
                "the dynamics models and the Gaussian policy need real-valued actions.")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"MBMPO needs a flat Box observation space, got {obs_space}")

    # ------------------------------------------------------------------ RLlib hooks
    @property
    @override(AlgorithmConfig)
    def _model_config_auto_includes(self) -> dict[str, Any]:
        obs_start = self.env_spec().policy_obs_start if isinstance(self.model_env_id, str) else 0
        return {
            "mbmpo_policy_hidden_sizes": tuple(self.policy_hidden_sizes),
            "mbmpo_policy_activation": self.policy_activation,
            "mbmpo_init_log_std": self.init_log_std,
            "mbmpo_policy_obs_start": obs_start,
            "mbmpo_seed": self.seed or 0,
        }

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from mbmpo_ray.algorithm.mbmpo.rl_module import MBMPOTorchRLModule

        return RLModuleSpec(module_class=MBMPOTorchRLModule)

    @override(AlgorithmConfig)
    def get_default_learner_class(self):
        from mbmpo_ray.algorithm.mbmpo.learner import MBMPOTorchLearner

        return MBMPOTorchLearner
