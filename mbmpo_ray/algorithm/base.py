"""The RLlib Algorithm both model-based algorithms are built on.

:class:`ModelBasedAlgorithm` owns everything MB-MPO and MBPO share: the env (built on every
actor from an :class:`~mbmpo_ray.envs.EnvCreator`), the one real buffer (invalid and exploding
rows dropped and counted), the ensemble fitter, real sampling through one
:class:`~mbmpo_ray.algorithm.sampling.RealSampler` (jobs, blocks of continuing episodes,
evaluation episodes, retries and waiting for restarted runners), the counters, timed phases,
checkpoint state that records its algorithm, and atomic, checksummed saves. MB-MPO adds its
meta update (``algorithm/mbmpo``), MBPO its model rollouts and SAC blocks (``algorithm/mbpo``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    TIMERS,
)
from ray.tune.execution.placement_groups import PlacementGroupFactory

from mbmpo_ray.algorithm import checkpoints as ck
from mbmpo_ray.algorithm.fitting import EnsembleFitter
from mbmpo_ray.algorithm.sampling import (
    RealSampler,
    evaluate_jobs,
    iteration_seed,
    job_seed,
    policy_env_action,
)
from mbmpo_ray.buffer import TransitionBuffer, invalid_rows
from mbmpo_ray.envs import EnvCreator

STATE_KEY = "model_based"
logger = logging.getLogger(__name__)


def new_counters(extra: tuple[str, ...] = ()) -> dict[str, int]:
    """The counters of a run (part of every checkpoint): ``iterations``, ``real_steps``
    (stored or dropped), ``imagined_steps`` (model transitions), ``eval_steps``,
    ``dropped_transitions`` and the algorithm's ``extra`` ones."""
    names = ("iterations", "real_steps", "imagined_steps", "eval_steps",
             "dropped_transitions", *extra)
    return dict.fromkeys(names, 0)


def mean_std(values) -> tuple[float, float]:
    """Mean and standard deviation over episodes (NaN: no episode; std NaN: only one)."""
    if len(values) == 0:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else math.nan


