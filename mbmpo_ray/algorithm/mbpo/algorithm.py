"""MBPO: the RLlib Algorithm running one model-refit cycle per ``training_step``."""

from __future__ import annotations

from typing import Any

import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import LEARNER_RESULTS, SYNCH_WORKER_WEIGHTS_TIMER

from mbmpo_ray.algorithm.base import ModelBasedAlgorithm, mean_std
from mbmpo_ray.algorithm.mbpo.config import MBPOConfig
from mbmpo_ray.imagination import StateBounds


class MBPO(ModelBasedAlgorithm):
    """Model-Based Policy Optimization (Janner et al. 2019) as an RLlib Algorithm.

    One ``train()`` call is one model-refit cycle, ``model_train_freq`` real steps (the first
    call takes the ``initial_random_steps`` random steps before it), as named, timed phases:

    1. ``fit_models``: the probabilistic ensemble is refitted on all real data
       (:class:`~mbmpo_ray.algorithm.fitting.EnsembleFitter`: warm start, holdout, elites);
    2. ``model_rollouts``: on the Learner, ``rollouts_per_step x model_train_freq`` branched
       rollouts of length k (``rollout_schedule``) from real states fill the model buffer;
    3. ``model_train_freq / env_steps_per_block`` blocks, each: ``sample_real`` (the env
       runners continue their episodes with the current policy for a block of steps, through
       the shared :class:`~mbmpo_ray.algorithm.sampling.RealSampler`; invalid rows dropped
       and counted), ``sac_updates`` (one Learner call: the stored rows, then
       ``updates_per_step x block`` SAC steps on mixed real/model batches), ``sync_weights``;
    4. ``evaluate_real``: episodes of the mean action on the env runners' evaluation envs.

    The real buffer (driver; the Learner keeps a device copy of it for batches, rebuilt on
    restore), the ensemble and its optimiser states (fitter), the model buffer and
    ``log_alpha`` (Learner state), the SAC networks, targets and optimisers (RLlib's Learner
    state) and the counters are part of every checkpoint.

    With ``.learners(num_learners=N > 1)`` every Learner call goes to all N learners (the real
    rows and the ensemble once through the object store), which then hold the same data and
    parameters (see :class:`~mbmpo_ray.algorithm.mbpo.learner.MBPOTorchLearner`); a learner
    that fails or is lost ends the iteration with an error saying to resume from the last
    checkpoint.
    """

    ALGO_NAME = MBPOConfig.ALGO_NAME
    DISPLAY_NAME = MBPOConfig.DISPLAY_NAME
    EXTRA_COUNTERS = ("sac_updates", "blocks")

    def __init__(self, *args, **kwargs):
        # as RLlib's SAC (without extending the class-level list in place)
        self._allow_unknown_subkeys = [*self._allow_unknown_subkeys, "policy_model_config",
                                       "q_model_config"]
        super().__init__(*args, **kwargs)

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> MBPOConfig:
        return MBPOConfig()

    @override(ModelBasedAlgorithm)
    def setup_update(self) -> None:
        cfg = self.config
        self._on_learner(lambda learner, **kw: learner.setup_data(**kw), obs_dim=self.obs_dim,
                         act_dim=self.act_dim, action_low=self._act_low,
                         action_high=self._act_high, capacity=cfg.buffer_capacity)

    def _on_learner(self, func, what: str = "the SAC Learner call", **kwargs):
        """``func(learner, **kwargs)`` on every learner; the first learner's result (with N
        learners they hold the same data and parameters)."""
        res = self.learner_group.foreach_learner(func, **kwargs)
        return self.all_learners_results(res, what)[0]

    def _shared(self, value):
        """``value`` as one object-store copy for remote learners (sent once to all N)."""
        return ray.put(value) if self.learner_group.is_remote else value

    # ------------------------------------------------------------------ one refit cycle
    @override(Algorithm)
    def training_step(self) -> None:
        """One model-refit cycle: (random steps,) fit, model rollouts, blocks of real steps
        each followed by their SAC updates, evaluation (see the class doc)."""
        cfg, c = self.config, self.counters
        seed = self.iteration_seed()
        random = None
        if c["real_steps"] == 0 and cfg.initial_random_steps > 0:
            random = self._block(cfg.initial_random_steps, random_actions=True, seed=seed)
        with self.timed("fit_models"):
            fit = self.fit_models(seed)
        with self.timed("model_rollouts"):
            roll = self._model_rollouts(seed)
        blocks = self._policy_blocks()
        with self.timed("evaluate_real"):
            ev = self.evaluate_policies(cfg.eval_episodes_per_iter, cfg.eval_explore,
                                        seed_offset=10_000)
        c["iterations"] += 1
        steps = blocks["steps"] + (random["steps"] if random else 0)
        dropped = blocks["dropped"] + (random["dropped"] if random else 0)
        self.log_common(steps, fit, ev, blocks["episode_returns"],
                        random["episode_returns"] if random else None, dropped,
                        {"imagination_diverged": float(roll["dropped_non_finite"] > 0)})
        self._log_mbpo(roll, blocks["learner_results"])

    # ------------------------------------------------------------------ phases
    def _policy_blocks(self) -> dict[str, Any]:
        """``model_train_freq`` real steps of the current policy in blocks of
        ``env_steps_per_block``, each followed by its SAC updates and a weight sync."""
        cfg = self.config
        total = {"steps": 0, "dropped": 0, "episode_returns": [], "learner_results": []}
        while total["steps"] < cfg.model_train_freq:
            n = min(cfg.env_steps_per_block, cfg.model_train_freq - total["steps"])
            seed = self.job_seed(1 + self.counters["blocks"])
            block = self._block(n, random_actions=False, seed=seed)
            with self.timed(SYNCH_WORKER_WEIGHTS_TIMER):
                self.env_runner_group.sync_weights(
                    from_worker_or_learner_group=self.learner_group, inference_only=True)
            for key in ("steps", "dropped", "episode_returns", "learner_results"):
                total[key] += block[key]
        return total

    def _block(self, n: int, *, random_actions: bool, seed: int) -> dict[str, Any]:
        """``n`` real steps continuing the runners' episodes (``sample_real``), stored, then
        ``updates_per_step`` SAC updates per stored policy step (``sac_updates``; random
        steps only join the Learner's copy of the real data)."""
        cfg, c = self.config, self.counters
        with self.timed("sample_real"):
            new = self.sampler.run_steps(n, random_actions=random_actions,
                                         seed_of=lambda rid: self.job_seed(100_000 + rid))
        stored = self.store(new)
        num_updates = 0 if random_actions else cfg.updates_per_step * len(stored["reward"])
        with self.timed("sac_updates"):
            res = self._on_learner(lambda learner, **kw: learner.train_block(**kw),
                                   "the SAC updates", new_real=self._shared(stored),
                                   num_updates=num_updates, seed=seed)
        c["sac_updates"] += num_updates
        c["blocks"] += 0 if random_actions else 1
        return {"steps": len(new["reward"]), "dropped": stored["dropped"],
                "episode_returns": new["episode_returns"],
                "learner_results": [res] if num_updates else []}

    def _model_rollouts(self, seed: int) -> dict[str, float]:
        """Branched rollouts of length k from real states into the Learner's model buffer."""
        cfg = self.config
        k = cfg.rollout_length(self.counters["real_steps"])
        bounds = None
        if cfg.imagine_clip_margin is not None:
            data = self.buffer.all()
            bounds = StateBounds.from_transitions(data["obs"], data["next_obs"],
                                                  cfg.imagine_clip_margin)
        state = self.fitter.ensemble_state()
        out = self._on_learner(
            lambda learner, **kw: learner.model_rollouts(**kw),
            ensemble_kwargs=self.fitter.ensemble_kwargs,
            what="the model rollouts",
            ensemble_state=self._shared(state),
            env_spec=self.env_spec,
            num_rollouts=cfg.rollouts_per_step * cfg.model_train_freq,
            length=k,
            buffer_capacity=cfg.model_buffer_capacity(k),
            seed=seed,
            bounds=bounds,
        )
        self.counters["imagined_steps"] += int(out["model_steps"])
        return out

    def _log_mbpo(self, roll: dict[str, float], learner_results: list[dict]) -> None:
        """MBPO's own results: its counters, the model rollouts and the SAC Learner's
        metrics (RLlib's names, under ``learners/``)."""
        log, c = self.metrics.log_value, self.counters
        log("num_sac_updates_lifetime", c["sac_updates"], reduce=None, window=1)
        # MBPO's name for its imagined transitions (num_imagined_steps_lifetime, the same)
        log("num_model_steps_lifetime", c["imagined_steps"], reduce=None, window=1)
        log("model_buffer_size", roll["model_buffer_size"], window=1)
        log("rollout_length", roll["rollout_length"], window=1)
        log("epoch", self.config.epoch(c["real_steps"]), window=1)
        for k, v in roll.items():
            log(("rollouts", k), v, window=1)
        if learner_results:
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

    @override(Algorithm)
    def evaluate(self, *args, num_episodes: int | None = None, explore: bool | None = None,
                 **kwargs) -> dict[str, Any]:
        """Real-env returns of the current policy on the env runners' evaluation envs.

        Args:
            num_episodes: episodes (default ``eval_episodes_per_iter``, at least 1).
            explore: True: actions sampled from the policy; False: its mean action; None:
                the config's ``eval_explore`` (default False, as the reference).

        Returns:
            ``episode_return_mean``/``_std``, ``episode_returns``, ``episode_lengths`` and
            ``explore`` (the action mode used).
        """
        n = max(1, num_episodes or self.config.eval_episodes_per_iter)
        explore = self.config.eval_explore if explore is None else bool(explore)
        ev = self.evaluate_policies(n, explore, seed_offset=20_000)
        mean, std = mean_std(ev["episode_returns"])
        return {"episode_return_mean": mean, "episode_return_std": std,
                "episode_returns": ev["episode_returns"],
                "episode_lengths": ev["episode_lengths"], "explore": explore}

    # ------------------------------------------------------------------ checkpointing
    @override(ModelBasedAlgorithm)
    def load_extra_state(self, ours: dict[str, Any]) -> None:
        """The Learner's device copy of the real data, rebuilt from the restored buffer;
        every runner starts fresh episodes."""
        real = self.buffer.all()
        self._on_learner(lambda learner, **kw: learner.load_real(**kw),
                         real=self._shared(real))
        self.sampler.reset_streams()
