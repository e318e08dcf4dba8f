"""MBMPO: the RLlib Algorithm orchestrating one MB-MPO iteration per ``training_step``."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    LEARNER_RESULTS,
    SYNCH_WORKER_WEIGHTS_TIMER,
)

from mbmpo_ray.algorithm.base import ModelBasedAlgorithm, mean_std
from mbmpo_ray.algorithm.mbmpo.config import MBMPOConfig
from mbmpo_ray.algorithm.mbmpo.learner import merge_learner_results
from mbmpo_ray.imagination import StateBounds

logger = logging.getLogger(__name__)


class MBMPO(ModelBasedAlgorithm):
    """Model-Based Meta-Policy Optimization (Clavera et al. 2018) as an RLlib Algorithm.

    One ``train()`` call is one paper iteration, five timed phases (see ``training_step``):
    real sampling on the EnvRunnerGroup (:mod:`~mbmpo_ray.algorithm.sampling`), the buffer
    (:mod:`~mbmpo_ray.buffer`), ensemble fitting (:class:`~mbmpo_ray.algorithm.fitting.
    EnsembleFitter`), the meta update on the Learner (:mod:`~mbmpo_ray.algorithm.mbmpo.learner`,
    which loops :func:`~mbmpo_ray.meta.meta_step` over :class:`~mbmpo_ray.imagination.
    ImaginationSampler` batches), then weight sync and a real-env evaluation of the pre-update
    policy and its adapted policies. The shared parts (env, buffer, fitter, sampler, counters,
    checkpoints) are :class:`~mbmpo_ray.algorithm.base.ModelBasedAlgorithm`'s; the adapted
    policies are part of every checkpoint too.
    """

    ALGO_NAME = MBMPOConfig.ALGO_NAME
    DISPLAY_NAME = MBMPOConfig.DISPLAY_NAME

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> MBMPOConfig:
        return MBMPOConfig()

    @override(ModelBasedAlgorithm)
    def setup_update(self) -> None:
        self._adapted_params: list[dict[str, np.ndarray]] | None = None

    # ------------------------------------------------------------------ one paper iteration
    @override(Algorithm)
    def training_step(self) -> None:
        """One MB-MPO iteration: sample, store, fit, meta update, sync and evaluate."""
        seed = self.iteration_seed()
        with self.timed("sample_real"):
            new = self._sample_real()
        stored = self.store(new)
        with self.timed("fit_models"):
            fit = self.fit_models(seed)
        with self.timed("meta_update"):
            meta = self._meta_update(seed)
        with self.timed(SYNCH_WORKER_WEIGHTS_TIMER):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True)
        with self.timed("evaluate_real"):
            ev = self._evaluate_pre_update(self.config.eval_episodes_per_iter)
            # theta'_k of this iteration's theta, so each result reports one policy pair
            post = self._evaluate_adapted(self.config.eval_episodes_per_iter)
        self.counters["iterations"] += 1
        self.log_common(len(new["reward"]), fit, ev, new["episode_returns"],
                        new["episode_returns"] if new["random"] else None, stored["dropped"],
                        {"imagination_diverged": meta.get("diverged", 0.0)})
        self._log_meta(post, meta)

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
            jobs = [(j, None, kwargs, self.job_seed(j)) for j in range(n_jobs)]
        else:
            # theta itself (not "whatever the runner holds": a restarted runner holds the
            # initial weights) until there are adapted policies
            params = self._adapted_params or [self._theta()] * K
            kwargs = {"num_timesteps": math.ceil(cfg.real_steps_per_iter / K), "explore": True}
            jobs = [(k, params[k], kwargs, self.job_seed(k)) for k in range(K)]
        out = self.sampler.run(jobs)
        out["random"] = random
        return out

    def _theta(self) -> dict[str, np.ndarray]:
        """The pre-update policy parameters theta, from the Learner."""
        res = self.learner_group.foreach_learner(
            lambda learner: {k: v.cpu().numpy() for k, v in
                             learner.module[DEFAULT_MODULE_ID].policy_params().items()})
        return next(iter(res)).get()

    def _meta_update(self, seed: int) -> dict[str, Any]:
        """The meta phase on the Learner(s): ``meta_steps_per_iter`` meta steps in imagination
        started from real states, then the K adapted policies for the next real sampling.
        With N learners each runs its share of the tasks (the ensemble and start states go
        to all through the object store) and their shares are merged in task order."""
        cfg, data = self.config, self.buffer.all()
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
        meta = merge_learner_results(self.all_learners_results(res, "the meta update"),
                                     cfg.num_tasks, cfg.ensemble_size)
        self._adapted_params = meta["adapted_params"]
        if meta.get("diverged"):
            logger.warning(
                "imagination diverged in iteration %d (%s): the policy was not updated by the "
                "diverged meta step(s); the dynamics ensemble is probably broken (check the "
                "model/* results and the real data)", self.iteration + 1, meta["diverged"])
        # imaginations: (inner steps + 1) per meta step, plus the inner steps of the final
        # adaptation; each T x N rollouts of H steps (nominal: terminated rollouts stop early)
        n_imag = cfg.meta_steps_per_iter * (cfg.num_inner_steps + 1) + cfg.num_inner_steps
        self.counters["imagined_steps"] += (
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
        env = self._env
        first, _ = env.reset(seed=seed)
        rest = [env.reset()[0] for _ in range(cfg.num_start_states - 1)]
        return np.asarray([first, *rest], dtype=np.float32)

    def _evaluate_pre_update(self, num_episodes: int,
                             explore: bool | None = None) -> dict[str, Any]:
        """Real-env episodes of the pre-update policy theta on the runners' evaluation envs
        (``explore``: sample actions as in training; None: ``eval_explore``)."""
        explore = self.config.eval_explore if explore is None else explore
        if num_episodes <= 0:
            return self.evaluate_policies(0, explore)
        # theta explicitly: a restarted runner would hold the initial weights
        return self.evaluate_policies(num_episodes, explore, [self._theta()] * num_episodes)

    def _evaluate_adapted(self, num_episodes: int,
                          explore: bool | None = None) -> dict[str, Any]:
        """Real-env episodes of the adapted policies theta'_k (``num_episodes`` spread over
        the K members)."""
        if self._adapted_params is None:
            num_episodes = 0
        explore = self.config.eval_explore if explore is None else explore
        post = self.evaluate_policies(num_episodes, explore, self._adapted_params,
                                      seed_offset=2000)
        if num_episodes > 0:  # theta back on the runners that evaluated theta'_k
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True)
        return post

    def _log_meta(self, post: dict[str, Any], meta_diag: dict[str, float]) -> None:
        """MB-MPO's own results: the adapted policies' real returns and the meta
        diagnostics (the Learner's, where RLlib's tools look for them)."""
        log = self.metrics.log_value
        post_mean, post_std = mean_std(post["episode_returns"])
        log("post_adaptation_return_mean", post_mean, window=1)
        log("post_adaptation_return_std", post_std, window=1)
        for k, v in meta_diag.items():
            log((LEARNER_RESULTS, DEFAULT_MODULE_ID, k), v, window=1)

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
        mean, std = mean_std(pre["episode_returns"])
        out = {"episode_return_mean": mean, "episode_return_std": std,
               "episode_returns": pre["episode_returns"], "explore": explore}
        if self._adapted_params is not None:
            post = self._evaluate_adapted(n, explore)
            mean, std = mean_std(post["episode_returns"])
            out["post_adaptation_return_mean"] = mean
            out["post_adaptation_return_std"] = std
            out["post_adaptation_episode_returns"] = post["episode_returns"]
        return out

    # ------------------------------------------------------------------ checkpointing
    @override(ModelBasedAlgorithm)
    def extra_state(self) -> dict[str, Any]:
        return {"adapted_params": self._adapted_params}

    @override(ModelBasedAlgorithm)
    def load_extra_state(self, ours: dict[str, Any]) -> None:
        self._adapted_params = ours.get("adapted_params")


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
