"""MBMPOConfig: RLlib-style builder for the MB-MPO algorithm (defaults from the paper)."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override
from ray.tune.registry import register_env

from mbmpo_ray.envs import UnsupportedEnvError, get_env_spec, make_env
from mbmpo_ray.meta import MetaConfig
from mbmpo_ray.models import FitConfig

ENV_PREFIX = "mbmpo_ray/"


def _make_model_env(env_ctx: Any, *, env_id: str, horizon: int) -> gym.Env:
    """Env creator for the env runners: the env exactly as the model functions expect it."""
    overrides = {k: v for k, v in dict(env_ctx or {}).items() if k != "num_envs"}
    return make_env(env_id, horizon=horizon, **overrides)


# Settings of `training()` with their paper defaults and one-line docs (also used by the CLI).
TRAINING_DEFAULTS: dict[str, tuple[Any, str]] = {
    # real data
    "initial_random_steps": (5000, "real env steps with uniform random actions before training"),
    "real_steps_per_iter": (4000, "real env steps per iteration, split over K adapted policies"),
    "buffer_capacity": (1_000_000, "capacity of the real transition buffer (paper: 1e5)"),
    # dynamics ensemble
    "ensemble_size": (5, "K, dynamics models in the ensemble"),
    "model_hidden_sizes": ((512, 512), "hidden layer sizes of every ensemble member"),
    "model_activation": ("relu", "activation of the ensemble members"),
    "probabilistic_model": (False, "Gaussian NLL head (PETS/MBPO) instead of the paper's L2 head"),
    "num_elites": (None, "elite members for the probabilistic head (None: all)"),
    "model_batch_size": (500, "model fitting minibatch per member"),
    "model_lr": (1e-3, "Adam learning rate of the model fit"),
    "model_max_epochs": (50, "maximum epochs per model fit (early stopping usually ends sooner)"),
    "model_patience": (5, "epochs without validation improvement before a member stops"),
    "model_holdout_ratio": (0.2, "fraction of the data held out for validation"),
    "num_model_trainers": (0, "M Ray actors fitting the members in parallel (0: on the driver)"),
    "num_cpus_per_model_trainer": (1, "CPUs reserved by each model-trainer actor"),
    # meta-policy optimisation
    "num_tasks": (20, "tasks per meta step; a multiple of ensemble_size (paper: 4 per model)"),
    "rollouts_per_task": (50, "imagined rollouts per task"),
    "horizon": (200, "real episode length and imagined rollout length"),
    "meta_steps_per_iter": (30, "meta-policy optimisation steps per iteration"),
    "inner_lr": (0.001, "alpha, inner policy-gradient step size (0: ME-TRPO ablation)"),
    "num_inner_steps": (1, "inner adaptation steps"),
    "first_order": (False, "drop second-order terms of the inner step"),
    "gae_lambda": (1.0, "GAE lambda"),
    "outer_optimizer": ("trpo", "'trpo' (paper) or 'ppo' (clipped surrogate with Adam)"),
    "max_kl": (0.01, "TRPO trust region delta"),
    "cg_iters": (10, "conjugate gradient iterations of the TRPO step"),
    "cg_damping": (1e-5, "damping of the KL Hessian-vector product"),
    "hvp_subsample": (5, "CG's Hessian-vector products use every k-th rollout (1: all)"),
    "ppo_clip": (0.2, "PPO clip epsilon (outer_optimizer='ppo')"),
    "ppo_epochs": (5, "PPO epochs per meta step (outer_optimizer='ppo')"),
    "ppo_lr": (1e-3, "PPO Adam learning rate (outer_optimizer='ppo')"),
    "deterministic_model_rollouts": (True, "imagine with the mean prediction of each member"),
    "imagine_from": ("reset", "start states of imagined rollouts: 'reset' (fresh initial states "
                     "of the real env, as the paper's code) or 'buffer' (any real state seen)"),
    "num_start_states": (5000, "start states drawn per iteration for imagine_from='reset'"),
    "imagine_clip_margin": (1.0, "imagined states and per-step state changes are clipped to "
                            "their real-data range widened by this many widths per side "
                            "(None: no clipping); stops exploding model rollouts"),
    "policy_hidden_sizes": ((32, 32), "hidden sizes of the Gaussian MLP policy"),
    "policy_activation": ("tanh", "activation of the policy"),
    "init_log_std": (0.0, "initial log standard deviation of the policy"),
    "learner_torch_threads": (None, "torch threads of the meta-learner (None: its CPUs, or 1); "
                              "more helps on an otherwise idle machine"),
    # reporting
    "eval_episodes_per_iter": (5, "real episodes per iteration with the pre-update policy"),
    "eval_explore": (True, "evaluate the stochastic policy as sampled (False: mean action)"),
}


class MBMPOConfig(AlgorithmConfig):
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

    Every MB-MPO setting of :meth:`training` is listed in ``TRAINING_DEFAULTS`` with its paper
    default and a one-line description. ``gamma`` (0.99) is RLlib's own setting.
    """

    def __init__(self, algo_class=None):
        from mbmpo_ray.algorithm.mbmpo import MBMPO

        super().__init__(algo_class=algo_class or MBMPO)
        for name, (default, _) in TRAINING_DEFAULTS.items():
            setattr(self, name, default)
        self.gamma = 0.99
        self.lr = 1e-3  # Adam of the Learner (used by the PPO outer step's state only)
        # The env runners sample with the module's Gaussian and let RLlib clip to the box;
        # actions are not rescaled (the models and reward functions see env-space actions).
        self.normalize_actions = False
        self.clip_actions = True
        self.batch_mode = "truncate_episodes"
        self.num_env_runners = 0
        self.model_env_id: str | None = None

    @override(AlgorithmConfig)
    def training(self, **kwargs) -> MBMPOConfig:
        """Set MB-MPO settings (see ``TRAINING_DEFAULTS``) and RLlib's common ones (``gamma``)."""
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k in TRAINING_DEFAULTS}
        super().training(**kwargs)
        for name, value in ours.items():
            if value is not NotProvided:
                setattr(self, name, tuple(value) if name.endswith("_sizes") else value)
        return self

    @override(AlgorithmConfig)
    def update_from_dict(self, config_dict: dict[str, Any]) -> MBMPOConfig:
        """RLlib's ``update_from_dict``; a ``mbmpo_point`` entry (a dict of settings swept
        jointly by Tune, e.g. ensemble_size with num_tasks) is expanded first."""
        config_dict = dict(config_dict)
        config_dict.update(config_dict.pop("mbmpo_point", None) or {})
        return super().update_from_dict(config_dict)

    @property
    def fit_config(self) -> FitConfig:
        """The ensemble fitting settings as a :class:`~mbmpo_ray.models.FitConfig`."""
        return FitConfig(
            batch_size=self.model_batch_size,
            lr=self.model_lr,
            max_epochs=self.model_max_epochs,
            patience=self.model_patience,
            holdout_ratio=self.model_holdout_ratio,
            update_normalizers=False,  # the driver fits them once on all data
        )

    @property
    def meta_config(self) -> MetaConfig:
        """The meta-policy optimisation settings as a :class:`~mbmpo_ray.meta.MetaConfig`."""
        return MetaConfig(
            num_tasks=self.num_tasks,
            alpha=self.inner_lr,
            num_inner_steps=self.num_inner_steps,
            first_order=self.first_order,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            outer_optimizer=self.outer_optimizer,
            max_kl=self.max_kl,
            cg_iters=self.cg_iters,
            cg_damping=self.cg_damping,
            hvp_subsample=self.hvp_subsample,
            ppo_clip=self.ppo_clip,
            ppo_epochs=self.ppo_epochs,
            ppo_lr=self.ppo_lr,
        )

    def ensemble_kwargs(self, obs_dim: int, act_dim: int) -> dict[str, Any]:
        """Constructor arguments of the :class:`~mbmpo_ray.models.DynamicsEnsemble`."""
        return dict(
            obs_dim=obs_dim,
            act_dim=act_dim,
            ensemble_size=self.ensemble_size,
            hidden_sizes=tuple(self.model_hidden_sizes),
            activation=self.model_activation,
            probabilistic=self.probabilistic_model,
            num_elites=self.num_elites,
        )

    @override(AlgorithmConfig)
    def validate(self) -> None:
        """Check MB-MPO settings and point the env runners at the model-consistent env.

        Raises ValueError with a message saying what to change.
        """
        super().validate()
        self._validate_mbmpo()
        env_id = self.model_env_id or self.env
        if not isinstance(env_id, str):
            raise ValueError(
                "MBMPO needs a registered env id string, e.g. "
                "MBMPOConfig().environment('Pendulum-v1'); got env="
                f"{self.env!r}. For your own env, gym-register it and call "
                "mbmpo_ray.envs.register_model_functions(env_id, reward_fn, termination_fn)."
            )
        try:
            get_env_spec(env_id)
        except UnsupportedEnvError as e:
            raise ValueError(f"MBMPO needs model reward/termination functions: {e}") from e
        self.model_env_id = env_id
        # (Re-)register in every process that validates (e.g. one restoring a checkpoint).
        self.env = f"{ENV_PREFIX}{env_id}/H{self.horizon}"
        register_env(
            self.env, functools.partial(_make_model_env, env_id=env_id, horizon=self.horizon)
        )

    @override(AlgorithmConfig)
    def environment(self, env=NotProvided, **kwargs) -> MBMPOConfig:
        """RLlib's ``environment()``; ``env`` is a gymnasium id with model functions."""
        if env is not NotProvided:
            self.model_env_id = None
        super().environment(env=env, **kwargs)
        return self

    def _validate_mbmpo(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"MBMPOConfig: {msg}")

        if self.ensemble_size < 1:
            fail(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.num_tasks < 1 or self.num_tasks % self.ensemble_size:
            fail(
                f"num_tasks={self.num_tasks} must be a positive multiple of ensemble_size="
                f"{self.ensemble_size} so every model is used equally; e.g. .training(num_tasks="
                f"{self.ensemble_size * max(1, round(self.num_tasks / self.ensemble_size))})"
            )
        if self.inner_lr < 0:
            fail(f"inner_lr (alpha) must be >= 0 (0 is the ME-TRPO ablation), got {self.inner_lr}")
        if self.horizon < 1:
            fail(f"horizon must be >= 1, got {self.horizon}")
        for name in ("rollouts_per_task", "meta_steps_per_iter", "real_steps_per_iter",
                     "model_batch_size", "buffer_capacity"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.initial_random_steps < 0 or self.num_model_trainers < 0:
            fail("initial_random_steps and num_model_trainers must be >= 0")
        if self.num_model_trainers > self.ensemble_size:
            fail(
                f"num_model_trainers={self.num_model_trainers} > ensemble_size="
                f"{self.ensemble_size}: each trainer fits at least one member; lower it"
            )
        if self.eval_episodes_per_iter < 0:
            fail("eval_episodes_per_iter must be >= 0")
        if self.imagine_from not in ("reset", "buffer"):
            fail(f"imagine_from must be 'reset' or 'buffer', got {self.imagine_from!r}")
        if self.imagine_clip_margin is not None and not self.imagine_clip_margin >= 0:
            fail(f"imagine_clip_margin must be >= 0 or None, got {self.imagine_clip_margin}")
        if self.num_start_states < 1:
            fail(f"num_start_states must be >= 1, got {self.num_start_states}")
        if self.num_learners > 1:
            fail("MBMPO runs its meta-learner on one Learner: use .learners(num_learners=0 or 1)")
        try:
            self.meta_config.validate()
            self.fit_config  # noqa: B018 (FitConfig validates in __post_init__)
        except ValueError as e:
            fail(str(e))

    def validate_spaces(self, obs_space: gym.Space, act_space: gym.Space) -> None:
        """Reject spaces MB-MPO does not support, saying why."""
        if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
            raise ValueError(
                f"MBMPO supports continuous (1-D Box) action spaces only, got {act_space}; "
                "the dynamics models and the Gaussian policy need real-valued actions."
            )
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"MBMPO needs a flat Box observation space, got {obs_space}")

    @property
    @override(AlgorithmConfig)
    def _model_config_auto_includes(self) -> dict[str, Any]:
        spec = get_env_spec(self.model_env_id) if self.model_env_id else None
        return {
            "mbmpo_policy_hidden_sizes": tuple(self.policy_hidden_sizes),
            "mbmpo_policy_activation": self.policy_activation,
            "mbmpo_init_log_std": self.init_log_std,
            "mbmpo_policy_obs_start": spec.policy_obs_start if spec else 0,
            "mbmpo_seed": self.seed or 0,
        }

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from mbmpo_ray.algorithm.rl_module import MBMPOTorchRLModule

        return RLModuleSpec(module_class=MBMPOTorchRLModule)

    @override(AlgorithmConfig)
    def get_default_learner_class(self):
        from mbmpo_ray.algorithm.learner import MBMPOTorchLearner

        return MBMPOTorchLearner
