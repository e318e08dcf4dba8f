"""MBMPO: the RLlib Algorithm orchestrating one MB-MPO iteration per ``training_step``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.tune.execution.placement_groups import PlacementGroupFactory

from mbmpo_ray.algorithm.config import MBMPOConfig
from mbmpo_ray.algorithm.model_trainer import ModelTrainer, fit_members
from mbmpo_ray.buffer import TransitionBuffer
from mbmpo_ray.envs import make_env
from mbmpo_ray.imagination import StateBounds
from mbmpo_ray.models import DynamicsEnsemble

MBMPO_STATE = "mbmpo"
_TRANSITION_KEYS = ("obs", "act", "next_obs", "reward", "done")
_MAX_SAMPLE_RETRIES = 3
_LAST = {"reduce": "mean", "window": 1}  # phase timers report this iteration's seconds


def _episodes_to_arrays(episodes, act_low, act_high) -> dict[str, Any]:
    """Transitions (actions clipped as the env applied them) and finished-episode returns."""
    obs, act, nxt, rew, done, returns, lengths = [], [], [], [], [], [], []
    for ep in episodes:
        n = len(ep)
        if n == 0:
            continue
        o = np.asarray(ep.get_observations(), dtype=np.float32)
        obs.append(o[:-1])
        nxt.append(o[1:])
        act.append(np.clip(np.asarray(ep.get_actions(), np.float32), act_low, act_high))
        rew.append(np.asarray(ep.get_rewards(), np.float32))
        d = np.zeros(n, bool)
        d[-1] = ep.is_terminated
        done.append(d)
        if ep.is_done and ep.t_started == 0:
            returns.append(float(ep.get_return()))
            lengths.append(n)
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape, np.float32)  # noqa: E731
    return {
        "obs": cat(obs, (0, 0)),
        "act": cat(act, (0, 0)),
        "next_obs": cat(nxt, (0, 0)),
        "reward": cat(rew, (0,)),
        "done": cat(done, (0,)).astype(bool),
        "episode_returns": returns,
        "episode_lengths": lengths,
    }


def _run_jobs(runner, jobs, act_low, act_high):
    """On an env runner: sample each job ``(job_id, params | None, kwargs, seed)`` in turn.

    Each job reseeds the env resets, the random-action space and the policy's torch sampling,
    so a job gives the same transitions wherever and whenever it runs (a restored run continues
    exactly as the uninterrupted one would have).
    """
    out = []
    for job_id, params, kwargs, seed in jobs:
        if params is not None:
            runner.module.set_policy_params(params)
        torch.manual_seed(seed)
        runner.env.action_space.seed(seed)
        runner._seed, runner._needs_initial_reset = seed, True  # reset envs with this seed
        episodes = runner.sample(force_reset=True, **kwargs)
        out.append((job_id, _episodes_to_arrays(episodes, act_low, act_high)))
    return out


class MBMPO(Algorithm):
    """Model-Based Meta-Policy Optimization (Clavera et al. 2018) as an RLlib Algorithm.

    One ``train()`` call is one paper iteration: real sampling on the EnvRunnerGroup (random
    actions first, then the K adapted policies), ensemble fitting (on model-trainer actors or
    the driver), ``meta_steps_per_iter`` meta steps on the Learner, weight sync, and an
    evaluation of the pre-update policy on the real env. The transition buffer, the ensemble,
    its optimiser state and the adapted policies are part of every checkpoint.
    """

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> MBMPOConfig:
        return MBMPOConfig()

    @classmethod
    @override(Algorithm)
    def default_resource_request(cls, config):
        """RLlib's bundles (driver, env runners, learners) plus one per model-trainer actor,
        so a Tune trial reserves everything it starts and sweeps pack onto a cluster."""
        pgf = super().default_resource_request(config)
        cfg = cls.get_default_config().update_from_dict(
            config if isinstance(config, dict) else config.to_dict()
        )
        extra = [{"CPU": cfg.num_cpus_per_model_trainer}] * cfg.num_model_trainers
        extra = [b for b in extra if b["CPU"] > 0]
        if not extra:
            return pgf
        return PlacementGroupFactory(pgf.bundles + extra, strategy=pgf.strategy)

    @override(Algorithm)
    def setup(self, config: MBMPOConfig) -> None:
        super().setup(config)
        cfg = self.config
        env = make_env(cfg.model_env_id, horizon=cfg.horizon)
        cfg.validate_spaces(env.observation_space, env.action_space)
        self._obs_dim = int(env.observation_space.shape[0])
        self._act_dim = int(env.action_space.shape[0])
        self._act_low = env.action_space.low.astype(np.float32)
        self._act_high = env.action_space.high.astype(np.float32)
        self._reset_env = env  # draws the initial states imagined rollouts start from

        self.buffer = TransitionBuffer(self._obs_dim, self._act_dim, cfg.buffer_capacity)
        self._ensemble_kwargs = cfg.ensemble_kwargs(self._obs_dim, self._act_dim)
        torch.manual_seed(cfg.seed or 0)
        self.ensemble = DynamicsEnsemble(**self._ensemble_kwargs)
        K = cfg.ensemble_size
        self._member_groups = [
            g.tolist() for g in np.array_split(np.arange(K), max(1, cfg.num_model_trainers))
        ]
        self._model_opt_states: list[dict | None] = [None] * len(self._member_groups)
        self._trainers = [
            ModelTrainer.options(
                num_cpus=cfg.num_cpus_per_model_trainer, max_restarts=-1, max_task_retries=-1
            ).remote(cfg.num_cpus_per_model_trainer)
            for _ in range(cfg.num_model_trainers)
        ]
        self._adapted_params: list[dict[str, np.ndarray]] | None = None
        self._counters = {"iterations": 0, "real_steps": 0, "imagined_steps": 0, "eval_steps": 0}

    # ------------------------------------------------------------------ one paper iteration
    @override(Algorithm)
    def training_step(self) -> None:
        cfg = self.config
        seed = (cfg.seed or 0) * 1_000_003 + self._counters["iterations"]

        # 1-2. real data into the buffer
        with self.metrics.log_time((TIMERS, "sample_real"), **_LAST):
            new = self._sample_real()
        self.buffer.add(new["obs"], new["act"], new["next_obs"], new["reward"], new["done"])
        n_new = len(new["reward"])
        self._counters["real_steps"] += n_new

        # 3. fit the ensemble
        data = {**self.buffer.all(), "row_ids": self.buffer.row_ids()}
        with self.metrics.log_time((TIMERS, "fit_models"), **_LAST):
            fit = self._fit_ensemble(data, seed)

        # 4. meta-policy optimisation on the Learner (imagined rollouts start at real states)
        with self.metrics.log_time((TIMERS, "meta_update"), **_LAST):
            start_ref = ray.put(self._start_states(data["obs"], seed))
            bounds = None
            if cfg.imagine_clip_margin is not None:
                bounds = StateBounds.from_transitions(
                    data["obs"], data["next_obs"], cfg.imagine_clip_margin
                )
            state_ref = ray.put({k: v.cpu() for k, v in self.ensemble.state_dict().items()})
            res = self.learner_group.foreach_learner(
                lambda learner, **kw: learner.meta_update(**kw),
                ensemble_kwargs=self._ensemble_kwargs,
                ensemble_state=state_ref,
                start_obs=start_ref,
                bounds=bounds,
                action_low=self._act_low,
                action_high=self._act_high,
                num_steps=cfg.meta_steps_per_iter,
                seed=seed,
            )
            meta = next(iter(res)).get()
        self._adapted_params = meta["adapted_params"]
        # imaginations: (inner steps + 1) per meta step, plus the inner steps of the final
        # adaptation; each T x N rollouts of H steps (nominal: terminated rollouts stop early)
        n_imag = cfg.meta_steps_per_iter * (cfg.num_inner_steps + 1) + cfg.num_inner_steps
        self._counters["imagined_steps"] += (
            n_imag * cfg.num_tasks * cfg.rollouts_per_task * cfg.horizon
        )

        # 5. sync theta to the env runners
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True
            )

        # 6. real return of the pre-update policy, as the paper reports
        with self.metrics.log_time((TIMERS, "evaluate_real"), **_LAST):
            ev = self._evaluate_real(cfg.eval_episodes_per_iter)
        self._counters["iterations"] += 1
        self._log_iteration(new, fit, meta["diagnostics"], ev, n_new)

    def _log_iteration(self, new, fit, meta_diag, ev, n_new) -> None:
        log = self.metrics.log_value
        log(NUM_ENV_STEPS_SAMPLED_LIFETIME, n_new, reduce="lifetime_sum")
        log((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), n_new, reduce="lifetime_sum")
        for key in ("real_steps", "imagined_steps", "eval_steps"):
            log(f"num_{key}_lifetime", self._counters[key], reduce=None, window=1)
        log("buffer_size", len(self.buffer), reduce=None, window=1)
        if ev["episode_returns"]:
            log("episode_return_mean", float(np.mean(ev["episode_returns"])), window=1)
            log((ENV_RUNNER_RESULTS, "episode_return_mean"),
                float(np.mean(ev["episode_returns"])), window=1)
            log("episode_len_mean", float(np.mean(ev["episode_lengths"])), window=1)
        if new["episode_returns"]:
            key = "random_return_mean" if new["random"] else "post_adaptation_return_mean"
            log(key, float(np.mean(new["episode_returns"])), window=1)
        for k, v in fit.items():
            log(("model", k), v, window=1)
        for k, v in meta_diag.items():
            log(("meta", k), v, window=1)

    # ------------------------------------------------------------------ phases
    def _sample_real(self) -> dict[str, Any]:
        """Random actions until ``initial_random_steps``, else the K adapted policies."""
        cfg = self.config
        K = cfg.ensemble_size
        random = len(self.buffer) == 0 and cfg.initial_random_steps > 0
        if random:
            n_jobs = max(1, self.env_runner_group.num_healthy_remote_workers())
            per = math.ceil(cfg.initial_random_steps / n_jobs)
            kwargs = {"num_timesteps": per, "random_actions": True}
            jobs = [(j, None, kwargs, self._job_seed(j)) for j in range(n_jobs)]
        else:
            per = math.ceil(cfg.real_steps_per_iter / K)
            params = self._adapted_params or [None] * K  # None: the runners' current theta
            kwargs = {"num_timesteps": per, "explore": True}
            jobs = [(k, params[k], kwargs, self._job_seed(k)) for k in range(K)]
        out = self._run_on_runners(jobs)
        out["random"] = random
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
        """Seed of sampling job ``job`` in the current iteration (derived, so never stored)."""
        return ((self.config.seed or 0) * 1_000_003 + self._counters["iterations"]) * 4099 + job

    def _evaluate_real(self, num_episodes: int) -> dict[str, Any]:
        if num_episodes <= 0:
            return {"episode_returns": [], "episode_lengths": []}
        n_runners = max(1, self.env_runner_group.num_healthy_remote_workers())
        per = [len(c) for c in np.array_split(np.arange(num_episodes), n_runners) if len(c)]
        explore = self.config.eval_explore
        jobs = [(j, None, {"num_episodes": n, "explore": explore}, self._job_seed(1000 + j))
                for j, n in enumerate(per)]
        out = self._run_on_runners(jobs)
        self._counters["eval_steps"] += len(out["reward"])
        return out

    def _run_on_runners(self, jobs: list[tuple]) -> dict[str, Any]:
        """Spread sampling jobs over the healthy env runners; a job whose runner died is
        retried on the restarted runners (up to a few times), so every job completes."""
        group, results, pending = self.env_runner_group, {}, list(jobs)
        low, high = self._act_low, self._act_high
        for _ in range(_MAX_SAMPLE_RETRIES + 1):
            if not pending:
                break
            ids = group.healthy_env_runner_ids() if group.num_remote_env_runners() else []
            if group.num_remote_env_runners() and not ids:
                self.restore_env_runners(group)
                ids = group.healthy_env_runner_ids()
            if not ids:  # local sampling
                for j in pending:
                    results.update(_run_jobs(group.local_env_runner, [j], low, high))
            else:
                per_runner = [pending[i:: len(ids)] for i in range(len(ids))]
                used = [(i, js) for i, js in zip(ids, per_runner, strict=True) if js]
                funcs = [(lambda r, js=js: _run_jobs(r, js, low, high)) for _, js in used]
                for chunk in group.foreach_env_runner(
                    funcs, local_env_runner=False, remote_worker_ids=[i for i, _ in used]
                ):
                    results.update(chunk)
            pending = [j for j in pending if j[0] not in results]
            if pending:
                self.restore_env_runners(group)
        if pending:
            raise RuntimeError(
                f"{len(pending)} sampling jobs failed on every env runner after "
                f"{_MAX_SAMPLE_RETRIES} retries; check the env runner logs"
            )
        parts = [results[j[0]] for j in jobs]
        filled = [p for p in parts if len(p["reward"])] or parts[:1]
        out = {k: np.concatenate([p[k] for p in filled]) for k in _TRANSITION_KEYS}
        for k in ("episode_returns", "episode_lengths"):
            out[k] = [x for p in parts for x in p[k]]
        return out

    def _fit_ensemble(self, data: dict[str, np.ndarray], seed: int) -> dict[str, float]:
        """Fit all members on ``data``: normalisers here, member groups in parallel."""
        cfg = self.config
        self.ensemble.update_normalizers(data["obs"], data["act"], data["next_obs"])
        data_ref = ray.put(data) if self._trainers else data
        calls = []
        for g, members in enumerate(self._member_groups):
            args = (
                {**self._ensemble_kwargs, "ensemble_size": len(members), "num_elites": None},
                self.ensemble.member_state(members),
                data_ref,
                cfg.fit_config,
                seed * 31 + g,
                self._model_opt_states[g],
            )
            if self._trainers:
                calls.append(self._trainers[g].fit.remote(*args))
            else:
                calls.append(fit_members(*args))
        outs = ray.get(calls) if self._trainers else calls
        K = cfg.ensemble_size
        val, train, epochs = np.zeros(K), np.zeros(K), np.zeros(K)
        diverged = False
        for g, (members, (state, result, opt_state)) in enumerate(
            zip(self._member_groups, outs, strict=True)
        ):
            if result.diverged:  # the trainer restored the pre-fit weights; keep ours
                diverged = True
            else:
                self.ensemble.load_member_state(members, state, load_shared=False)
                self._model_opt_states[g] = opt_state
            val[members], train[members] = result.val_loss, result.train_loss
            epochs[members] = result.epochs
        self.ensemble.select_elites(val)
        out = {"val_loss_mean": float(val.mean()), "train_loss_mean": float(train.mean()),
               "epochs_mean": float(epochs.mean()), "diverged": float(diverged)}
        out.update({f"val_loss_member_{k}": float(v) for k, v in enumerate(val)})
        return out

    @override(Algorithm)
    def evaluate(self, *args, num_episodes: int | None = None, **kwargs) -> dict[str, Any]:
        """Real-env returns of the pre-update policy and of the adapted policies.

        Both are sampled as in training (``eval_explore=True``) or with the mean action.

        Args:
            num_episodes: episodes per policy kind (default ``eval_episodes_per_iter``, min 1);
                the adapted-policy episodes are spread over the K members.
        """
        n = max(1, num_episodes or self.config.eval_episodes_per_iter)
        pre = self._evaluate_real(n)
        out = {"episode_return_mean": float(np.mean(pre["episode_returns"])),
               "episode_returns": pre["episode_returns"]}
        if self._adapted_params is not None:
            K = self.config.ensemble_size
            counts = [len(c) for c in np.array_split(np.arange(n), K)]
            explore = self.config.eval_explore
            jobs = [(k, self._adapted_params[k], {"num_episodes": c, "explore": explore},
                     self._job_seed(2000 + k)) for k, c in enumerate(counts) if c]
            post = self._run_on_runners(jobs)
            out["post_adaptation_return_mean"] = float(np.mean(post["episode_returns"]))
            out["post_adaptation_episode_returns"] = post["episode_returns"]
            # put theta back on the runners
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True
            )
        return out

    # ------------------------------------------------------------------ checkpointing
    @override(Algorithm)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[MBMPO_STATE] = {
            "buffer": self.buffer.get_state(),
            "ensemble": {k: v.cpu() for k, v in self.ensemble.state_dict().items()},
            "model_opt_states": self._model_opt_states,
            "adapted_params": self._adapted_params,
            "counters": dict(self._counters),
        }
        return state

    @override(Algorithm)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        ours = state.get(MBMPO_STATE)
        if ours is None:
            return
        self.buffer.set_state(ours["buffer"])
        self.ensemble.load_state_dict(ours["ensemble"])
        self._model_opt_states = list(ours["model_opt_states"])
        self._adapted_params = ours["adapted_params"]
        self._counters = dict(ours["counters"])

    @override(Algorithm)
    def cleanup(self) -> None:
        self._reset_env.close()
        for t in self._trainers:
            ray.kill(t)
        super().cleanup()
