"""MB-MPO's meta step with its tasks split over N learners (issue 31), without Ray.

Two learners are simulated in one process, as two threads whose ``all_reduce`` meets at a
barrier, and (slower) as two processes of a ``torch.distributed`` gloo group. Each learner
samples, adapts and differentiates only its tasks; the reduction combines the outer gradient,
every Hessian-vector product and the line-search values. The learners must end with identical
parameters, equal to one learner's holding all tasks up to float summation order.

The KL Hessian of a small policy on little data is singular (the damping 1e-5 is its smallest
eigenvalue), so ten CG iterations in float32 amplify a different summation order ~1e5 times;
the float32 cases use a damping of 0.1 (condition ~20), and one float64 case the default. Even
so, CG's last iterations work on residuals ~1e-5 of the gradient, where float32 rounding of
``H v`` is no longer small: the float32 parameters agree to ~1e-5 (``atol 5e-5``).
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from mbmpo_ray.imagination import ImaginedBatch, imagine
from mbmpo_ray.meta import (
    GaussianMLPPolicy,
    MetaConfig,
    adapt_policies,
    meta_step,
    task_mean_reduction,
    task_range,
    torch_distributed_sum,
)

OBS, ACT, N, H = 2, 2, 6, 8


# ------------------------------------------------------------------------------------- helpers
@dataclasses.dataclass
class _Gain:
    """One-member toy model of task t: ``next = obs + gain * act``."""

    gain: float
    ensemble_size: int = 1

    def sample_next_obs(self, obs, act, *, deterministic=True, generator=None):
        return obs + self.gain * act


def _sample_fn(policy: GaussianMLPPolicy, tasks: range, seed: int = 0):
    """Samples ``tasks`` (global ids) one at a time, each with its own model (gain) and its
    own random stream per call, so a task's rollouts do not depend on how the tasks are split
    over learners (what a multi-learner imagination sampler must also guarantee)."""
    calls = [0]

    def sample_fn(task_params):
        call, calls[0] = calls[0], calls[0] + 1
        parts = []
        for i, t in enumerate(tasks):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + call * 1009 + t)
            start = torch.randn(1, N, OBS, generator=gen, dtype=task_params["log_std"].dtype)
            params_t = {k: v[i : i + 1] for k, v in task_params.items()}
            parts.append(imagine(
                _Gain(0.05 + 0.05 * t),
                lambda obs, g, p=params_t: policy.sample(p, obs, g, batched=True),
                start, H, lambda o, a, o2: -(o2**2).sum(-1), None,
                action_low=-1.0, action_high=1.0, generator=gen))
        return ImaginedBatch(**{
            f.name: None if getattr(parts[0], f.name) is None
            else torch.cat([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(ImaginedBatch)})

    return sample_fn


class _ThreadAllReduce:
    """A sum over ``n`` threads meeting at a barrier (in rank order: the same on every rank)."""

    def __init__(self, n: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * n
        self.barrier = threading.Barrier(n, timeout=120)
        self.calls = [0] * n

    def for_rank(self, rank: int):
        def all_reduce(x: torch.Tensor) -> torch.Tensor:
            self.calls[rank] += 1
            self.slots[rank] = x.detach().clone()
            self.barrier.wait()
            out = self.slots[0].clone()
            for s in self.slots[1:]:
                out = out + s
            self.barrier.wait()  # nobody overwrites a slot before everyone has read them
            return out

        return all_reduce


def _policy_and_params(dtype: torch.dtype = torch.float32):
    policy = GaussianMLPPolicy(OBS, ACT, hidden_sizes=(8,))
    init = policy.init_params(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)  # an output layer away from 0: real inner gradients
    return policy, {k: (v + 0.3 * torch.randn(v.shape, generator=g)).to(dtype)
                    for k, v in init.items()}


def _run_steps(cfg: MetaConfig, steps: int, tasks: range | None = None, all_reduce=None,
               dtype: torch.dtype = torch.float32):
    policy, params = _policy_and_params(dtype)
    sample_fn = _sample_fn(policy, range(cfg.num_tasks) if tasks is None else tasks)
    history = []
    for _ in range(steps):
        params, diag = meta_step(policy, params, sample_fn, cfg, tasks=tasks,
                                 all_reduce=all_reduce)
        history.append(diag)
    return params, history


def _run_learners(cfg: MetaConfig, steps: int, num_learners: int,
                  dtype: torch.dtype = torch.float32):
    """The meta steps of ``num_learners`` learner threads; their results and call counts."""
    reducer = _ThreadAllReduce(num_learners)

    def learner(rank: int):
        try:
            return _run_steps(cfg, steps, task_range(cfg.num_tasks, num_learners, rank),
                              reducer.for_rank(rank), dtype)
        except BaseException:
            reducer.barrier.abort()  # do not leave the other learner waiting
            raise

    with ThreadPoolExecutor(num_learners) as pool:
        results = list(pool.map(learner, range(num_learners)))
    return results, reducer.calls


def _assert_params_close(a: dict, b: dict) -> None:
    """float32: ``atol 5e-5``; float64: ``1e-8`` (``rtol`` twice that; the summation order
    alone moved the result by up to 1.7e-9 in 1 run of 3)."""
    tol = 1e-8 if a["log_std"].dtype == torch.float64 else 5e-5
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=2 * tol, atol=tol,
                                   msg=lambda m, k=k: f"{k}: {m}")


BASE = {"inner_lr": 0.1, "max_kl": 0.02, "cg_damping": 0.1}


GLOBAL_DIAG = ("surrogate_before", "surrogate_after", "kl_after", "outer_grad_norm",
               "pre_return_mean", "post_return_mean", "adaptation_gain", "inner_grad_norm")


# ------------------------------------------------------------------------------------- tests
def test_task_range_splits_contiguously_and_evenly() -> None:
    assert [task_range(20, 3, r) for r in range(3)] == [range(0, 7), range(7, 14),
                                                        range(14, 20)]
    assert [task_range(4, 2, r) for r in range(2)] == [range(0, 2), range(2, 4)]
    assert task_range(5, 1, 0) == range(5)
    for t, n in ((20, 8), (7, 7), (3, 2)):
        parts = [task_range(t, n, r) for r in range(n)]
        assert [i for p in parts for i in p] == list(range(t))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank"):
        task_range(4, 2, 2)
    with pytest.raises(ValueError, match="at least as many tasks"):
        task_range(2, 3, 0)


def test_task_mean_reduction_weights_each_share() -> None:
    with pytest.raises(ValueError, match="need an all_reduce"):
        task_mean_reduction(None, 2, 4)
    x = torch.tensor([1.0, 2.0])
    assert task_mean_reduction(None, 4, 4)(x) is x  # one learner: the identity itself
    # shares of 3 and 1 tasks with local means 1 and 5: the mean over 4 tasks is 2
    got = task_mean_reduction(lambda v: v + torch.tensor(5.0) * 0.25, 3, 4)(torch.tensor(1.0))
    assert float(got) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("overrides", "num_tasks", "dtype"),
    [
        ({}, 4, torch.float32),  # TRPO, second order, Gauss-Newton HVP on every 5th rollout
        ({}, 5, torch.float32),  # an uneven split: 3 + 2 tasks
        ({"hvp_method": "exact", "hvp_subsample": 2}, 4, torch.float32),
        ({"num_inner_steps": 2, "first_order": True}, 4, torch.float32),
        ({"outer_optimizer": "ppo"}, 4, torch.float32),
        ({"cg_damping": 1e-5}, 4, torch.float64),  # the default damping
    ],
)
def test_two_learners_take_the_single_learner_step(overrides: dict, num_tasks: int,
                                                   dtype: torch.dtype) -> None:
    cfg = MetaConfig(**{"num_tasks": num_tasks, **BASE, **overrides})
    steps = 3
    single, single_hist = _run_steps(cfg, steps, dtype=dtype)
    (a, hist_a), (b, hist_b) = _run_learners(cfg, steps, 2, dtype)[0]
    for k in single:
        assert torch.equal(a[k], b[k]), f"the learners' {k} differ"
    _assert_params_close(a, single)
    start = _policy_and_params(dtype)[1]
    assert all(single_hist[i]["ls_accepted"] == 1.0 for i in range(steps))
    assert any(not torch.equal(single[k], start[k]) for k in single)
    for step in range(steps):
        for key in GLOBAL_DIAG:
            assert hist_a[step][key] == hist_b[step][key], key
            assert hist_a[step][key] == pytest.approx(single_hist[step][key], rel=1e-4,
                                                      abs=1e-6), key
        assert hist_a[step]["ls_steps"] == single_hist[step]["ls_steps"]
        per_task = np.concatenate([hist_a[step]["pre_return_per_task"],
                                   hist_b[step]["pre_return_per_task"]])
        np.testing.assert_allclose(per_task, single_hist[step]["pre_return_per_task"],
                                   rtol=1e-5, atol=1e-6)


def test_learners_make_the_same_collectives() -> None:
    cfg = MetaConfig(num_tasks=4, **BASE)
    _, calls = _run_learners(cfg, 1, 2)
    # gradient + cg_iters + step-size products + line-search candidates + task means
    assert calls[0] == calls[1] >= 1 + cfg.cg_iters + 1 + 1 + 1


def test_adapt_policies_on_a_share_of_the_tasks() -> None:
    cfg = MetaConfig(num_tasks=4, inner_lr=0.1)
    policy, params = _policy_and_params()
    full = adapt_policies(policy, params, _sample_fn(policy, range(4)), cfg)
    shares = [adapt_policies(policy, params, _sample_fn(policy, task_range(4, 2, r)), cfg,
                             tasks=task_range(4, 2, r)) for r in range(2)]
    for k, v in full.items():
        torch.testing.assert_close(torch.cat([s[k] for s in shares]), v, rtol=1e-5, atol=1e-6)


def test_a_share_without_all_reduce_is_refused() -> None:
    cfg = MetaConfig(num_tasks=4)
    policy, params = _policy_and_params()
    with pytest.raises(ValueError, match="need an all_reduce"):
        meta_step(policy, params, _sample_fn(policy, range(2)), cfg, tasks=range(2))


# ------------------------------------------------------------------------- torch.distributed
def _gloo_worker(rank: int, world: int, init_file: str, out_dir: str, overrides: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        cfg = MetaConfig(**overrides)
        params, hist = _run_steps(cfg, 2, task_range(cfg.num_tasks, world, rank),
                                  torch_distributed_sum())
        torch.save({"params": params, "surrogate_after": hist[-1]["surrogate_after"]},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_take_the_single_process_step(tmp_path) -> None:
    import torch.multiprocessing as mp

    overrides = {"num_tasks": 4, **BASE}
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "pg"), str(tmp_path), overrides),
             nprocs=2, join=True)
    single, hist = _run_steps(MetaConfig(**overrides), 2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for k in single:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    _assert_params_close(r0["params"], single)
    assert r0["surrogate_after"] == r1["surrogate_after"]
    assert r0["surrogate_after"] == pytest.approx(hist[-1]["surrogate_after"], rel=1e-4)
