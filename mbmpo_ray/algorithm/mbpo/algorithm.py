"""MBPO: the RLlib Algorithm running one model-refit cycle per ``training_step``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    TIMERS,
)

from mbmpo_ray.algorithm.common import ModelBasedAlgorithmMixin
from mbmpo_ray.algorithm.fitting import EnsembleFitter
from mbmpo_ray.algorithm.mbpo.config import MBPOConfig
from mbmpo_ray.algorithm.sampling import episodes_to_arrays, iteration_seed, job_seed
from mbmpo_ray.buffer import TransitionBuffer
from mbmpo_ray.imagination import StateBounds

MBPO_STATE = "mbpo"
_LAST = {"reduce": "mean", "window": 1}  # per-iteration values
MAX_BLOCK_RETRIES = 3


def sample_block(runner, num_timesteps: int, random_actions: bool, seed: int | None,
                 act_low, act_high) -> dict[str, Any]:
    """On an env runner: ``num_timesteps`` more steps of its ongoing episodes (random actions
    or the runner's policy, exploring). With a ``seed`` (a runner's first block), everything
    random on the runner is reseeded and its envs are reset first.

    Returns the transitions (actions as stored by RLlib, clipped to ``[act_low, act_high]``)
    and, per episode chunk, ``(episode id, reward sum, length, started here, done)``."""
    if seed is not None:
        torch.manual_seed(seed)
        runner.env.action_space.seed(seed)
        runner._seed, runner._needs_initial_reset = seed, True
    episodes = runner.sample(num_timesteps=num_timesteps, random_actions=random_actions,
                             explore=True, force_reset=seed is not None)
    out = episodes_to_arrays(episodes, act_low, act_high)
    out["chunks"] = [(ep.id_, float(ep.get_return()), len(ep), ep.t_started == 0, ep.is_done)
                     for ep in episodes if len(ep)]
    return out


class MBPO(ModelBasedAlgorithmMixin, Algorithm):
    """Model-Based Policy Optimization (Janner et al. 2019) as an RLlib Algorithm.

    One ``train()`` call is one model-refit cycle, ``model_train_freq`` real steps (the first
    call takes the ``initial_random_steps`` random steps before it):

    1. ``fit_models``: the probabilistic ensemble is refitted on all real data
       (:class:`~mbmpo_ray.algorithm.fitting.EnsembleFitter`: warm start, holdout, elites);
    2. ``model_rollouts``: on the Learner, ``rollouts_per_step x model_train_freq`` branched
       rollouts of length k (``rollout_schedule``) from real states fill the model buffer;
    3. ``model_train_freq / env_steps_per_block`` blocks, each: ``sample_real`` (the env
       runners continue their episodes with the current policy for a block of steps, into the
       real buffer), ``sac_updates`` (one Learner call: the new rows, then
       ``updates_per_step x block`` SAC steps on mixed real/model batches), ``sync_weights``;
    4. ``evaluate_real``: episodes of the mean action on a separate env.

    The real buffer (driver), the ensemble and its optimiser states (fitter), the model buffer
    and ``log_alpha`` (Learner state), the SAC networks, targets and optimisers (RLlib's
    Learner state) and the counters are part of every checkpoint.
    """

    def __init__(self, *args, **kwargs):
        # as RLlib's SAC (without extending the class-level list in place)
        self._allow_unknown_subkeys = [*self._allow_unknown_subkeys, "policy_model_config",
                                       "q_model_config"]
        super().__init__(*args, **kwargs)

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> MBPOConfig:
        return MBPOConfig()

    @override(Algorithm)
    def setup(self, config: MBPOConfig) -> None:
        env = self._use_env_creator()  # every actor builds the env from an EnvCreator
        super().setup(self.config)
        cfg = self.config
        self.env_spec = cfg.env_spec()
        cfg.validate_spaces(env.observation_space, env.action_space)
        obs_dim, act_dim = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
        self._act_low = env.action_space.low.astype(np.float32)
        self._act_high = env.action_space.high.astype(np.float32)
        self._eval_env = env

        self.buffer = TransitionBuffer(obs_dim, act_dim, cfg.buffer_capacity)
        torch.manual_seed(cfg.seed or 0)
        # The fitter builds sub-ensembles of its member groups from these kwargs, so they
        # must not carry num_elites (a group can be smaller); the elites are chosen on the
        # whole ensemble, which gets its num_elites here.
        kwargs = cfg.ensemble_kwargs(obs_dim, act_dim)
        num_elites = kwargs.pop("num_elites")
        self.fitter = EnsembleFitter(kwargs, cfg.fit_config, cfg.num_model_trainers,
                                     cfg.num_cpus_per_model_trainer, device=cfg.model_device)
        self.fitter.ensemble._num_elites = num_elites
        self._on_learner(lambda learner, **kw: learner.setup_data(**kw), obs_dim=obs_dim,
                         act_dim=act_dim, action_low=self._act_low,
                         action_high=self._act_high, capacity=cfg.buffer_capacity)
        self.mbpo_counters = {"iterations": 0, "real_steps": 0, "model_steps": 0,
                              "sac_updates": 0, "eval_steps": 0, "blocks": 0}
        self._runners_seeded: set[int] = set()
        self._episodes: dict[str, tuple[float, int]] = {}  # training episodes in progress

    def _on_learner(self, func, **kwargs):
        return next(iter(self.learner_group.foreach_learner(func, **kwargs))).get()

    # ------------------------------------------------------------------ one refit cycle
    @override(Algorithm)
    def training_step(self) -> None:
        """One model-refit cycle: (random steps,) fit, model rollouts, blocks of real steps
        each followed by their SAC updates, evaluation (see the class doc)."""
        cfg, c = self.config, self.mbpo_counters
        seed = iteration_seed(cfg.seed, c["iterations"])
        t = dict.fromkeys(("sample_real", "sac_updates", "sync_weights"), 0.0)
        random_new = None
        if c["real_steps"] == 0 and cfg.initial_random_steps > 0:
            t0 = time.perf_counter()
            random_new = self._sample(cfg.initial_random_steps, random_actions=True)
            t["sample_real"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            self._on_learner(lambda learner, **kw: learner.train_block(**kw),
                             new_real=random_new, num_updates=0, seed=seed)
            t["sac_updates"] += time.perf_counter() - t0
        with self.metrics.log_time((TIMERS, "fit_models"), **_LAST):
            data = {**self.buffer.all(), "row_ids": self.buffer.row_ids()}
            fit = self.fitter.fit(data, seed)
        with self.metrics.log_time((TIMERS, "model_rollouts"), **_LAST):
            roll = self._model_rollouts(data, seed)
        policy_returns, learner_results = [], []
        done_steps = 0
        while done_steps < cfg.model_train_freq:
            n = min(cfg.env_steps_per_block, cfg.model_train_freq - done_steps)
            t0 = time.perf_counter()
            new = self._sample(n, random_actions=False)
            t["sample_real"] += time.perf_counter() - t0
            policy_returns += new["episode_returns"]
            n_new = len(new["reward"])
            done_steps += n_new
            t0 = time.perf_counter()
            learner_results.append(self._on_learner(
                lambda learner, **kw: learner.train_block(**kw), new_real=new,
                num_updates=cfg.updates_per_step * n_new,
                seed=job_seed(cfg.seed, c["iterations"], 1 + c["blocks"])))
            t["sac_updates"] += time.perf_counter() - t0
            c["sac_updates"] += cfg.updates_per_step * n_new
            c["blocks"] += 1
            t0 = time.perf_counter()
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True)
            t["sync_weights"] += time.perf_counter() - t0
        with self.metrics.log_time((TIMERS, "evaluate_real"), **_LAST):
            ev = self._evaluate(cfg.eval_episodes_per_iter, seed)
        c["iterations"] += 1
        for name, secs in t.items():
            self.metrics.log_value((TIMERS, name), secs, **_LAST)
        if learner_results:
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        self._log_iteration(random_new, done_steps, policy_returns, fit, roll, ev)

    # ------------------------------------------------------------------ phases
    def _model_rollouts(self, data: dict[str, np.ndarray], seed: int) -> dict[str, float]:
        cfg = self.config
        k = cfg.rollout_length(self.mbpo_counters["real_steps"])
        bounds = None
        if cfg.imagine_clip_margin is not None:
            bounds = StateBounds.from_transitions(data["obs"], data["next_obs"],
                                                  cfg.imagine_clip_margin)
        state = self.fitter.ensemble_state()
        out = self._on_learner(
            lambda learner, **kw: learner.model_rollouts(**kw),
            ensemble_kwargs=self.fitter.ensemble_kwargs,
            ensemble_state=ray.put(state) if self.learner_group.is_remote else state,
            env_spec=self.env_spec,
            num_rollouts=cfg.rollouts_per_step * cfg.model_train_freq,
            length=k,
            buffer_capacity=cfg.model_buffer_capacity(k),
            seed=seed,
            bounds=bounds,
        )
        self.mbpo_counters["model_steps"] += int(out["model_steps"])
        return out

    def _sample(self, n: int, random_actions: bool) -> dict[str, Any]:
        """``n`` real steps (at least) spread over the env runners, continuing their
        episodes; transitions (env-space actions) go into the real buffer."""
        group = self.env_runner_group
        low, high = (self._act_low, self._act_high) if random_actions else (-1.0, 1.0)
        parts = []
        for _ in range(MAX_BLOCK_RETRIES + 1):
            ids = group.healthy_env_runner_ids() if group.num_remote_env_runners() else []
            if group.num_remote_env_runners() and not ids:
                self.restore_env_runners(group)
                continue
            ids = ids or [0]
            per = [len(c) for c in np.array_split(np.arange(n), len(ids))]
            calls = [(i, m, self._runner_seed(i)) for i, m in zip(ids, per, strict=True) if m]
            if ids == [0]:
                parts = [sample_block(group.local_env_runner, calls[0][1], random_actions,
                                      calls[0][2], low, high)]
            else:
                funcs = [(lambda r, m=m, s=s: sample_block(r, m, random_actions, s, low, high))
                         for _, m, s in calls]
                parts = group.foreach_env_runner(funcs, local_env_runner=False,
                                                 remote_worker_ids=[i for i, _, _ in calls])
            if len(parts) == len(calls):
                self._runners_seeded.update(i for i, _, _ in calls)
                break
            self.restore_env_runners(group)  # a runner died: its episodes restart
            self._runners_seeded.clear()
        else:
            raise RuntimeError(f"sampling {n} real steps failed on every env runner after "
                               f"{MAX_BLOCK_RETRIES} retries; check the env runner logs")
        filled = [p for p in parts if len(p["reward"])]
        new = {k: np.concatenate([p[k] for p in filled])
               for k in ("obs", "act", "next_obs", "reward", "done")}
        if not random_actions:  # the module's [-1, 1] actions, as the env received them
            new["act"] = np.clip(self._act_low + (new["act"] + 1.0) * 0.5
                                 * (self._act_high - self._act_low), self._act_low,
                                 self._act_high).astype(np.float32)
        new["episode_returns"] = self._track_episodes([c for p in parts for c in p["chunks"]])
        self.buffer.add(new["obs"], new["act"], new["next_obs"], new["reward"], new["done"])
        self.mbpo_counters["real_steps"] += len(new["reward"])
        return new

    def _runner_seed(self, runner_id: int) -> int | None:
        if runner_id in self._runners_seeded:
            return None
        return job_seed(self.config.seed, self.mbpo_counters["iterations"], 100_000 + runner_id)

    def _track_episodes(self, chunks) -> list[float]:
        """Returns of the training episodes that finished in these chunks (only episodes
        followed from their start)."""
        finished = []
        for ep_id, ret, length, started, done in chunks:
            if started:
                self._episodes[ep_id] = (0.0, 0)
            if ep_id not in self._episodes:
                continue
            r, n = self._episodes[ep_id]
            self._episodes[ep_id] = (r + ret, n + length)
            if done:
                finished.append(self._episodes.pop(ep_id)[0])
        return finished

    def policy_action(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        """The policy's env-space action for one real observation (the mean action unless
        ``explore``), e.g. to render an episode; computed with the Learner's module when
        local, else with the local env runner's synced copy."""
        if self.learner_group.is_local:
            module = self.learner_group._learner.module[DEFAULT_MODULE_ID]
        else:  # synced after every block (create_env_on_local_worker gives it a module)
            module = self.env_runner_group.local_env_runner.module
            if isinstance(module, MultiRLModule):
                module = module[DEFAULT_MODULE_ID]
        with torch.no_grad():
            p = next(module.parameters())
            batch = {Columns.OBS: torch.as_tensor(obs[None], dtype=torch.float32,
                                                  device=p.device)}
            inputs = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
            dist = module.get_inference_action_dist_cls().from_logits(inputs)
            a = (dist.sample() if explore else dist.to_deterministic().sample())[0].cpu().numpy()
        return np.clip(self._act_low + (a + 1.0) * 0.5 * (self._act_high - self._act_low),
                       self._act_low, self._act_high)

    def _evaluate(self, num_episodes: int, seed: int) -> dict[str, Any]:
        """Real episodes of the current policy on the driver's evaluation env."""
        returns, lengths = [], []
        env, explore = self._eval_env, self.config.eval_explore
        for ep in range(num_episodes):
            obs, _ = env.reset(seed=seed * 1009 + ep)
            total, n, done = 0.0, 0, False
            while not done:
                obs, r, term, trunc, _ = env.step(self.policy_action(obs, explore))
                total, n, done = total + float(r), n + 1, term or trunc
            returns.append(total)
            lengths.append(n)
        self.mbpo_counters["eval_steps"] += int(sum(lengths))
        return {"episode_returns": returns, "episode_lengths": lengths}

    def _log_iteration(self, random_new, n_policy, policy_returns, fit, roll, ev) -> None:
        log = self.metrics.log_value
        c = self.mbpo_counters
        n_new = n_policy + (0 if random_new is None else len(random_new["reward"]))
        log(NUM_ENV_STEPS_SAMPLED_LIFETIME, n_new, reduce="lifetime_sum")
        log((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), n_new, reduce="lifetime_sum")
        for key in ("real_steps", "model_steps", "sac_updates", "eval_steps"):
            log(f"num_{key}_lifetime", c[key], reduce=None, window=1)
        # the CLI's progress columns use MB-MPO's name for model transitions
        log("num_imagined_steps_lifetime", c["model_steps"], reduce=None, window=1)
        log("buffer_size", len(self.buffer), reduce=None, window=1)
        log("model_buffer_size", roll["model_buffer_size"], window=1)
        log("rollout_length", roll["rollout_length"], window=1)
        log("epoch", self.config.epoch(c["real_steps"]), window=1)
        if ev["episode_returns"]:
            mean = float(np.mean(ev["episode_returns"]))
            log("episode_return_mean", mean, window=1)
            log((ENV_RUNNER_RESULTS, "episode_return_mean"), mean, window=1)
            log("episode_len_mean", float(np.mean(ev["episode_lengths"])), window=1)
        if random_new is not None and random_new["episode_returns"]:
            log("random_return_mean", float(np.mean(random_new["episode_returns"])), window=1)
        if policy_returns:
            log("train_return_mean", float(np.mean(policy_returns)), window=1)
        for k, v in fit.items():
            log(("model", k), v, window=1)
        for k, v in roll.items():
            log(("rollouts", k), v, window=1)

    @override(Algorithm)
    def evaluate(self, *args, num_episodes: int | None = None, **kwargs) -> dict[str, Any]:
        """Real-env returns of the current policy (mean action unless ``eval_explore``).

        Args:
            num_episodes: episodes (default ``eval_episodes_per_iter``, at least 1).
        """
        n = max(1, num_episodes or self.config.eval_episodes_per_iter)
        ev = self._evaluate(n, iteration_seed(self.config.seed, 10_000_000
                                              + self.mbpo_counters["iterations"]))
        return {"episode_return_mean": float(np.mean(ev["episode_returns"])),
                "episode_returns": ev["episode_returns"],
                "episode_lengths": ev["episode_lengths"]}

    # ------------------------------------------------------------------ checkpointing
    @override(Algorithm)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[MBPO_STATE] = self._data_state(self.mbpo_counters)
        return state

    @override(Algorithm)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        ours = state.get(MBPO_STATE)
        if ours is None:
            return
        self._load_data_state(ours)
        self.mbpo_counters = dict(ours["counters"])
        real = self.buffer.all()
        self._on_learner(lambda learner, **kw: learner.load_real(**kw),
                         real=ray.put(real) if self.learner_group.is_remote else real)
        self._runners_seeded.clear()
        self._episodes.clear()

    @override(Algorithm)
    def cleanup(self) -> None:
        self._eval_env.close()
        self.fitter.stop()
        super().cleanup()

    @property
    def model_buffer_size(self) -> int:
        """Rows in the model buffer (on the Learner)."""
        return int(self._on_learner(lambda learner: len(learner._model_buffer)))
