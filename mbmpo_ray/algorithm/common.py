"""RLlib glue shared by both model-based algorithms: how the env reaches every actor (an
:class:`~mbmpo_ray.envs.EnvCreator` carrying the model functions) and the trial resources of
the model-trainer actors."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
from ray._common.deprecation import DEPRECATED_VALUE
from ray.rllib.algorithms.algorithm import Algorithm
from ray.tune.execution.placement_groups import PlacementGroupFactory

from mbmpo_ray.envs import EnvCreator, EnvSpec, UnsupportedEnvError, get_env_spec


class ModelEnvConfigMixin:
    """For an ``AlgorithmConfig`` with ``env`` (an id, or an EnvCreator once built) and
    ``horizon``: the env's id, its model functions and the creator the actors build it from;
    and RLlib's ``update_from_dict`` for Tune's trial configs."""

    # settings held as tuples (Tune, JSON and checkpoints hand lists back)
    TUPLE_SETTINGS: tuple[str, ...] = ()

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

    def env_problems(self, algo_name: str) -> list[str]:
        """One line if the env is not an id with registered model functions, else none."""
        if not isinstance(self.model_env_id, str):
            return [f"{algo_name} needs a gymnasium env id string, e.g. .environment("
                    f"'Pendulum-v1'); got env={self.env!r}. For your own env, gym-register it "
                    "and call mbmpo_ray.envs.register_model_functions(env_id, reward_fn, "
                    "termination_fn)"]
        try:
            self.env_spec()
        except UnsupportedEnvError as e:
            return [f"{algo_name} needs model reward/termination functions: {e}"]
        return []


@functools.cache
def _placeholder_names(config_cls: type) -> frozenset[str]:
    """Attributes of a fresh ``config_cls()`` that hold RLlib's ``DEPRECATED_VALUE``."""
    return frozenset(name for name, value in config_cls().__dict__.items()
                     if isinstance(value, int) and value == DEPRECATED_VALUE)


class ModelBasedAlgorithmMixin:
    """For an RLlib ``Algorithm`` whose config has ``num_model_trainers`` /
    ``num_cpus_per_model_trainer`` and the :class:`ModelEnvConfigMixin` methods."""

    @classmethod
    def default_resource_request(cls, config):
        """RLlib's bundles (driver, env runners, learners) plus one per model-trainer actor,
        so a Tune trial reserves everything it starts and sweeps pack onto a cluster."""
        pgf = super().default_resource_request(config)
        cfg = cls.get_default_config().update_from_dict(
            config if isinstance(config, dict) else config.to_dict())
        extra = [{"CPU": cfg.num_cpus_per_model_trainer}] * cfg.num_model_trainers
        extra = [b for b in extra if b["CPU"] > 0]
        if not extra:
            return pgf
        return PlacementGroupFactory(pgf.bundles + extra, strategy=pgf.strategy)

    @staticmethod
    def _get_env_id_and_creator(env_specifier, config):
        # A restored config already carries our EnvCreator (a callable, not a class).
        if isinstance(env_specifier, EnvCreator):
            return env_specifier.spec.env_id, env_specifier
        return Algorithm._get_env_id_and_creator(env_specifier, config)

    def _use_env_creator(self) -> gym.Env:
        """Point this Algorithm's own config at an EnvCreator (before RLlib's ``setup``
        builds the env runners from ``self.config``) and return one env built by it."""
        self.config = self.config.copy(copy_frozen=False)
        self.config.env = self.config.env_creator()
        self.config.freeze()
        return self.config.env(self.config.env_config)

    def _data_state(self, counters: dict[str, int], **extra: Any) -> dict[str, Any]:
        """What both algorithms add to RLlib's checkpoint state: the real buffer, the
        ensemble fitter (members, optimisers, normalisers, holdout) and the counters."""
        return {"buffer": self.buffer.get_state(), "fitter": self.fitter.get_state(),
                "counters": dict(counters), **extra}

    def _load_data_state(self, ours: dict[str, Any]) -> None:
        """Restore the real buffer and the fitter from :meth:`_data_state`'s dict."""
        self.buffer.set_state(ours["buffer"])
        self.fitter.set_state(ours["fitter"])
