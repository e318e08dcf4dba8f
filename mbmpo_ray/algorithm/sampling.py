"""Real-env sampling for the algorithms: seeded jobs spread over the env runners, retried on
restarted runners when a runner dies, returned as transition arrays.

A job is ``(job_id, params | None, sample_kwargs, seed)``: it loads ``params`` into the runner's
module (None: keep the runner's weights), reseeds everything random on the runner and calls
``EnvRunner.sample(**sample_kwargs)``. A job therefore gives the same transitions wherever and
whenever it runs, so a restored or retried run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

TRANSITION_KEYS = ("obs", "act", "next_obs", "reward", "done")
MAX_SAMPLE_RETRIES = 3

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
    out = []
    for job_id, params, kwargs, seed in jobs:
        if params is not None:
            runner.module.set_policy_params(params)
        torch.manual_seed(seed)
        runner.env.action_space.seed(seed)
        runner._seed, runner._needs_initial_reset = seed, True  # reset envs with this seed
        episodes = runner.sample(force_reset=True, **kwargs)
        out.append((job_id, episodes_to_arrays(episodes, act_low, act_high)))
    return out


def merge_job_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the transitions and episode statistics of several jobs, in job order."""
    filled = [p for p in parts if len(p["reward"])] or parts[:1]
    out = {k: np.concatenate([p[k] for p in filled]) for k in TRANSITION_KEYS}
    for k in ("episode_returns", "episode_lengths"):
        out[k] = [x for p in parts for x in p[k]]
    return out


class RealSampler:
    """Runs sampling jobs on an RLlib ``EnvRunnerGroup``.

    Jobs are spread round-robin over the healthy remote runners (or run on the local runner
    when the group has none). A job whose runner died is retried on the restarted runners
    (``restore_fn(group)``, the Algorithm's ``restore_env_runners``), up to
    ``MAX_SAMPLE_RETRIES`` times, so every job completes or a clear error is raised.
    """

    def __init__(self, group, restore_fn: Callable[[Any], Any], act_low, act_high):
        self.group = group
        self.restore_fn = restore_fn
        self.act_low, self.act_high = act_low, act_high

    def num_runners(self) -> int:
        """Healthy remote runners (at least 1: the local runner)."""
        return max(1, self.group.num_healthy_remote_workers())

    def run(self, jobs: list[Job]) -> dict[str, Any]:
        """Run ``jobs`` and return their merged results (see :func:`merge_job_results`)."""
        results: dict[int, dict[str, Any]] = {}
        pending = list(jobs)
        for _ in range(MAX_SAMPLE_RETRIES + 1):
            if not pending:
                break
            results.update(self._run_once(pending))
            pending = [j for j in pending if j[0] not in results]
            if pending:
                self.restore_fn(self.group)
        if pending:
            raise RuntimeError(
                f"{len(pending)} sampling jobs failed on every env runner after "
                f"{MAX_SAMPLE_RETRIES} retries; check the env runner logs")
        return merge_job_results([results[j[0]] for j in jobs])

    def _run_once(self, pending: list[Job]) -> dict[int, dict[str, Any]]:
        group, low, high = self.group, self.act_low, self.act_high
        ids = group.healthy_env_runner_ids() if group.num_remote_env_runners() else []
        if group.num_remote_env_runners() and not ids:
            self.restore_fn(group)
            ids = group.healthy_env_runner_ids()
        if not ids:  # local sampling
            return dict(run_jobs(group.local_env_runner, pending, low, high))
        per_runner = [pending[i:: len(ids)] for i in range(len(ids))]
        used = [(i, js) for i, js in zip(ids, per_runner, strict=True) if js]
        funcs = [(lambda r, js=js: run_jobs(r, js, low, high)) for _, js in used]
        out: dict[int, dict[str, Any]] = {}
        for chunk in group.foreach_env_runner(
            funcs, local_env_runner=False, remote_worker_ids=[i for i, _ in used]
        ):
            out.update(chunk)
        return out
