"""MBMPOConfig: RLlib-style builder for the MB-MPO algorithm (defaults from the paper)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override

from mbmpo_ray import settings
from mbmpo_ray.algorithm.base_config import FitSettingsConfig, ModelBasedConfig
from mbmpo_ray.meta import MetaConfig
from mbmpo_ray.settings import Declared, Rule

_POSITIVE = Rule(int, low=1)
_NON_NEGATIVE = Rule(int, low=0)

# MB-MPO's own settings (the shared ones are in algorithm/base_config.py); the meta-step
# settings passed on to the maths are declared, with their rules and docs, by MetaConfig
# (mbmpo_ray/meta/config.py).
META_SETTINGS = ("num_tasks", "inner_lr", "num_inner_steps", "first_order", "gae_lambda",
                 "outer_optimizer", "max_kl", "cg_iters", "cg_damping", "hvp_method",
                 "hvp_subsample", "ppo_clip", "ppo_epochs", "ppo_lr")
OWN: dict[str, Declared] = {
    # real data
    "real_steps_per_iter": Declared(4000, "real env steps per iteration, split over K adapted "
                                    "policies", _POSITIVE),
    "horizon": Declared(200, "real episode length (and imagined rollout length unless "
                        "imagined_horizon is set)", _POSITIVE),
    # dynamics ensemble
    "probabilistic_model": Declared(False, "Gaussian NLL head (PETS/MBPO) instead of the "
                                    "paper's L2 head", Rule(bool)),
    # imagination
    "rollouts_per_task": Declared(50, "imagined rollouts per task", _POSITIVE),
    "imagined_horizon": Declared(None, "imagined rollout length (None: horizon; the paper's "
                                 "long-horizon runs imagined 500 steps of 1000-step real "
                                 "episodes)", Rule(int, low=1, optional=True)),
    "model_bias_max": Declared(None, "model-bias experiment: member k's imagined next states "
                               "get + N(b_k, model_bias_std^2), b_k ~ U[0, model_bias_max] "
                               "drawn once per member from the seed (None: off)",
                               Rule(float, low=0, optional=True)),
    "model_bias_std": Declared(0.1, "noise std of the model-bias experiment",
                               Rule(float, low=0)),
    "imagination_precision": Declared(
        "float32", "dtype of the model in imagination: bfloat16 autocast, or 'auto' = "
        "bfloat16 only where bf16 matmuls are fast (CPUs with AVX512-BF16 or AMX, GPUs), else "
        "float32", Rule(str, choices=("float32", "bfloat16", "auto"))),
    "imagine_from": Declared("reset", "start states of imagined rollouts: 'reset' (fresh "
                             "initial states of the real env, as the paper's code) or "
                             "'buffer' (any real state seen)",
                             Rule(str, choices=("reset", "buffer"))),
    "num_start_states": Declared(5000, "start states drawn per iteration for "
                                 "imagine_from='reset'", _POSITIVE),
    # meta-policy optimisation
    "meta_steps_per_iter": Declared(30, "meta-policy optimisation steps per iteration",
                                    _POSITIVE),
    "policy_hidden_sizes": Declared((32, 32), "hidden sizes of the Gaussian MLP policy",
                                    Rule(tuple)),
    "policy_activation": Declared("tanh", "activation of the policy",
                                  Rule(str, choices=("tanh", "relu", "elu"))),
    "init_log_std": Declared(0.0, "initial log standard deviation of the policy", Rule(float)),
    "max_abs_imagined_return": Declared(
        1e6, "an imagined return above this magnitude (or a non-finite one) marks the "
        "imagination as diverged: that meta step is skipped and flagged (None: only "
        "non-finite values)", Rule(float, low=0, open_low=True, optional=True)),
    **settings.declared_from(MetaConfig, META_SETTINGS),
}


def setting_docs() -> dict[str, str]:
    """``name -> one-line doc`` of every MB-MPO setting of :meth:`MBMPOConfig.training`."""
    return MBMPOConfig.setting_docs()


class MBMPOConfig(ModelBasedConfig, FitSettingsConfig, AlgorithmConfig):
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

    Every setting is an attribute with its paper default, declared once with its rule and
    one-line doc (:func:`setting_docs`): MB-MPO's own in ``OWN`` here (the meta-step ones by
    ``MetaConfig``), the shared ones in ``algorithm/base_config.py``. ``gamma`` (0.99) is
    RLlib's own setting.
    """

    ALGO_NAME = "mbmpo"
    DISPLAY_NAME = "MB-MPO"
    OWN = OWN
    TUPLE_SETTINGS = ("model_hidden_sizes", "policy_hidden_sizes")

    def __init__(self, algo_class=None):
        from mbmpo_ray.algorithm.mbmpo.algorithm import MBMPO

        super().__init__(algo_class=algo_class or MBMPO)
        self._init_declared()
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
        self, *,
        real_steps_per_iter: int = NotProvided, horizon: int = NotProvided,
        probabilistic_model: bool = NotProvided, rollouts_per_task: int = NotProvided,
        imagined_horizon: int | None = NotProvided, model_bias_max: float | None = NotProvided,
        model_bias_std: float = NotProvided, imagination_precision: str = NotProvided,
        imagine_from: str = NotProvided, num_start_states: int = NotProvided,
        meta_steps_per_iter: int = NotProvided, policy_hidden_sizes: tuple = NotProvided,
        policy_activation: str = NotProvided, init_log_std: float = NotProvided,
        max_abs_imagined_return: float | None = NotProvided, num_tasks: int = NotProvided,
        inner_lr: float = NotProvided, num_inner_steps: int = NotProvided,
        first_order: bool = NotProvided, gae_lambda: float = NotProvided,
        outer_optimizer: str = NotProvided, max_kl: float = NotProvided,
        cg_iters: int = NotProvided, cg_damping: float = NotProvided,
        hvp_method: str = NotProvided, hvp_subsample: int = NotProvided,
        ppo_clip: float = NotProvided, ppo_epochs: int = NotProvided,
        ppo_lr: float = NotProvided,
        **kwargs,
    ) -> MBMPOConfig:
        """MB-MPO's own settings (docs: :func:`setting_docs`); the shared and fit settings and
        RLlib's own (``gamma``) go up the MRO. :meth:`validate` checks the values."""
        super().training(**kwargs)
        if real_steps_per_iter is not NotProvided:
            self.real_steps_per_iter = real_steps_per_iter
        if horizon is not NotProvided:
            self.horizon = horizon
        if probabilistic_model is not NotProvided:
            self.probabilistic_model = probabilistic_model
        if rollouts_per_task is not NotProvided:
            self.rollouts_per_task = rollouts_per_task
        if imagined_horizon is not NotProvided:
            self.imagined_horizon = imagined_horizon
        if model_bias_max is not NotProvided:
            self.model_bias_max = model_bias_max
        if model_bias_std is not NotProvided:
            self.model_bias_std = model_bias_std
        if imagination_precision is not NotProvided:
            self.imagination_precision = imagination_precision
        if imagine_from is not NotProvided:
            self.imagine_from = imagine_from
        if num_start_states is not NotProvided:
            self.num_start_states = num_start_states
        if meta_steps_per_iter is not NotProvided:
            self.meta_steps_per_iter = meta_steps_per_iter
        if policy_hidden_sizes is not NotProvided:
            self.policy_hidden_sizes = tuple(policy_hidden_sizes)
        if policy_activation is not NotProvided:
            self.policy_activation = policy_activation
        if init_log_std is not NotProvided:
            self.init_log_std = init_log_std
        if max_abs_imagined_return is not NotProvided:
            self.max_abs_imagined_return = max_abs_imagined_return
        self._meta_training(num_tasks, inner_lr, num_inner_steps, first_order, gae_lambda,
                            outer_optimizer, max_kl, cg_iters, cg_damping, hvp_method,
                            hvp_subsample, ppo_clip, ppo_epochs, ppo_lr)
        return self

    def _meta_training(self, num_tasks, inner_lr, num_inner_steps, first_order, gae_lambda,
                       outer_optimizer, max_kl, cg_iters, cg_damping, hvp_method,
                       hvp_subsample, ppo_clip, ppo_epochs, ppo_lr) -> None:
        """The meta-step keywords of :meth:`training` (declared by ``MetaConfig``)."""
        if num_tasks is not NotProvided:
            self.num_tasks = num_tasks
        if inner_lr is not NotProvided:
            self.inner_lr = inner_lr
        if num_inner_steps is not NotProvided:
            self.num_inner_steps = num_inner_steps
        if first_order is not NotProvided:
            self.first_order = first_order
        if gae_lambda is not NotProvided:
            self.gae_lambda = gae_lambda
        if outer_optimizer is not NotProvided:
            self.outer_optimizer = outer_optimizer
        if max_kl is not NotProvided:
            self.max_kl = max_kl
        if cg_iters is not NotProvided:
            self.cg_iters = cg_iters
        if cg_damping is not NotProvided:
            self.cg_damping = cg_damping
        if hvp_method is not NotProvided:
            self.hvp_method = hvp_method
        if hvp_subsample is not NotProvided:
            self.hvp_subsample = hvp_subsample
        if ppo_clip is not NotProvided:
            self.ppo_clip = ppo_clip
        if ppo_epochs is not NotProvided:
            self.ppo_epochs = ppo_epochs
        if ppo_lr is not NotProvided:
            self.ppo_lr = ppo_lr

    # ------------------------------------------------------------------ derived configs
    @property
    def meta_config(self) -> MetaConfig:
        """The meta-policy optimisation settings."""
        return MetaConfig(
            num_tasks=self.num_tasks, inner_lr=self.inner_lr,
            num_inner_steps=self.num_inner_steps, first_order=self.first_order,
            gamma=self.gamma, gae_lambda=self.gae_lambda, outer_optimizer=self.outer_optimizer,
            max_kl=self.max_kl, cg_iters=self.cg_iters, cg_damping=self.cg_damping,
            hvp_method=self.hvp_method, hvp_subsample=self.hvp_subsample,
            ppo_clip=self.ppo_clip, ppo_epochs=self.ppo_epochs, ppo_lr=self.ppo_lr)

    def learner_threads(self) -> int:
        """Torch threads of the meta-learner: ``learner_torch_threads`` if set; else, for the
        local learner (``num_learners=0``), every CPU the algorithm reserves (driver, env
        runners, model trainers; at most the CPUs this process may run on, e.g. one under
        ``taskset -c 0``), because the meta step runs
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
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, min(int(reserved + 0.05), usable or os.cpu_count() or 1))

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
    def problems(self) -> list[str]:
        """Every invalid MB-MPO setting or combination, one line each (empty: valid)."""
        found = self.shared_problems()
        if found:  # the combinations below assume valid single settings
            return found
        K = self.ensemble_size
        if self.num_tasks % K:
            found.append(
                f"num_tasks={self.num_tasks} must be a multiple of ensemble_size={K} so every "
                f"model is used equally; e.g. num_tasks={K * max(1, round(self.num_tasks / K))}")
        if self.num_learners > self.num_tasks:
            found.append(f"num_learners={self.num_learners} > num_tasks={self.num_tasks}: each "
                         "learner runs at least one task of the meta step; lower num_learners")
        return found

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
