"""The configuration both model-based algorithms share (RLlib glue).

Every setting is declared ONCE, as a :class:`~mbmpo_ray.settings.Declared` (default, one-line
doc, :class:`~mbmpo_ray.settings.Rule`):

- the ensemble-fitting settings by the fields of :class:`~mbmpo_ray.models.FitConfig`;
- the other shared settings (real data, ensemble, model trainers, evaluation) in
  :data:`SHARED` here;
- each algorithm's own settings in its config module (``OWN``).

A config's ``__init__`` takes every default from those declarations (``DEFAULTS`` of an
algorithm config names the few shared settings whose paper default differs, e.g. MBPO's
7-member ensemble); ``validate()`` checks every value against its rule; ``setting_docs()``
gives the ``--list-settings`` lines; ``training()`` assigns each keyword explicitly, as RLlib's
own configs do (the fit settings here, the other shared ones in
:meth:`ModelBasedConfig.training`, the algorithm's own in the algorithm's config).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, ClassVar

import gymnasium as gym
from ray._common.deprecation import DEPRECATED_VALUE
from ray.rllib.algorithms.algorithm_config import NotProvided

from mbmpo_ray import settings
from mbmpo_ray.envs import EnvCreator, EnvSpec, UnsupportedEnvError, get_env_spec
from mbmpo_ray.models import FitConfig
from mbmpo_ray.models.ensemble import ACTIVATIONS as MODEL_ACTIVATIONS
from mbmpo_ray.settings import Declared, Rule

_POSITIVE = Rule(int, low=1)
_NON_NEGATIVE = Rule(int, low=0)
_SECONDS = Rule(float, low=0, open_low=True)

# FitConfig fields an algorithm config exposes (the rest are fixed by the algorithm glue).
FIT_SETTINGS = ("model_batch_size", "model_lr", "model_weight_decay", "model_max_epochs",
                "model_patience", "model_holdout_ratio", "model_max_holdout",
                "model_holdout_split", "model_improvement_threshold", "model_fit_steps",
                "model_check_steps", "model_new_data_fraction", "model_val_space",
                "model_precision")

SHARED: dict[str, Declared] = {
    # real data
    "initial_random_steps": Declared(5000, "real env steps with uniform random actions before "
                                     "the first model fit", _NON_NEGATIVE),
    "buffer_capacity": Declared(1_000_000, "capacity of the real transition buffer (FIFO)",
                                _POSITIVE),
    "max_abs_real_value": Declared(
        1e8, "real transitions with a value above this magnitude (an exploding env) are "
        "dropped like non-finite ones, and counted (None: keep every finite value)",
        Rule(float, low=0, open_low=True, optional=True)),
    # dynamics ensemble
    "ensemble_size": Declared(5, "K, dynamics models in the ensemble", _POSITIVE),
    "model_hidden_sizes": Declared((512, 512), "hidden layer sizes of every ensemble member",
                                   Rule(tuple)),
    "model_activation": Declared("relu", "activation of the ensemble members",
                                 Rule(str, choices=tuple(sorted(MODEL_ACTIVATIONS)))),
    "num_model_trainers": Declared(0, "Ray actors fitting the members in parallel (0: on the "
                                   "driver)", _NON_NEGATIVE),
    "num_cpus_per_model_trainer": Declared(1, "CPUs reserved by each model trainer",
                                           Rule(float, low=0)),
    "model_device": Declared("cpu", "where the driver fits the ensemble: 'cuda' fits on this "
                             "machine's GPU (needs num_model_trainers=0)",
                             Rule(str, choices=("cpu", "cuda"))),
    # model rollouts
    "deterministic_model_rollouts": Declared(True, "roll the models out with each member's "
                                             "mean prediction instead of a sample of its "
                                             "Gaussian", Rule(bool)),
    "imagine_clip_margin": Declared(
        1.0, "model states and state changes are clipped to their real-data range widened by "
        "this many widths per side (None: no clipping)", Rule(float, low=0, optional=True)),
    # the Learner
    "learner_torch_threads": Declared(None, "torch threads of the Learner (None: the CPUs "
                                      "reserved for it, see learner_threads())",
                                      Rule(int, low=1, optional=True)),
    # evaluation
    "eval_episodes_per_iter": Declared(5, "real evaluation episodes per iteration, on the env "
                                       "runners' separate evaluation envs", _NON_NEGATIVE),
    "eval_explore": Declared(True, "evaluate the stochastic policy as sampled in training "
                             "(False: its mean action)", Rule(bool)),
}

# RLlib's own settings both algorithms rely on (set with .env_runners(), .learners(),
# .debugging(), .fault_tolerance(), or the CLI's --seed / --num-env-runners): checked before
# RLlib's own checks, so a wrong type or value gets one clear line.
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


FIT_DECLARED = settings.declared_from(FitConfig, FIT_SETTINGS)


class ModelBasedConfig:
    """Mixin for an RLlib ``AlgorithmConfig`` of a model-based algorithm of this project.

    Subclasses set ``ALGO_NAME`` (``'mbmpo'``/``'mbpo'``), ``DISPLAY_NAME``, ``OWN`` (their
    own declared settings), ``DEFAULTS`` (shared settings whose default differs) and
    ``TUPLE_SETTINGS``; they call :meth:`_init_declared` in ``__init__``.
    """

    ALGO_NAME: ClassVar[str] = ""
    DISPLAY_NAME: ClassVar[str] = ""
    OWN: ClassVar[dict[str, Declared]] = {}
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    TUPLE_SETTINGS: ClassVar[tuple[str, ...]] = ("model_hidden_sizes",)
    # actions must be bounded (SAC's squashed Gaussian) or may be unbounded
    BOUNDED_ACTIONS: ClassVar[bool] = False

    @classmethod
    def declarations(cls) -> dict[str, Declared]:
        """Every setting of ``training()`` this project declares: shared, fit, own."""
        return {**SHARED, **FIT_DECLARED, **cls.OWN}

    @classmethod
    def setting_docs(cls) -> dict[str, str]:
        """``name -> one-line doc`` of every setting (``--list-settings``)."""
        return {name: d.doc for name, d in cls.declarations().items()}

    def _init_declared(self) -> None:
        """Every declared setting at its default (``DEFAULTS`` overriding shared ones)."""
        for name, d in self.declarations().items():
            self.__dict__[name] = self.DEFAULTS.get(name, d.default)

    def training(
        self, *,
        initial_random_steps: int = NotProvided, buffer_capacity: int = NotProvided,
        max_abs_real_value: float | None = NotProvided, ensemble_size: int = NotProvided,
        model_hidden_sizes: tuple[int, ...] = NotProvided, model_activation: str = NotProvided,
        num_model_trainers: int = NotProvided, num_cpus_per_model_trainer: float = NotProvided,
        model_device: str = NotProvided, deterministic_model_rollouts: bool = NotProvided,
        imagine_clip_margin: float | None = NotProvided,
        learner_torch_threads: int | None = NotProvided,
        eval_episodes_per_iter: int = NotProvided, eval_explore: bool = NotProvided,
        **kwargs,
    ):
        """The shared settings of :data:`SHARED` (docs: :meth:`setting_docs`), then the fit
        settings and RLlib's own (``gamma``, ...) further up the MRO."""
        super().training(**kwargs)
        if initial_random_steps is not NotProvided:
            self.initial_random_steps = initial_random_steps
        if buffer_capacity is not NotProvided:
            self.buffer_capacity = buffer_capacity
        if max_abs_real_value is not NotProvided:
            self.max_abs_real_value = max_abs_real_value
        if ensemble_size is not NotProvided:
            self.ensemble_size = ensemble_size
        if model_hidden_sizes is not NotProvided:
            self.model_hidden_sizes = _tuple(model_hidden_sizes)
        if model_activation is not NotProvided:
            self.model_activation = model_activation
        if num_model_trainers is not NotProvided:
            self.num_model_trainers = num_model_trainers
        if num_cpus_per_model_trainer is not NotProvided:
            self.num_cpus_per_model_trainer = num_cpus_per_model_trainer
        if model_device is not NotProvided:
            self.model_device = model_device
        if deterministic_model_rollouts is not NotProvided:
            self.deterministic_model_rollouts = deterministic_model_rollouts
        if imagine_clip_margin is not NotProvided:
            self.imagine_clip_margin = imagine_clip_margin
        if learner_torch_threads is not NotProvided:
            self.learner_torch_threads = learner_torch_threads
        if eval_episodes_per_iter is not NotProvided:
            self.eval_episodes_per_iter = eval_episodes_per_iter
        if eval_explore is not NotProvided:
            self.eval_explore = eval_explore
        return self

    # ------------------------------------------------------------------ derived settings
    @property
    def fit_config(self) -> FitConfig:
        """The ensemble-fitting settings (the driver fits the normalisers)."""
        return FitConfig(
            model_batch_size=self.model_batch_size, model_lr=self.model_lr,
            model_weight_decay=self.model_weight_decay, model_max_epochs=self.model_max_epochs,
            model_patience=self.model_patience, model_holdout_ratio=self.model_holdout_ratio,
            model_max_holdout=self.model_max_holdout,
            model_holdout_split=self.model_holdout_split,
            model_improvement_threshold=self.model_improvement_threshold,
            model_fit_steps=self.model_fit_steps, model_check_steps=self.model_check_steps,
            model_new_data_fraction=self.model_new_data_fraction,
            model_val_space=self.model_val_space, model_precision=self.model_precision,
            update_normalizers=False)

    def elites(self) -> int | None:
        """Members the ensemble keeps as elites (None: all)."""
        return None

    def fingerprint(self) -> str:
        """A short hash of the env id and every declared setting: checkpoints record it."""
        values = {name: getattr(self, name) for name in sorted(self.declarations())}
        values["env"] = self.model_env_id
        text = json.dumps(values, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every setting (types, values, combinations) before RLlib's own checks, which
        assume well-typed values; side-effect free.

        Raises:
            ValueError: one line per problem, saying what each setting accepts.
        """
        settings.raise_if(self.problems(), type(self).__name__)
        super().validate()

    def problems(self) -> list[str]:
        """Every invalid setting or combination, one line each (empty: valid)."""
        return self.shared_problems()

    def shared_problems(self) -> list[str]:
        """Every declared setting its rule rejects, RLlib settings we rely on, the env and
        the combinations both algorithms share; one line each."""
        rules = {name: d.rule for name, d in self.declarations().items()}
        found = settings.problems(self, rules) + settings.problems(self, RLLIB_RULES)
        cpus = self.num_cpus_per_learner
        if not (cpus == "auto" or Rule(float, low=0).accepts(cpus)):
            found.append(f"num_cpus_per_learner must be a number >= 0 or 'auto', got {cpus!r}")
        found += self.env_problems()
        if found:
            return found
        found += self.device_problems()
        if self.num_model_trainers > self.ensemble_size:
            found.append(f"num_model_trainers={self.num_model_trainers} > ensemble_size="
                         f"{self.ensemble_size}: each trainer fits at least one member; lower "
                         "it")
        return found

    def validate_spaces(self, obs_space: gym.Space, act_space: gym.Space) -> None:
        """Reject spaces the algorithm does not support, saying why."""
        box = isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1
        if not box or (self.BOUNDED_ACTIONS and not act_space.is_bounded()):
            kind = "bounded continuous" if self.BOUNDED_ACTIONS else "continuous"
            raise ValueError(
                f"{self.DISPLAY_NAME} supports {kind} (1-D Box) action spaces only, got "
                f"{act_space}; the dynamics models and the policy need real-valued actions.")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"{self.DISPLAY_NAME} needs a flat Box observation space, got "
                             f"{obs_space}")

    def env_problems(self) -> list[str]:
        """One line if the env is not an id with registered model functions, else none."""
        if not isinstance(self.model_env_id, str):
            return [f"{self.DISPLAY_NAME} needs a gymnasium env id string, e.g. .environment("
                    f"'Pendulum-v1'); got env={self.env!r}. For your own env, gym-register it "
                    "and call mbmpo_ray.envs.register_model_functions(env_id, reward_fn, "
                    "termination_fn)"]
        try:
            self.env_spec()
        except UnsupportedEnvError as e:
            return [f"{self.DISPLAY_NAME} needs model reward/termination functions: {e}"]
        return []

    def device_problems(self) -> list[str]:
        """Why the GPU settings cannot work here: ``model_device='cuda'`` (fits on the driver's
        GPU) or a local GPU Learner on a machine where torch sees no CUDA device."""
        import torch

        found = []
        if self.model_device == "cuda" and self.num_model_trainers:
            found.append(f"model_device='cuda' fits the ensemble on the driver's GPU: set "
                         f"num_model_trainers=0 (got {self.num_model_trainers})")
        if torch.cuda.is_available():
            return found
        if self.model_device == "cuda":
            found.append("model_device='cuda' but torch sees no CUDA device on this machine "
                         "(the driver fits the ensemble); use model_device='cpu'")
        if self.num_learners == 0 and self.num_gpus_per_learner > 0:
            found.append(f"num_gpus_per_learner={self.num_gpus_per_learner} with a local "
                         "Learner (num_learners=0) needs a CUDA device on this machine, and "
                         "torch sees none: set num_gpus_per_learner=0, or num_learners=1 to "
                         "place the Learner on a GPU node of the cluster")
        return found

    # ------------------------------------------------------------------ the env
    @property
    def model_env_id(self) -> str | None:
        """The gymnasium id of the env (``config.env`` is the id or, inside a built algorithm,
        an :class:`~mbmpo_ray.envs.EnvCreator` carrying its spec)."""
        return self.env.spec.env_id if isinstance(self.env, EnvCreator) else self.env

    def env_spec(self) -> EnvSpec:
        """The env's model functions: carried by the env creator, else looked up by id."""
        if isinstance(self.env, EnvCreator):
            return self.env.spec
        return get_env_spec(self.env)

    def env_creator(self) -> EnvCreator:
        """A picklable env creator carrying the spec, so every actor builds the env (and the
        Learner computes model rewards) without the registry of this process."""
        return EnvCreator(self.env_spec(), self.horizon)

    # ------------------------------------------------------------------ RLlib plumbing
    def update_from_dict(self, config_dict: dict[str, Any]):
        """RLlib's ``update_from_dict``; a ``mbmpo_point`` entry (a dict of settings swept
        jointly by Tune, e.g. ensemble_size with num_tasks) is expanded first and kept as the
        ``mbmpo_point`` attribute, so the trial's results show the point it ran."""
        config_dict = dict(config_dict)
        point = config_dict.pop("mbmpo_point", None) or {}
        config_dict.update(point)
        for name in self.TUPLE_SETTINGS:
            if isinstance(config_dict.get(name), list):
                config_dict[name] = tuple(config_dict[name])
        super().update_from_dict(config_dict)
        if point:
            self.mbmpo_point = dict(point)
        return self

    def get_state(self) -> dict[str, Any]:
        """RLlib's ``get_state``, with the settings it wrongly leaves out put back.

        RLlib drops every attribute equal to ``DEPRECATED_VALUE`` (-1), its placeholder for
        retired settings, and ``build_algo()`` and checkpoint restores rebuild the config from
        this state: a real setting of -1 (Hopper's reference ``target_entropy=-1.0``) silently
        fell back to its default ('auto', -3 there). Only the attributes whose default is that
        placeholder stay out."""
        state = super().get_state()
        placeholders = _placeholder_names(type(self))
        for name, value in self.__dict__.items():
            if (name not in state and name not in placeholders
                    and name not in ("algo_class", "_is_frozen")):
                state[name] = value
        return state


class FitSettingsConfig:
    """Mixin: the ensemble-fitting keywords of ``training()`` (declared by
    :class:`~mbmpo_ray.models.FitConfig`), below :class:`ModelBasedConfig` in the MRO."""

    def training(
        self, *,
        model_batch_size: int = NotProvided, model_lr: float = NotProvided,
        model_weight_decay: float = NotProvided, model_max_epochs: int = NotProvided,
        model_patience: int = NotProvided, model_holdout_ratio: float = NotProvided,
        model_max_holdout: int = NotProvided, model_holdout_split: str = NotProvided,
        model_improvement_threshold: float = NotProvided, model_fit_steps: int = NotProvided,
        model_check_steps: int = NotProvided, model_new_data_fraction: float = NotProvided,
        model_val_space: str = NotProvided, model_precision: str = NotProvided,
        **kwargs,
    ):
        """The fit settings (docs: ``FitConfig``), then RLlib's own further up the MRO."""
        super().training(**kwargs)
        if model_batch_size is not NotProvided:
            self.model_batch_size = model_batch_size
        if model_lr is not NotProvided:
            self.model_lr = model_lr
        if model_weight_decay is not NotProvided:
            self.model_weight_decay = model_weight_decay
        if model_max_epochs is not NotProvided:
            self.model_max_epochs = model_max_epochs
        if model_patience is not NotProvided:
            self.model_patience = model_patience
        if model_holdout_ratio is not NotProvided:
            self.model_holdout_ratio = model_holdout_ratio
        if model_max_holdout is not NotProvided:
            self.model_max_holdout = model_max_holdout
        if model_holdout_split is not NotProvided:
            self.model_holdout_split = model_holdout_split
        if model_improvement_threshold is not NotProvided:
            self.model_improvement_threshold = model_improvement_threshold
        if model_fit_steps is not NotProvided:
            self.model_fit_steps = model_fit_steps
        if model_check_steps is not NotProvided:
            self.model_check_steps = model_check_steps
        if model_new_data_fraction is not NotProvided:
            self.model_new_data_fraction = model_new_data_fraction
        if model_val_space is not NotProvided:
            self.model_val_space = model_val_space
        if model_precision is not NotProvided:
            self.model_precision = model_precision
        return self


def _tuple(value: Any) -> Any:
    """Lists (from JSON, Tune, the CLI) as tuples; anything else unchanged."""
    return tuple(value) if isinstance(value, list) else value


@functools.cache
def _placeholder_names(config_cls: type) -> frozenset[str]:
    """Attributes of a fresh ``config_cls()`` that hold RLlib's ``DEPRECATED_VALUE``."""
    return frozenset(name for name, value in config_cls().__dict__.items()
                     if isinstance(value, int) and value == DEPRECATED_VALUE)
