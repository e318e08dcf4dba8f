"""MBMPO: the RLlib Algorithm orchestrating one MB-MPO iteration per ``training_step``."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from mbmpo_ray.algorithm.common import ModelBasedAlgorithmMixin
from mbmpo_ray.algorithm.fitting import EnsembleFitter
from mbmpo_ray.algorithm.mbmpo.config import MBMPOConfig
from mbmpo_ray.algorithm.sampling import RealSampler, iteration_seed, job_seed
from mbmpo_ray.buffer import TransitionBuffer
from mbmpo_ray.imagination import StateBounds

MBMPO_STATE = "mbmpo"
logger = logging.getLogger(__name__)


def new_counters() -> dict[str, int]:
    """MB-MPO's own counters (part of every checkpoint)."""
    return {"iterations": 0, "real_steps": 0, "imagined_steps": 0, "eval_steps": 0,
            "dropped_transitions": 0}
_LAST = {"reduce": "mean", "window": 1}  # phase timers report this iteration's seconds


class MBMPO(ModelBasedAlgorithmMixin, Algorithm):
    """Model-Based Meta-Policy Optimization (Clavera et al. 2018) as an RLlib Algorithm.

    One ``train()`` call is one paper iteration, five timed calls (see ``training_step``):
    real sampling on the EnvRunnerGroup (:mod:`~mbmpo_ray.algorithm.sampling`), the buffer
    (:mod:`~mbmpo_ray.buffer`), ensemble fitting (:class:`~mbmpo_ray.algorithm.fitting.
    EnsembleFitter`), the meta update on the Learner (:mod:`~mbmpo_ray.algorithm.mbmpo.learner`,
    which loops :func:`~mbmpo_ray.meta.meta_step` over :class:`~mbmpo_ray.imagination.
    ImaginationSampler` batches), then weight sync and a real-env evaluation of the pre-update
    policy. The buffer, the ensemble, its optimiser states and the adapted policies are part of
    every checkpoint.
    """

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> MBMPOConfig:
        return MBMPOConfig()

    @override(Algorithm)
    def setup(self, config: MBMPOConfig) -> None:
        # Every actor builds the env from a creator that carries the env's model functions.
        env = self._use_env_creator()
        super().setup(self.config)
        cfg = self.config
        self.env_spec = cfg.env_spec()
        cfg.validate_spaces(env.observation_space, env.action_space)
        obs_dim, act_dim = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
        self._act_low = env.action_space.low.astype(np.float32)
        self._act_high = env.action_space.high.astype(np.float32)
        self._reset_env = env  # draws the initial states imagined rollouts start from

        self.buffer = TransitionBuffer(obs_dim, act_dim, cfg.buffer_capacity)
        torch.manual_seed(cfg.seed or 0)
        # fault handling: a model trainer that does not answer a ping within RLlib's health
        # probe timeout is given up (its members are fitted here); the sampler waits at most
        # env_runner_restore_timeout_s for restarted env runners, sample_timeout_s per job
        self.fitter = EnsembleFitter(cfg.ensemble_kwargs(obs_dim, act_dim), cfg.fit_config,
                                     cfg.num_model_trainers, cfg.num_cpus_per_model_trainer,
                                     probe_timeout_s=cfg.env_runner_health_probe_timeout_s,
                                     device=cfg.model_device)
        self.sampler = RealSampler(self.env_runner_group, self.restore_env_runners,
                                   self._act_low, self._act_high,
                                   restore_timeout_s=cfg.env_runner_restore_timeout_s,
                                   call_timeout_s=cfg.sample_timeout_s)
        self._adapted_params: list[dict[str, np.ndarray]] | None = None
        # MB-MPO's own counters (RLlib keeps its own in self._counters)
        self.mbmpo_counters = new_counters()

    # ------------------------------------------------------------------ one paper iteration
    @override(Algorithm)
    def training_step(self) -> None:
        """One MB-MPO iteration: sample, store, fit, meta update, sync and evaluate."""
        seed = iteration_seed(self.config.seed, self.mbmpo_counters["iterations"])
        with self.metrics.log_time((TIMERS, "sample_real"), **_LAST):
            new = self._sample_real()
        dropped = self._store(new)
        data = {**self.buffer.all(), "row_ids": self.buffer.row_ids()}
        with self.metrics.log_time((TIMERS, "fit_models"), **_LAST):
            fit = self.fitter.fit(data, seed)
        with self.metrics.log_time((TIMERS, "meta_update"), **_LAST):
            meta = self._meta_update(data, seed)
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True)
        with self.metrics.log_time((TIMERS, "evaluate_real"), **_LAST):
            ev = self._evaluate_pre_update(self.config.eval_episodes_per_iter)
            # theta'_k of this iteration's theta, so each result reports one policy pair
            post = self._evaluate_adapted(self.config.eval_episodes_per_iter)
        self.mbmpo_counters["iterations"] += 1
        self._log_iteration(new, fit, meta, ev, post)
        self._log_faults(dropped, fit, meta)

    # ------------------------------------------------------------------ phases
    def _sample_real(self) -> dict[str, Any]:
        """Random actions until ``initial_random_steps``, else the K adapted policies."""
        cfg = self.config
        K = cfg.ensemble_size
        random = len(self.buffer) == 0 and cfg.initial_random_steps > 0
        if random:
            # K jobs, like the adapted policies: the jobs (so the data) never depend on how
            # many env runners there are or which are up
            n_jobs = K
            kwargs = {"num_timesteps": math.ceil(cfg.initial_random_steps / n_jobs),
                      "random_actions": True}
            jobs = [(j, None, kwargs, self._job_seed(j)) for j in range(n_jobs)]
        else:
            # theta itself (not "whatever the runner holds": a restarted runner holds the
            # initial weights) until there are adapted policies
            params = self._adapted_params or [self._theta()] * K
            kwargs = {"num_timesteps": math.ceil(cfg.real_steps_per_iter / K), "explore": True}
            jobs = [(k, params[k], kwargs, self._job_seed(k)) for k in range(K)]
        out = self.sampler.run(jobs)
        out["random"] = random
        self.mbmpo_counters["real_steps"] += len(out["reward"])
        return out

    def _store(self, new: dict[str, Any]) -> int:
        """Add the new transitions to the buffer, dropping (and counting) rows with
        non-finite or exploding values; returns how many were dropped."""
        cfg = self.config
        dropped = self.buffer.add(new["obs"], new["act"], new["next_obs"], new["reward"],
                                  new["done"], drop_invalid=True, max_abs=cfg.max_abs_real_value)
        if dropped:
            self.mbmpo_counters["dropped_transitions"] += dropped
            logger.warning(
                "dropped %d of %d new real transitions with non-finite values or values above "
                "max_abs_real_value=%g; check the environment (%d dropped so far)",
                dropped, len(new["reward"]), cfg.max_abs_real_value or math.inf,
                self.mbmpo_counters["dropped_transitions"])
        if len(self.buffer) == 0:
            raise RuntimeError(
                f"all {self.mbmpo_counters['real_steps']} real transitions sampled so far had "
                "non-finite values or values above max_abs_real_value="
                f"{cfg.max_abs_real_value}: the environment {self.env_spec.env_id!r} returns "
                "no usable data")
        return dropped

    def _theta(self) -> dict[str, np.ndarray]:
        """The pre-update policy parameters theta, from the Learner."""
        res = self.learner_group.foreach_learner(
            lambda learner: {k: v.cpu().numpy() for k, v in
                             learner.module[DEFAULT_MODULE_ID].policy_params().items()})
        return next(iter(res)).get()

    def _log_faults(self, dropped: int, fit: dict[str, float], meta: dict[str, float]) -> None:
        """Data-health and fault results: dropped transitions, divergence flags, retries."""
        log = self.metrics.log_value
        for key, value in (
            ("num_dropped_transitions", dropped),
            ("num_dropped_transitions_lifetime", self.mbmpo_counters["dropped_transitions"]),
            ("model_diverged", fit.get("diverged", 0.0)),
            ("imagination_diverged", meta.get("diverged", 0.0)),
            ("num_sampling_retries_lifetime", self.sampler.num_retried_jobs),
            ("num_model_trainer_fallbacks_lifetime", self.fitter.num_driver_fallbacks),
        ):
            log(key, value, reduce=None, window=1)

    def _meta_update(self, data: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
        """The meta phase on the Learner: ``meta_steps_per_iter`` meta steps in imagination
        started from real states, then the K adapted policies for the next real sampling."""
        cfg = self.config
        bounds = None
        if cfg.imagine_clip_margin is not None:
            bounds = StateBounds.from_transitions(data["obs"], data["next_obs"],
                                                  cfg.imagine_clip_margin)
        res = self.learner_group.foreach_learner(
            lambda learner, **kw: learner.meta_update(**kw),
            ensemble_kwargs=self.fitter.ensemble_kwargs,
            ensemble_state=ray.put(self.fitter.ensemble_state()),
            start_obs=ray.put(self._start_states(data["obs"], seed)),
            env_spec=self.env_spec,
            bounds=bounds,
            action_low=self._act_low,
            action_high=self._act_high,
            seed=seed,
            max_abs_return=cfg.max_abs_imagined_return,
        )
        meta = next(iter(res)).get()
        self._adapted_params = meta["adapted_params"]
        if meta.get("diverged"):
            logger.warning(
                "imagination diverged in iteration %d (%s): the policy was not updated by the "
                "diverged meta step(s); the dynamics ensemble is probably broken (check the "
                "model/* results and the real data)", self.iteration + 1, meta["diverged"])
        # imaginations: (inner steps + 1) per meta step, plus the inner steps of the final
        # adaptation; each T x N rollouts of H steps (nominal: terminated rollouts stop early)
        n_imag = cfg.meta_steps_per_iter * (cfg.num_inner_steps + 1) + cfg.num_inner_steps
        self.mbmpo_counters["imagined_steps"] += (
            n_imag * cfg.num_tasks * cfg.rollouts_per_task * cfg.rollout_horizon)
        out = summarise_meta_steps(meta["history"])
        out["diverged"] = float(bool(meta.get("diverged")))
        return out

    def _start_states(self, buffer_obs: np.ndarray, seed: int) -> np.ndarray:
        """Real states imagined rollouts start from: fresh ``reset()`` observations of the real
        env (``imagine_from='reset'``; resets are not env steps) or every state in the buffer."""
        cfg = self.config
        if cfg.imagine_from == "buffer":
            return buffer_obs
        env = self._reset_env
        first, _ = env.reset(seed=seed)
        rest = [env.reset()[0] for _ in range(cfg.num_start_states - 1)]
        return np.asarray([first, *rest], dtype=np.float32)

    def _job_seed(self, job: int) -> int:
        return job_seed(self.config.seed, self.mbmpo_counters["iterations"], job)

    def _evaluate_pre_update(self, num_episodes: int,
                             explore: bool | None = None) -> dict[str, Any]:
        """Real-env episodes of the pre-update policy theta, spread over the runners
        (``explore``: sample actions as in training; None: ``eval_explore``)."""
        if num_episodes <= 0:
            return {"episode_returns": [], "episode_lengths": []}
        explore = self.config.eval_explore if explore is None else explore
        theta = self._theta()  # explicit: a restarted runner would hold the initial weights
        # one job per episode: the same episodes however many runners there are
        jobs = [(j, theta, {"num_episodes": 1, "explore": explore}, self._job_seed(1000 + j))
                for j in range(num_episodes)]
        out = self.sampler.run(jobs)
        self.mbmpo_counters["eval_steps"] += len(out["reward"])
        return out

    def _log_iteration(self, new, fit, meta_diag, ev, post) -> None:
        """This iteration's results; every key every iteration, NaN where nothing was measured
        (README "Results of train()" lists them)."""
        log = self.metrics.log_value
        n_new = len(new["reward"])
        log(NUM_ENV_STEPS_SAMPLED_LIFETIME, n_new, reduce="lifetime_sum")
        log((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), n_new, reduce="lifetime_sum")
        log((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED), n_new, window=1)
        for key in ("real_steps", "imagined_steps", "eval_steps"):
            log(f"num_{key}_lifetime", self.mbmpo_counters[key], reduce=None, window=1)
        log("buffer_size", len(self.buffer), reduce=None, window=1)
        # theta_i (after this iteration's meta update) and its adapted theta'_i, real env
        pre_mean, pre_std = _mean_std(ev["episode_returns"])
        post_mean, post_std = _mean_std(post["episode_returns"])
        # this iteration's training episodes: random actions, or theta'_{i-1} exploring
        sample_mean, sample_std = _mean_std(new["episode_returns"])
        for key, value in (
            ("episode_return_mean", pre_mean), ("episode_return_std", pre_std),
            ("episode_len_mean", _mean_std(ev["episode_lengths"])[0]),
            ("post_adaptation_return_mean", post_mean), ("post_adaptation_return_std", post_std),
            ("sample_return_mean", sample_mean), ("sample_return_std", sample_std),
            ("random_return_mean", sample_mean if new["random"] else math.nan),
            ((ENV_RUNNER_RESULTS, "episode_return_mean"), pre_mean),
            ((ENV_RUNNER_RESULTS, "num_episodes"), len(ev["episode_returns"])),
        ):
            log(key, value, window=1)
        for k, v in fit.items():
            log(("model", k), v, window=1)
        # the meta diagnostics are the Learner's, where RLlib's tools look for them
        for k, v in meta_diag.items():
            log((LEARNER_RESULTS, DEFAULT_MODULE_ID, k), v, window=1)

    def _evaluate_adapted(self, num_episodes: int,
                          explore: bool | None = None) -> dict[str, Any]:
        """Real-env episodes of the adapted policies theta'_k (``num_episodes`` spread over
        the K members), then theta back on the runners."""
        if num_episodes <= 0 or self._adapted_params is None:
            return {"episode_returns": [], "episode_lengths": []}
        K = self.config.ensemble_size
        counts = [len(c) for c in np.array_split(np.arange(num_episodes), K)]
        explore = self.config.eval_explore if explore is None else explore
        jobs = [(k, self._adapted_params[k], {"num_episodes": c, "explore": explore},
                 self._job_seed(2000 + k)) for k, c in enumerate(counts) if c]
        post = self.sampler.run(jobs)
        self.mbmpo_counters["eval_steps"] += len(post["reward"])
        self.env_runner_group.sync_weights(
            from_worker_or_learner_group=self.learner_group, inference_only=True)
        return post

    @override(Algorithm)
    def evaluate(self, *args, num_episodes: int | None = None, explore: bool | None = None,
                 **kwargs) -> dict[str, Any]:
        """Real-env returns of the pre-update policy and of the adapted policies.

        Args:
            num_episodes: episodes per policy kind (default ``eval_episodes_per_iter``, min 1);
                the adapted-policy episodes are spread over the K members.
            explore: True: actions sampled from the Gaussian policy as in training; False: its
                mean action; None: the config's ``eval_explore``.

        Returns:
            ``episode_return_mean``/``_std``/``episode_returns`` (pre-update policy theta),
            ``post_adaptation_return_mean``/``_std``/``post_adaptation_episode_returns``
            (adapted policies theta'_k of the same theta; absent before the first iteration),
            ``explore`` (the action mode used).
        """
        n = max(1, num_episodes or self.config.eval_episodes_per_iter)
        explore = self.config.eval_explore if explore is None else bool(explore)
        pre = self._evaluate_pre_update(n, explore)
        mean, std = _mean_std(pre["episode_returns"])
        out = {"episode_return_mean": mean, "episode_return_std": std,
               "episode_returns": pre["episode_returns"], "explore": explore}
        if self._adapted_params is not None:
            post = self._evaluate_adapted(n, explore)
            mean, std = _mean_std(post["episode_returns"])
            out["post_adaptation_return_mean"] = mean
            out["post_adaptation_return_std"] = std
            out["post_adaptation_episode_returns"] = post["episode_returns"]
        return out

    # ------------------------------------------------------------------ checkpointing
    @override(Algorithm)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[MBMPO_STATE] = self._data_state(self.mbmpo_counters,
                                              adapted_params=self._adapted_params)
        return state

    @override(Algorithm)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        ours = state.get(MBMPO_STATE)
        if ours is None:
            return
        self._load_data_state(ours)
        self._adapted_params = ours["adapted_params"]
        self.mbmpo_counters = {**new_counters(), **ours["counters"]}

    @override(Algorithm)
    def cleanup(self) -> None:
        self._reset_env.close()
        self.fitter.stop()
        super().cleanup()


def _mean_std(values) -> tuple[float, float]:
    """Mean and standard deviation over episodes (NaN: no episode; std NaN: only one)."""
    if len(values) == 0:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else math.nan


def summarise_meta_steps(history: list[dict[str, Any]]) -> dict[str, float]:
    """Scalar diagnostics of a run of meta steps: last value and mean over steps."""
    out: dict[str, float] = {}
    if not history:
        return out
    for key, last in history[-1].items():
        if isinstance(last, (int, float)) and not isinstance(last, bool):
            out[key] = float(last)
            # (some diagnostics, e.g. plasticity, exist only in the last step)
            out[f"{key}_mean_over_steps"] = float(np.mean([h[key] for h in history if key in h]))
        elif key.endswith("_per_task"):
            out[key.replace("_per_task", "_per_member_min")] = float(np.min(last))
    return out
