"""MB-MPO's meta step over N RLlib Learners (issue 31) on local Ray: 2 learners (gloo) split
the tasks, reduce the outer step with ``torch.distributed`` and take the one-learner step.

The learners' meta steps differ from one learner's only in float summation order; the KL
Hessian of a small policy on little data is near-singular, so the configs use
``cg_damping=0.1`` and compare to ``atol 5e-5`` (as tests/unit/test_meta_distributed.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from conftest import smoke_config

from mbmpo_ray import MBMPO
from mbmpo_ray.algorithm.mbmpo.learner import learner_tasks, merge_learner_results

pytestmark = pytest.mark.usefixtures("ray_local")

# 4 tasks on 2 members: each learner gets one task of each member
SETTINGS = dict(num_tasks=4, cg_damping=0.1, meta_steps_per_iter=2)
TOL = dict(rtol=1e-4, atol=5e-5)


def _config(num_learners: int):
    cfg = smoke_config("mbmpo", **SETTINGS)
    if num_learners > 1:  # 1 (driver) + 2 x 0.5 CPUs: the session's 2
        return cfg.learners(num_learners=num_learners, num_cpus_per_learner=0.5)
    return cfg


def _learner_params(algo) -> list[dict[str, np.ndarray]]:
    """theta on every learner, in learner order."""
    res = algo.learner_group.foreach_learner(
        lambda learner: {k: v.numpy() for k, v in
                         learner.module["default_policy"].policy_params().items()})
    return [r.get() for r in res]


def _assert_close(a: dict, b: dict) -> None:
    for k in a:
        np.testing.assert_allclose(a[k], b[k], **TOL, err_msg=k)


@pytest.fixture(scope="module")
def one_learner():
    """theta, the adapted policies and the results of one iteration on the local learner."""
    algo = _config(0).build_algo()
    try:
        result = algo.train()
        return _learner_params(algo)[0], algo._adapted_params, result
    finally:
        algo.stop()


def test_learner_tasks_stride_over_the_members() -> None:
    assert [learner_tasks(20, 2, r) for r in range(2)] == [range(0, 20, 2), range(1, 20, 2)]
    assert learner_tasks(5, 1, 0) == range(5)
    for t, n in ((20, 3), (4, 4), (7, 2)):
        parts = [list(learner_tasks(t, n, r)) for r in range(n)]
        assert sorted(i for p in parts for i in p) == list(range(t))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="num_tasks"):
        learner_tasks(2, 3, 0)


def test_merge_puts_the_shares_in_task_order() -> None:
    def share(rank, tasks, diverged=""):
        diag = {"pre_return_per_task": np.array([10.0 * t for t in tasks]),
                "baseline_ev_pre": float(rank), "pre_return_mean": 5.0,
                "time_sample": 1.0 + rank}
        return {"rank": rank, "tasks": tasks, "history": [diag], "diverged": diverged,
                "theta": {"w": np.zeros(1)},
                "adapted": {t: {"w": np.full(1, t)} for t in tasks if t in (0, 2)}}

    merged = merge_learner_results([share(1, [1, 3]), share(0, [0, 2])], 4, 2)
    (diag,) = merged["history"]
    np.testing.assert_array_equal(diag["pre_return_per_task"], [0.0, 10.0, 20.0, 30.0])
    assert diag["baseline_ev_pre"] == 0.5 and diag["pre_return_mean"] == 5.0
    assert diag["time_sample"] == 2.0
    assert [p["w"][0] for p in merged["adapted_params"]] == [0, 2] and not merged["diverged"]
    diverged = merge_learner_results([share(0, [0, 2]), share(1, [1, 3], "inf")], 4, 2)
    assert diverged["diverged"] == "inf"
    assert all(p["w"][0] == 0 for p in diverged["adapted_params"])  # theta for every member
    with pytest.raises(RuntimeError, match="a learner is missing"):
        merge_learner_results([share(0, [0, 2])], 4, 2)


def test_two_learners_take_the_one_learner_step_run_on_and_restore(one_learner, tmp_path):
    """One iteration on 2 learners: both hold the same theta, equal to one learner's (same
    seed and data), and the same adapted policies and meta diagnostics; a second iteration
    runs; a checkpoint restores the 2-learner run on both learners."""
    theta_1, adapted_1, result_1 = one_learner
    algo = _config(2).build_algo()
    try:
        result = algo.train()
        a, b = _learner_params(algo)
        for k in a:
            assert np.array_equal(a[k], b[k]), f"the learners' {k} differ"
        _assert_close(a, theta_1)
        assert len(algo._adapted_params) == len(adapted_1) == 2
        for mine, theirs in zip(algo._adapted_params, adapted_1, strict=True):
            _assert_close(mine, theirs)
        meta, meta_1 = (r["learners"]["default_policy"] for r in (result, result_1))
        assert meta_1["ls_accepted_mean_over_steps"] == 1.0  # theta did move
        for key in ("pre_return_mean", "post_return_mean", "surrogate_after", "kl_after",
                    "pre_return_per_member_min"):
            assert meta[key] == pytest.approx(meta_1[key], rel=1e-4, abs=1e-5), key
        result = algo.train()
        assert result["training_iteration"] == 2 and np.isfinite(result["episode_return_mean"])
        theta_2 = _learner_params(algo)[0]
        algo.save_to_path(str(tmp_path))
    finally:
        algo.stop()
    restored = MBMPO.from_checkpoint(str(tmp_path))
    try:
        assert restored.config.num_learners == 2
        for params in _learner_params(restored):
            for k, v in theta_2.items():
                assert np.array_equal(params[k], v), k
        assert restored.train()["training_iteration"] == 3
    finally:
        restored.stop()


@pytest.mark.parametrize("algo_name", ["mbmpo", "mbpo"])
def test_a_killed_learner_gives_a_clear_error_and_the_run_resumes(algo_name, tmp_path):
    """A learner killed between iterations: the next train() says what happened and what to
    do (no hang: the survivor's collective fails when its peer's connection closes); the
    last checkpoint restores on 2 fresh learners and trains on."""
    algo = (_config(2) if algo_name == "mbmpo" else _mbpo_config(2, 8)).build_algo()
    try:
        algo.train()
        algo.save_to_path(str(tmp_path))
        ray.kill(algo.learner_group._workers[1], no_restart=True)
        with pytest.raises(RuntimeError, match="learners' results.*restore the run"):
            algo.train()
    finally:
        algo.stop()
    restored = type(algo).from_checkpoint(str(tmp_path))
    try:
        assert restored.train()["training_iteration"] == 2
    finally:
        restored.stop()


# ---------------------------------------------------------------------- MBPO
def _mbpo_config(num_learners: int, batch_per_learner: int):
    cfg = smoke_config("mbpo", train_batch_size_per_learner=batch_per_learner, real_ratio=0.25)
    if num_learners > 1:
        return cfg.learners(num_learners=num_learners, num_cpus_per_learner=0.5)
    return cfg


def _sac_state(algo) -> list[dict[str, np.ndarray]]:
    """The SAC module's parameters (critics, targets, policy) and log_alpha, per learner."""
    def read(learner):
        out = {k: v.detach().cpu().numpy().copy()
               for k, v in learner.module["default_policy"].state_dict().items()}
        out["log_alpha"] = learner.curr_log_alpha["default_policy"].detach().cpu().numpy()
        return out
    return [r.get() for r in algo.learner_group.foreach_learner(read)]