class ModelBasedAlgorithm(Algorithm):
    """Base of :class:`~mbmpo_ray.MBMPO` and :class:`~mbmpo_ray.MBPO` (see the module doc).

    A subclass sets ``ALGO_NAME`` / ``DISPLAY_NAME`` (as its config), ``EXTRA_COUNTERS``, and
    implements :meth:`setup_update` (its Learner side) and ``training_step``; it may add
    entries to the checkpoint state with :meth:`extra_state` / :meth:`load_extra_state`.
    """

    ALGO_NAME: ClassVar[str] = ""
    DISPLAY_NAME: ClassVar[str] = ""
    EXTRA_COUNTERS: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ setup
    @override(Algorithm)
    def setup(self, config) -> None:
        env = self._use_env_creator()  # every actor builds the env from an EnvCreator
        super().setup(self.config)
        cfg = self.config
        self.env_spec = cfg.env_spec()
        cfg.validate_spaces(env.observation_space, env.action_space)
        self.obs_dim = int(env.observation_space.shape[0])
        self.act_dim = int(env.action_space.shape[0])
        self._act_low = env.action_space.low.astype(np.float32)
        self._act_high = env.action_space.high.astype(np.float32)
        self._env = env  # the driver's env (MB-MPO draws imagined start states from resets)
        self.buffer = TransitionBuffer(self.obs_dim, self.act_dim, cfg.buffer_capacity)
        torch.manual_seed(cfg.seed or 0)
        # a model trainer that does not answer a ping within RLlib's health probe timeout is
        # given up (its members are fitted here); the sampler waits at most
        # env_runner_restore_timeout_s for restarted env runners, sample_timeout_s per job
        self.fitter = EnsembleFitter(cfg.ensemble_kwargs(self.obs_dim, self.act_dim),
                                     cfg.fit_config, cfg.num_model_trainers,
                                     cfg.num_cpus_per_model_trainer,
                                     probe_timeout_s=cfg.env_runner_health_probe_timeout_s,
                                     device=cfg.model_device, num_elites=cfg.elites())
        self.sampler = RealSampler(self.env_runner_group, self.restore_env_runners,
                                   self._act_low, self._act_high,
                                   restore_timeout_s=cfg.env_runner_restore_timeout_s,
                                   call_timeout_s=cfg.sample_timeout_s)
        self.counters = new_counters(self.EXTRA_COUNTERS)
        self.setup_update()

    def setup_update(self) -> None:
        """The algorithm's own part of ``setup`` (its Learner state, ...)."""

    def _use_env_creator(self) -> gym.Env:
        """Point this Algorithm's own config at an EnvCreator (before RLlib's ``setup``
        builds the env runners from ``self.config``) and return one env built by it."""
        self.config = self.config.copy(copy_frozen=False)
        self.config.env = self.config.env_creator()
        self.config.freeze()
        return self.config.env(self.config.env_config)

    @staticmethod
    def _get_env_id_and_creator(env_specifier, config):
        # A restored config already carries our EnvCreator (a callable, not a class).
        if isinstance(env_specifier, EnvCreator):
            return env_specifier.spec.env_id, env_specifier
        return Algorithm._get_env_id_and_creator(env_specifier, config)

    @classmethod
    @override(Algorithm)
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

    def all_learners_results(self, res, what: str) -> list[Any]:
        """The results of a ``foreach_learner`` call on every learner, in learner order.

        Raises:
            RuntimeError: a learner failed or was lost (its peers would wait in their
                collectives): says so and how to go on (resume from the last checkpoint).
        """
        want = max(1, self.config.num_learners)
        failed = [r for r in res if not r.ok]
        if failed or len(res) != want:
            why = f": {failed[0].get()!r}" if failed else ""
            raise RuntimeError(
                f"{what} got {len(res) - len(failed)} of {want} learners' results in iteration "
                f"{self.iteration + 1}{why}. A learner failed or was lost (its peers stop in "
                "their collectives): restore the run from its last checkpoint (train --resume)")
        return [r.get() for r in res]

    # ------------------------------------------------------------------ shared phases
    def timed(self, phase: str):
        """Context manager timing one phase into this iteration's ``timers/<phase>``: the
        seconds of all its runs in the iteration (MBPO samples and updates block by block)."""
        return self.metrics.log_time((TIMERS, phase), reduce="sum")

    def store(self, new: dict[str, Any]) -> dict[str, Any]:
        """Put new real transitions into the buffer, dropping (and counting, with a warning)
        rows with non-finite values or values above ``max_abs_real_value``.

        Returns the rows stored (``obs``, ``act``, ``next_obs``, ``reward``, ``done``) and
        ``dropped``, the number of rows dropped.

        Raises:
            RuntimeError: if nothing usable was ever sampled (the env returns no valid data).
        """
        cfg, c = self.config, self.counters
        c["real_steps"] += len(new["reward"])
        rows = {k: new[k] for k in ("obs", "act", "next_obs", "reward", "done")}
        bad = invalid_rows(rows, cfg.max_abs_real_value)
        dropped = int(bad.sum())
        if dropped:
            rows = {k: v[~bad] for k, v in rows.items()}
            c["dropped_transitions"] += dropped
            logger.warning(
                "dropped %d of %d new real transitions with non-finite values or values above "
                "max_abs_real_value=%g; check the environment (%d dropped so far)",
                dropped, len(new["reward"]), cfg.max_abs_real_value or math.inf,
                c["dropped_transitions"])
        self.buffer.add(rows["obs"], rows["act"], rows["next_obs"], rows["reward"],
                        rows["done"])
        if len(self.buffer) == 0 and c["real_steps"]:
            raise RuntimeError(
                f"all {c['real_steps']} real transitions sampled so far had non-finite values "
                f"or values above max_abs_real_value={cfg.max_abs_real_value}: the "
                f"environment {self.env_spec.env_id!r} returns no usable data")
        return {**rows, "dropped": dropped}

    def fit_models(self, seed: int) -> dict[str, float]:
        """Refit the ensemble on every real transition (warm start; see ``EnsembleFitter``)."""
        data = {**self.buffer.all(), "row_ids": self.buffer.row_ids()}
        return self.fitter.fit(data, seed)

    def evaluate_policies(self, num_episodes: int, explore: bool,
                          params: list[Any] | None = None, seed_offset: int = 1000
                          ) -> dict[str, Any]:
        """Real evaluation episodes on the env runners' separate evaluation envs (the
        training episodes they are in the middle of go on undisturbed): ``num_episodes`` of
        the runners' current policy (``params`` None), or spread over the policies in
        ``params``. One job per episode or policy, so the episodes never depend on how many
        runners are up."""
        if num_episodes <= 0:
            return {"episode_returns": [], "episode_lengths": []}
        kw = {"explore": bool(explore)}
        if params is None:
            jobs = [(j, None, {**kw, "num_episodes": 1}, self.job_seed(seed_offset + j))
                    for j in range(num_episodes)]
        else:
            counts = [len(c) for c in np.array_split(np.arange(num_episodes), len(params))]
            jobs = [(k, params[k], {**kw, "num_episodes": n}, self.job_seed(seed_offset + k))
                    for k, n in enumerate(counts) if n]
        out = self.sampler.run(jobs, evaluate_jobs)
        self.counters["eval_steps"] += int(sum(out["episode_lengths"]))
        return out

    def job_seed(self, job: int) -> int:
        """Seed of sampling job ``job`` of the current iteration."""
        return job_seed(self.config.seed, self.counters["iterations"], job)

    def iteration_seed(self, offset: int = 0) -> int:
        """Seed of everything random in the current iteration (plus ``offset`` iterations)."""
        return iteration_seed(self.config.seed, self.counters["iterations"] + offset)

    def policy_action(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        """The policy's env-space action for one real observation (the mean action unless
        ``explore``), e.g. to render an episode; computed with the Learner's module."""
        obs = np.asarray(obs, np.float32)
        low, high, normalized = self._act_low, self._act_high, self.config.normalize_actions
        res = self.learner_group.foreach_learner(
            lambda learner: policy_env_action(learner.module[DEFAULT_MODULE_ID], obs, explore,
                                              low, high, normalized))
        return next(iter(res)).get()

    # ------------------------------------------------------------------ results
    def log_common(self, n_new: int, fit: dict[str, float], ev: dict[str, Any],
                   sample_returns: list[float], random_returns: list[float] | None,
                   dropped: int, extra_faults: dict[str, float]) -> None:
        """The results both algorithms report every iteration (README "Results of train()";
        NaN where nothing was measured)."""
        log, c = self.metrics.log_value, self.counters
        log(NUM_ENV_STEPS_SAMPLED_LIFETIME, n_new, reduce="lifetime_sum")
        log((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), n_new, reduce="lifetime_sum")
        log((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED), n_new, window=1)
        for key in ("real_steps", "imagined_steps", "eval_steps"):
            log(f"num_{key}_lifetime", c[key], reduce=None, window=1)
        log("buffer_size", len(self.buffer), reduce=None, window=1)
        ev_mean, ev_std = mean_std(ev["episode_returns"])
        sample_mean, sample_std = mean_std(sample_returns)
        for key, value in (
            ("episode_return_mean", ev_mean), ("episode_return_std", ev_std),
            ("episode_len_mean", mean_std(ev["episode_lengths"])[0]),
            ("sample_return_mean", sample_mean), ("sample_return_std", sample_std),
            ("random_return_mean", math.nan if random_returns is None
             else mean_std(random_returns)[0]),
            ((ENV_RUNNER_RESULTS, "episode_return_mean"), ev_mean),
            ((ENV_RUNNER_RESULTS, "num_episodes"), len(ev["episode_returns"])),
        ):
            log(key, value, window=1)
        for k, v in fit.items():
            log(("model", k), v, window=1)
        for key, value in (
            ("num_dropped_transitions", dropped),
            ("num_dropped_transitions_lifetime", c["dropped_transitions"]),
            ("model_diverged", fit.get("diverged", 0.0)),
            ("num_sampling_retries_lifetime", self.sampler.num_retried_jobs),
            ("num_model_trainer_fallbacks_lifetime", self.fitter.num_driver_fallbacks),
            *extra_faults.items(),
        ):
            log(key, value, reduce=None, window=1)

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict[str, Any]:
        """The algorithm's own entries of the checkpoint state."""
        return {}

    def load_extra_state(self, ours: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`'s entries (after the buffer, fitter and counters)."""

    @override(Algorithm)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[STATE_KEY] = {"algo": self.ALGO_NAME, "buffer": self.buffer.get_state(),
                            "fitter": self.fitter.get_state(), "counters": dict(self.counters),
                            **self.extra_state()}
        return state

    @override(Algorithm)
    def set_state(self, state: dict[str, Any]) -> None:
        ours = _our_state(state)
        if ours is not None:
            self._refuse_other_algorithm(ours.get("algo"), "this checkpoint state")
        super().set_state(state)
        if ours is None:
            return
        self.buffer.set_state(ours["buffer"])
        self.fitter.set_state(ours["fitter"])
        counters = dict(ours["counters"])
        if "model_steps" in counters:  # MBPO checkpoints before the shared counters
            counters["imagined_steps"] = counters.pop("model_steps")
        self.counters = {**new_counters(self.EXTRA_COUNTERS), **counters}
        self.load_extra_state(ours)

    def write_checkpoint(self, path: str) -> str:
        """RLlib's ``save_to_path`` into ``path`` plus a manifest of every file with its size
        and SHA-256, this algorithm's name, the config fingerprint, env and counters."""
        out = super().save_to_path(path)
        ck.write_manifest(path, self.iteration, {
            "algo": self.ALGO_NAME, "env": self.config.model_env_id,
            "config_fingerprint": self.config.fingerprint(),
            "num_real_steps_lifetime": int(self.counters["real_steps"])})
        return out

    @override(Algorithm)
    def save_to_path(self, path=None, *, state=None, filesystem=None, use_msgpack=False) -> str:
        """RLlib's ``save_to_path``, made atomic for a local ``path``: the previous complete
        checkpoint there stays until the new one is whole (a kill at any moment leaves one
        of them), and every file is checksummed (:meth:`write_checkpoint`)."""
        if path is None or filesystem is not None or state is not None or use_msgpack:
            return super().save_to_path(path, state=state, filesystem=filesystem,
                                        use_msgpack=use_msgpack)
        return str(ck.save_atomically(self.write_checkpoint, path))

    @override(Algorithm)
    def restore_from_path(self, path, *, component=None, **kwargs) -> None:
        """RLlib's ``restore_from_path`` after checking the checkpoint: complete, unchanged
        since it was saved (checksums), and written by this algorithm (one clear
        ``CheckpointError`` otherwise, before anything is loaded)."""
        if component is None and kwargs.get("filesystem") is None:
            path = ck.find_checkpoint(os.fspath(path))
            ck.check_checkpoint(path)
            self._refuse_other_algorithm(ck.checkpoint_algorithm(path), f"checkpoint {path}")
        super().restore_from_path(str(path), component=component, **kwargs)

    @classmethod
    @override(Algorithm)
    def from_checkpoint(cls, path, filesystem=None, **kwargs):
        """RLlib's ``from_checkpoint``; ``MBMPO.from_checkpoint`` / ``MBPO.from_checkpoint``
        refuse the other algorithm's checkpoint (``Algorithm.from_checkpoint`` loads
        either)."""
        if filesystem is None and isinstance(path, (str, os.PathLike)):
            path = ck.find_checkpoint(path)
            ck.check_checkpoint(path)
            if cls.ALGO_NAME:
                cls._refuse_other_algorithm(ck.checkpoint_algorithm(path), f"checkpoint {path}")
            path = str(path)
        return super().from_checkpoint(path, filesystem, **kwargs)

    @classmethod
    def _refuse_other_algorithm(cls, algo: str | None, what: str) -> None:
        if algo is not None and algo != cls.ALGO_NAME:
            raise ck.CheckpointError(
                f"{what} was written by {algo.upper()}, not {cls.ALGO_NAME.upper()}: load it "
                f"with mbmpo_ray.{algo.upper()} (CLI: --algo {algo})")

    @override(Algorithm)
    def cleanup(self) -> None:
        self._env.close()
        self.fitter.stop()
        super().cleanup()


def _our_state(state: dict[str, Any]) -> dict[str, Any] | None:
    """Our entry of an Algorithm state (also from checkpoints before the shared base, which
    kept it under the algorithm's name)."""
    if STATE_KEY in state:
        return state[STATE_KEY]
    for legacy in ("mbmpo", "mbpo"):
        if legacy in state:
            return {"algo": legacy, **state[legacy]}
    return None
