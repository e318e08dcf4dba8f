"""Real-env sampling for the algorithms: seeded jobs spread over the env runners, retried on
restarted runners when a runner dies, returned as transition arrays.

A job is ``(job_id, params | None, sample_kwargs, seed)``: it loads ``params`` into the runner's
module (None: keep the runner's weights), reseeds everything random on the runner and calls
``EnvRunner.sample(**sample_kwargs)`` (:func:`run_jobs`, MB-MPO's sampling) or plays evaluation
episodes on the runner's separate evaluation env (:func:`evaluate_jobs`, both algorithms). A
job therefore gives the same result wherever and whenever it runs, so a restored or retried run
continues exactly as the uninterrupted one. MBPO's blocks (:meth:`RealSampler.run_steps`,
:func:`sample_block`) instead continue each runner's episodes from block to block; a block
lost with its runner is sampled again elsewhere, from fresh seeded episodes.

RLlib has no public way to reseed a runner's envs between ``sample()`` calls, nor to mark a
runner that does not answer in time as unhealthy: :func:`_reseed` and
:meth:`RealSampler._run_once` use the two private attributes needed for that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID

TRANSITION_KEYS = ("obs", "act", "next_obs", "reward", "done")
MAX_SAMPLE_RETRIES = 5

logger = logging.getLogger(__name__)

Job = tuple[int, "dict[str, np.ndarray] | None", "dict[str, Any]", int]


def iteration_seed(base_seed: int | None, iteration: int) -> int:
    """Seed of everything random in iteration ``iteration`` (derived, so never stored)."""
    return (base_seed or 0) * 1_000_003 + iteration


def job_seed(base_seed: int | None, iteration: int, job: int) -> int:
    """Seed of sampling job ``job`` in iteration ``iteration``."""
    return iteration_seed(base_seed, iteration) * 4099 + job


def episodes_to_arrays(episodes, act_low, act_high) -> dict[str, Any]:
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


def run_jobs(runner, jobs: list[Job], act_low, act_high) -> list[tuple[int, dict[str, Any]]]:
    """On an env runner: run each job in turn (see the module docstring)."""
    if getattr(runner, "env", None) is None:
        raise RuntimeError("this env runner has no env (the local runner of a group with "
                           "remote runners); sampling jobs run on the remote runners only")
    out = []
    for job_id, params, kwargs, seed in jobs:
        if params is not None:
            runner.module.set_policy_params(params)
        _reseed(runner, seed)
        episodes = runner.sample(force_reset=True, **kwargs)
        out.append((job_id, episodes_to_arrays(episodes, act_low, act_high)))
    return out


def sample_block(runner, num_timesteps: int, random_actions: bool, seed: int | None,
                 act_low, act_high) -> dict[str, Any]:
    """On an env runner: ``num_timesteps`` more steps of its ongoing episodes (random actions
    or the runner's policy, exploring). With a ``seed`` (the runner's first block, or its
    first after a restart), everything random on the runner is reseeded and its envs are
    reset first.

    Returns :func:`episodes_to_arrays`' transitions (env-space actions, as the env received
    them, in ``[act_low, act_high]``) and, per episode chunk, ``(episode id, reward sum, length,
    started here, done)`` in ``chunks``."""
    if seed is not None:
        _reseed(runner, seed)
    episodes = runner.sample(num_timesteps=num_timesteps, random_actions=random_actions,
                             explore=True, force_reset=seed is not None)
    if random_actions or not runner.config.normalize_actions:
        out = episodes_to_arrays(episodes, act_low, act_high)
    else:  # the policy's [-1, 1] actions, mapped to the box as RLlib sent them to the env
        out = episodes_to_arrays(episodes, -1.0, 1.0)
        out["act"] = np.clip(act_low + (out["act"] + 1.0) * 0.5 * (act_high - act_low),
                             act_low, act_high).astype(np.float32)
    out["chunks"] = [(ep.id_, float(ep.get_return()), len(ep), ep.t_started == 0, ep.is_done)
                     for ep in episodes if len(ep)]
    return out


def _reseed(runner, seed: int) -> None:
    """Reseed everything random on an env runner; its envs reset with ``seed`` next."""
    torch.manual_seed(seed)
    runner.env.action_space.seed(seed)
    runner._seed, runner._needs_initial_reset = seed, True


def policy_env_action(module, obs: np.ndarray, explore: bool, act_low, act_high,
                      normalized: bool) -> np.ndarray:
    """The env-space action of an RLlib RLModule for one observation: a sample of its action
    distribution (``explore``) or its deterministic action; a policy acting in [-1, 1]
    (``normalized``, e.g. SAC's squashed Gaussian) is unsquashed to the box, else clipped."""
    with torch.no_grad():
        p = next(module.parameters())
        batch = {Columns.OBS: torch.as_tensor(obs[None], dtype=torch.float32, device=p.device)}
        if explore:
            inputs = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
            dist = module.get_exploration_action_dist_cls().from_logits(inputs)
        else:
            inputs = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
            dist = module.get_inference_action_dist_cls().from_logits(inputs).to_deterministic()
        a = dist.sample()[0].float().cpu().numpy()
    if normalized:
        a = act_low + (a + 1.0) * 0.5 * (act_high - act_low)
    return np.clip(a, act_low, act_high).astype(np.float32)


def evaluate_jobs(runner, jobs: list[Job], act_low, act_high) -> list[tuple[int, dict]]:
    """On an env runner: each job ``(job_id, params | None, {"num_episodes": n, "explore":
    bool}, seed)`` plays ``n`` episodes on the runner's separate evaluation env (built once
    from its env creator), so the training episodes the runner is in the middle of go on
    undisturbed. Returns :func:`episodes_to_arrays`-like dicts (no transitions)."""
    env = getattr(runner, "_mb_eval_env", None)
    if env is None:
        env = runner._mb_eval_env = runner.config.env(runner.config.env_config)
    module = runner.module
    if isinstance(module, MultiRLModule):
        module = module[DEFAULT_MODULE_ID]
    out = []
    for job_id, params, kwargs, seed in jobs:
        if params is not None:
            module.set_policy_params(params)
        torch.manual_seed(seed)
        returns, lengths = [], []
        for ep in range(kwargs["num_episodes"]):
            obs, _ = env.reset(seed=seed * 1009 + ep)
            total, n, done = 0.0, 0, False
            while not done:
                act = policy_env_action(module, np.asarray(obs, np.float32), kwargs["explore"],
                                        act_low, act_high, runner.config.normalize_actions)
                obs, r, term, trunc, _ = env.step(act)
                total, n, done = total + float(r), n + 1, term or trunc
            returns.append(total)
            lengths.append(n)
        out.append((job_id, {"episode_returns": returns, "episode_lengths": lengths,
                             "num_steps": int(sum(lengths))}))
    return out


def merge_job_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the transitions and episode statistics of several jobs, in job order."""
    out: dict[str, Any] = {}
    if parts and "reward" in parts[0]:
        filled = [p for p in parts if len(p["reward"])] or parts[:1]
        out = {k: np.concatenate([p[k] for p in filled]) for k in TRANSITION_KEYS}
    for k in ("episode_returns", "episode_lengths"):
        out[k] = [x for p in parts for x in p[k]]
    return out


class RealSampler:
    """Runs sampling jobs on an RLlib ``EnvRunnerGroup``.

    Jobs are spread round-robin over the healthy remote runners, or run on the local runner
    when the group has no remote runners (only then does the local runner have an env; it is
    never sampled on otherwise). A job whose runner died (or did not answer within
    ``call_timeout_s`` per job) is retried on the remaining or restarted runners, up to
    ``max_retries`` times (RLlib restores the failed runner before the next iteration). When
    no remote runner is healthy, the sampler asks Ray to restore
    them (``restore_fn(group)``, the Algorithm's ``restore_env_runners``) and waits, at most
    ``restore_timeout_s`` seconds, logging what it waits for; then it raises a clear error.
    Every job therefore completes, or an error says why, in bounded time.

    Args:
        group: the ``EnvRunnerGroup``.
        restore_fn: ``restore_fn(group)`` probes the unhealthy runners and syncs the restored
            ones (returns their ids).
        act_low, act_high: the action box (actions are stored clipped to it).
        restore_timeout_s: how long to wait for a restarted runner when none is healthy
            (the Algorithm passes RLlib's ``env_runner_restore_timeout_s``).
        call_timeout_s: seconds per job a runner may take before its jobs are retried
            elsewhere and it is probed (None: no limit; a dead runner is always detected).
        max_retries: rounds of retries after the first attempt.
    """

    def __init__(self, group, restore_fn: Callable[[Any], Any], act_low, act_high, *,
                 restore_timeout_s: float = 600.0, call_timeout_s: float | None = None,
                 max_retries: int = MAX_SAMPLE_RETRIES):
        self.group = group
        self.restore_fn = restore_fn
        self.act_low, self.act_high = act_low, act_high
        self.restore_timeout_s = float(restore_timeout_s)
        self.call_timeout_s = call_timeout_s
        self.max_retries = max_retries
        self.num_retried_jobs = 0  # lifetime: jobs (or blocks) run again after a failure
        self._seeded: set[int] = set()  # runners whose episodes run_steps continues
        self._episodes: dict[str, float] = {}  # return so far of followed training episodes

    def num_runners(self) -> int:
        """Healthy remote runners (at least 1: the local runner)."""
        return max(1, self.group.num_healthy_remote_workers())

    def run(self, jobs: list[Job], fn: Callable = run_jobs) -> dict[str, Any]:
        """Run ``jobs`` with ``fn`` on the runners (:func:`run_jobs`: sampling,
        :func:`evaluate_jobs`: evaluation episodes) and return their merged results (see
        :func:`merge_job_results`)."""
        results: dict[int, dict[str, Any]] = {}
        pending = list(jobs)
        for attempt in range(self.max_retries + 1):
            if not pending:
                break
            if attempt:
                self.num_retried_jobs += len(pending)
                logger.warning(
                    "%d sampling job(s) lost with their env runner; running them again on the "
                    "remaining or restarted runners (retry %d of %d)",
                    len(pending), attempt, self.max_retries)
            results.update(self._run_once(pending, fn))
            pending = [j for j in pending if j[0] not in results]
        if pending:
            raise RuntimeError(
                f"{len(pending)} sampling jobs failed on every env runner after "
                f"{self.max_retries} retries; check the env runner logs")
        return merge_job_results([results[j[0]] for j in jobs])

    def healthy_runner_ids(self) -> list[int] | None:
        """Ids of the healthy remote runners (None: the group has none; sample locally).

        When none is healthy, ask Ray to restore them and wait (bounded) for one.
        """
        group = self.group
        if not group.num_remote_env_runners():
            return None
        ids = group.healthy_env_runner_ids()
        if ids:
            return ids
        n = group.num_remote_env_runners()
        logger.warning("all %d env runners are down; waiting up to %.0f s for Ray to restart "
                       "them", n, self.restore_timeout_s)
        t0 = time.monotonic()
        while True:
            self.restore_fn(group)
            ids = group.healthy_env_runner_ids()
            if ids:
                logger.warning("%d env runner(s) back after %.1f s", len(ids),
                               time.monotonic() - t0)
                return ids
            if time.monotonic() - t0 > self.restore_timeout_s:
                raise RuntimeError(
                    f"none of the {n} env runners came back within {self.restore_timeout_s:.0f}"
                    " s (their node is gone, or the cluster has no free resources to restart "
                    "them); add resources, or raise .fault_tolerance("
                    "env_runner_restore_timeout_s=...) to wait longer")
            time.sleep(0.5)

    def run_steps(self, n: int, *, random_actions: bool,
                  seed_of: Callable[[int], int]) -> dict[str, Any]:
        """``n`` real steps (at least) spread over the runners, each continuing its own
        episodes (MBPO's blocks). A runner's first block, and its first after it was lost,
        reseeds and resets it with ``seed_of(runner_id)``. The steps of a runner that died
        during the block are sampled again on the remaining or restarted runners (its
        unfinished episodes are lost, its delivered transitions never duplicated); with no
        runner up, the sampler waits as :meth:`healthy_runner_ids` does.

        Returns the merged transitions and the returns of training episodes that finished
        (only episodes followed from their start)."""
        low, high = self.act_low, self.act_high
        parts, remaining = [], n
        for attempt in range(self.max_retries + 1):
            if remaining <= 0:
                break
            if attempt:
                self.num_retried_jobs += 1
                logger.warning("%d real steps lost with their env runner; sampling them again "
                               "on the remaining or restarted runners (retry %d of %d)",
                               remaining, attempt, self.max_retries)
            ids = self.healthy_runner_ids() or [0]
            counts = [len(c) for c in np.array_split(np.arange(remaining), len(ids))]
            calls = [(i, m, None if i in self._seeded else seed_of(i))
                     for i, m in zip(ids, counts, strict=True) if m]
            got = self._foreach(
                calls, lambda r, m, sd: (r.worker_index, sample_block(r, m, random_actions, sd,
                                                                      low, high)))
            for rid, _, _ in calls:
                if rid in got:
                    self._seeded.add(rid)
                    parts.append(got[rid])
                    remaining -= len(got[rid]["reward"])
                else:  # lost: a restarted runner starts fresh episodes
                    self._seeded.discard(rid)
            if len(got) < len(calls):
                self.restore_fn(self.group)
        if remaining > 0:
            raise RuntimeError(f"{remaining} of {n} real steps failed on every env runner "
                               f"after {self.max_retries} retries; check the env runner logs")
        out = merge_job_results(parts)
        out["episode_returns"] = self._finished_returns([c for p in parts for c in p["chunks"]])
        return out

    def _finished_returns(self, chunks) -> list[float]:
        """Returns of the training episodes that finished in these chunks (only episodes
        followed from their start; an episode's chunks arrive block by block)."""
        finished = []
        for ep_id, ret, _, started, done in chunks:
            if started:
                self._episodes[ep_id] = 0.0
            if ep_id not in self._episodes:
                continue
            self._episodes[ep_id] += ret
            if done:
                finished.append(self._episodes.pop(ep_id))
        return finished

    def reset_streams(self) -> None:
        """Forget every runner's ongoing episodes (after a restore): each runner reseeds and
        resets before its next block."""
        self._seeded.clear()
        self._episodes.clear()

    def _foreach(self, calls: list[tuple[int, int, int | None]], func) -> dict[int, Any]:
        """``func(runner, m, seed) -> (runner id, result)`` on each call's runner (id 0: the
        local runner); the results of the runners that answered, by id."""
        group = self.group
        if [c[0] for c in calls] == [0]:
            _, m, sd = calls[0]
            return dict([func(group.local_env_runner, m, sd)])
        funcs = [(lambda r, m=m, sd=sd: func(r, m, sd)) for _, m, sd in calls]
        return dict(group.foreach_env_runner(funcs, local_env_runner=False,
                                             remote_worker_ids=[c[0] for c in calls]))

    def _run_once(self, pending: list[Job], fn: Callable) -> dict[int, dict[str, Any]]:
        group, low, high = self.group, self.act_low, self.act_high
        ids = self.healthy_runner_ids()
        if ids is None:  # no remote runners: the local runner has the env
            return dict(fn(group.local_env_runner, pending, low, high))
        per_runner = [pending[i:: len(ids)] for i in range(len(ids))]
        used = [(i, js) for i, js in zip(ids, per_runner, strict=True) if js]
        funcs = [(lambda r, js=js: fn(r, js, low, high)) for _, js in used]
        timeout = None
        if self.call_timeout_s is not None:
            timeout = self.call_timeout_s * max(len(js) for _, js in used)
        out: dict[int, dict[str, Any]] = {}
        for chunk in group.foreach_env_runner(
            funcs, local_env_runner=False, remote_worker_ids=[i for i, _ in used],
            timeout_seconds=timeout,
        ):
            out.update(chunk)
        if timeout is not None:
            # a runner that did not answer in time (not dead as far as RLlib knows: e.g. it
            # is waiting for resources to restart) is marked unhealthy, so the next round
            # probes it with a bounded ping instead of waiting on it again
            manager = group._worker_manager
            for rid, js in used:
                if any(j[0] not in out for j in js) and manager.is_actor_healthy(rid):
                    logger.warning("env runner %d did not answer within %.0f s; marking it "
                                   "unhealthy", rid, timeout)
                    manager.set_actor_state(rid, healthy=False)
        return out