def test_mbpo_two_learners_take_the_step_of_one_with_the_whole_batch():
    """Same data (real rows and model buffer) and state on 1 learner with a 16-row batch and
    on 2 learners with 8 rows each: after a block of 6 SAC updates (each: averaged gradients,
    Adam, Polyak) both learners hold identical parameters, equal to the one learner's up to
    float summation order. Then a whole iteration keeps the 2 learners identical."""
    one = _mbpo_config(0, 16).build_algo()
    two = _mbpo_config(2, 8).build_algo()
    try:
        one.train()  # real data, a fitted ensemble, a model buffer, some SAC steps
        two.learner_group.set_state(one.learner_group.get_state())
        real = ray.put(one.buffer.all())
        block = dict(new_real=None, num_updates=6, seed=123)
        for algo in (one, two):
            algo.learner_group.foreach_learner(lambda lr, real: lr.load_real(real), real=real)
            res = algo.learner_group.foreach_learner(lambda lr, **kw: lr.train_block(**kw),
                                                     **block)
            assert all(r.ok for r in res)
        (ref,), (a, b) = _sac_state(one), _sac_state(two)
        moved = _sac_state(_mbpo_config(0, 16).build_algo())[0]  # (a fresh init differs)
        assert not all(np.array_equal(ref[k], moved[k]) for k in ref)
        for k in ref:
            assert np.array_equal(a[k], b[k]), f"the learners' {k} differ"
            np.testing.assert_allclose(a[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
        two.train()
        a, b = _sac_state(two)
        for k in a:
            assert np.array_equal(a[k], b[k]), f"after an iteration the learners' {k} differ"
        sizes = [r.get() for r in two.learner_group.foreach_learner(
            lambda lr: (len(lr._model_buffer), len(lr._real)))]
        assert sizes[0] == sizes[1] and sizes[0][0] > 0
    finally:
        one.stop()
        two.stop()
