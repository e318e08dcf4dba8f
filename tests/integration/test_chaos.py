"""Fault injection on local Ray, for both algorithms: env runners and model trainers killed
between and during ``train()`` calls, all runners at once and again and again, trainers that
cannot come back, poisoned data.

Every faulted run must complete and lose or duplicate no transition. MB-MPO's sampling jobs
carry their policy and seed, so a run whose faults only kill actors ends with exactly the
buffer of an unfaulted run; MBPO's runners continue their episodes across blocks, so a lost
runner's unfinished episode restarts (seeded) and the data differs after the first fault.
"""

import collections
import logging
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from conftest import smoke_config

from mbmpo_ray.envs import functions as F
from mbmpo_ray.envs import register_model_functions

pytestmark = pytest.mark.usefixtures("ray_local")

ITERATIONS = 6


def chaos_config(algo="mbmpo", **overrides):
    """2 env runners + 1 model trainer that all fit next to each other on num_cpus=2, with
    short fault-detection timeouts so a lost actor costs seconds, not minutes."""
    settings = dict(num_model_trainers=1, num_cpus_per_model_trainer=0.25)
    settings.update(overrides)
    return (
        smoke_config(algo, **settings)
        .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5)
        # a restarted env runner is a fresh worker process (Ray, torch, RLlib imports): on two
        # cores busy with another run that took over 60 s once (2026-11-24), seconds when idle
        .fault_tolerance(env_runner_health_probe_timeout_s=3,
                         env_runner_restore_timeout_s=180)
    )


def runners(algo):
    return list(algo.env_runner_group._worker_manager._actors.values())


def kill_runner(algo, index):
    ray.kill(runners(algo)[index], no_restart=False)


def kill_all_runners(algo):
    for actor in runners(algo):
        ray.kill(actor, no_restart=False)


def kill_trainer(algo):
    ray.kill(algo.fitter.trainers[0], no_restart=False)


def during(algo, phase, kill):
    """Run ``kill(algo)`` from a thread shortly after ``phase`` ("sample" or "fit") starts
    inside the next ``train()``."""
    started = threading.Event()
    sampling = "run_steps" if algo.ALGO_NAME == "mbpo" else "run"
    target, name = ((algo.sampler, sampling) if phase == "sample"
                    else (algo.fitter, "_collect"))
    original = getattr(target, name)

    def wrapped(*args, **kwargs):
        started.set()
        return original(*args, **kwargs)

    setattr(target, name, wrapped)

    def killer():
        if started.wait(timeout=120):
            time.sleep(0.02)
            kill(algo)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


# iteration -> (what is killed, when)
SCHEDULE = [
    ("trainer", "before"),
    ("runner 0", "before"),
    ("all runners", "before"),
    ("runner 1", "during sampling"),
    ("trainer", "during fitting"),
    ("trainer", "before"),
]


def inject(algo, what, when):
    kill = {
        "runner 0": lambda a: kill_runner(a, 0),
        "runner 1": lambda a: kill_runner(a, 1),
        "trainer": kill_trainer,
        "all runners": kill_all_runners,
    }[what]
    if when == "before":
        kill(algo)
        return None
    return during(algo, "sample" if "sampling" in when else "fit", kill)


@pytest.fixture(scope="module")
def unfaulted_buffer():
    """The same run with no actors at all (sampling and fitting on the driver): the jobs
    and seeds do not depend on where they run."""
    algo = chaos_config(num_model_trainers=0).env_runners(num_env_runners=0).build_algo()
    try:
        for _ in range(ITERATIONS):
            algo.train()
        return algo.buffer.all()
    finally:
        algo.stop()


def test_chaos_every_iteration_kills_an_actor(algo_name, request, caplog):
    caplog.set_level(logging.WARNING)
    algo = chaos_config(algo_name).build_algo()
    sampler = algo.sampler
    sampler_run, sampler_steps, fitter_collect = sampler.run, sampler.run_steps, \
        algo.fitter._collect
    faults = 0
    try:
        for it, (what, when) in enumerate(SCHEDULE):
            thread = inject(algo, what, when)
            result = algo.train()
            if thread is not None:
                thread.join(timeout=60)
                sampler.run, sampler.run_steps = sampler_run, sampler_steps
                algo.fitter._collect = fitter_collect
            faults += 1
            assert result["training_iteration"] == it + 1
            assert np.isfinite(result["model"]["val_loss_mean"])
            # buffer == real steps sampled, every row once
            assert len(algo.buffer) == result["num_real_steps_lifetime"]
            obs = algo.buffer.all()["obs"]
            assert len(np.unique(obs, axis=0)) == len(obs)
        assert faults == ITERATIONS == len(SCHEDULE)
        if algo_name == "mbmpo":  # the faults changed nothing: the unfaulted run's buffer
            final = algo.buffer.all()
            for k, v in request.getfixturevalue("unfaulted_buffer").items():
                np.testing.assert_array_equal(final[k], v, err_msg=k)
        # RLlib's own counters (which its restore_env_runners increments) are RLlib's
        # defaultdict still, after repeated restores; MB-MPO's are apart
        assert isinstance(algo._counters, collections.defaultdict)
        assert algo._counters["total_num_restored_workers"] >= 1
        assert algo.counters["iterations"] == ITERATIONS
    finally:
        algo.stop()


def test_repeated_kills_of_all_runners_during_train(algo_name, caplog):
    """A long outage: every runner killed again and again for 8 s while ``train()`` samples
    (the restarted ones die too). Sampling waits for Ray to bring them back and the run goes
    on: no error, no transition lost or duplicated."""
    caplog.set_level(logging.WARNING)
    algo = chaos_config(algo_name, num_model_trainers=0).build_algo()
    try:
        algo.train()
        stop = time.monotonic() + 8

        def outage():
            while time.monotonic() < stop:
                kill_all_runners(algo)
                time.sleep(0.5)

        thread = threading.Thread(target=outage, daemon=True)
        thread.start()
        result = algo.train()
        thread.join()
        result = algo.train()
        assert result["training_iteration"] == 3
        assert len(algo.buffer) == result["num_real_steps_lifetime"]
        obs = algo.buffer.all()["obs"]
        assert len(np.unique(obs, axis=0)) == len(obs)
        assert algo._counters["total_num_restored_workers"] >= 2
    finally:
        algo.stop()


def test_trainer_that_cannot_be_scheduled_falls_back_to_the_driver(caplog):
    """A model trainer asking for more CPUs than the cluster has never starts (as one that
    cannot get its resources back after a kill): each fit gives it up within the probe
    timeout, fits its members on the driver and says so."""
    caplog.set_level(logging.WARNING)
    cfg = chaos_config(num_cpus_per_model_trainer=64).env_runners(num_env_runners=0)
    cfg.fault_tolerance(env_runner_health_probe_timeout_s=2)
    algo = cfg.build_algo()
    try:
        t0 = time.perf_counter()
        for _ in range(2):
            result = algo.train()
        assert time.perf_counter() - t0 < 45
        assert result["num_model_trainer_fallbacks_lifetime"] == 2
        assert result["model"]["driver_fallbacks"] == 1
        assert np.isfinite(result["model"]["val_loss_mean"])
        assert "fitting its members on the driver" in caplog.text
    finally:
        algo.stop()


def test_actors_dead_for_good(algo_name):
    """A runner and a trainer killed for good: sampling goes on on the other runner, the
    trainer's members are fitted on the driver and a new trainer takes over. Then the last
    runner dies for good too: a clear error within the restore timeout, not a hang."""
    cfg = chaos_config(algo_name).fault_tolerance(env_runner_restore_timeout_s=3)
    algo = cfg.build_algo()
    try:
        algo.train()
        ray.kill(runners(algo)[0], no_restart=True)
        ray.kill(algo.fitter.trainers[0], no_restart=True)
        for _ in range(2):
            result = algo.train()
        expected = 300 if algo_name == "mbmpo" else 250  # smoke: 100 + 3 x 100 or 3 x 50
        assert len(algo.buffer) == result["num_real_steps_lifetime"] == expected
        assert result["num_model_trainer_fallbacks_lifetime"] >= 1
        assert algo.env_runner_group.num_healthy_remote_workers() == 1

        ray.kill(runners(algo)[1], no_restart=True)
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="none of the 2 env runners came back"):
            algo.train()
        assert time.perf_counter() - t0 < 30
    finally:
        algo.stop()


# ---------------------------------------------------------------- poisoned and exploding data
class _PoisonedPendulum(gym.Wrapper):
    """Pendulum whose observation is NaN (or huge) at every 7th step (its own state stays
    fine: a non-finite action, from a policy fed a NaN observation, is applied as 0)."""

    def __init__(self, value=float("nan"), every=7, **kwargs):
        from gymnasium.envs.classic_control.pendulum import PendulumEnv

        super().__init__(PendulumEnv(**kwargs))
        self.value, self.every, self.t = value, every, 0

    def step(self, action):
        action = np.where(np.isfinite(action), action, 0.0)
        obs, rew, term, trunc, info = self.env.step(action)
        self.t += 1
        if self.t % self.every == 0:
            obs = np.full_like(obs, self.value)
        return obs, rew, term, trunc, info

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)


@pytest.fixture
def poisoned_env(monkeypatch):
    """Registers a poisoned Pendulum for one test (no registration outlives it)."""
    from mbmpo_ray.envs import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    ids = []

    def register(value):
        env_id = f"PoisonedPendulum{len(ids)}-v0"
        gym.register(env_id, entry_point=lambda **kw: _PoisonedPendulum(value, **kw))
        register_model_functions(env_id, F.pendulum_reward, F.no_termination)
        ids.append(env_id)
        return env_id

    yield register
    for env_id in ids:
        gym.registry.pop(env_id, None)


@pytest.mark.parametrize("value", [float("nan"), 1e18, 1e30],
                         ids=["nan", "exploding", "huge"])
def test_bad_observations_are_dropped_and_counted(algo_name, value, poisoned_env, caplog):
    caplog.set_level(logging.WARNING)
    env_id = poisoned_env(value)
    algo = smoke_config(algo_name).environment(env_id).build_algo()
    try:
        dropped = 0
        for it in range(2):
            result = algo.train()
            dropped += result["num_dropped_transitions"]
            n_new = result["env_runners"]["num_env_steps_sampled"]
            # every bad obs spoils two rows (as next_obs, then as obs): ~2/7 of the rows
            assert 0 < result["num_dropped_transitions"] < 0.5 * n_new
            assert result["training_iteration"] == it + 1
        assert result["num_dropped_transitions_lifetime"] == dropped
        assert len(algo.buffer) == result["num_real_steps_lifetime"] - dropped
        data = algo.buffer.all()
        assert all(np.isfinite(v).all() and np.abs(v).max() < 1e8 for v in data.values())
        assert np.isfinite(result["model"]["val_loss_mean"])
        # the model's normaliser saw only the kept rows (1e30 gave it a std of 1.6e29 once)
        assert float(algo.fitter.ensemble.input_normalizer.std.max()) < 1e3
        assert result["imagination_diverged"] == 0
        assert "dropped" in caplog.text
    finally:
        algo.stop()


def test_diverged_imagination_is_flagged_and_leaves_the_policy_alone(caplog):
    """An ensemble predicting absurd states (weights blown up after the fit) makes imagined
    returns explode: the iteration is flagged, the policy keeps its parameters."""
    caplog.set_level(logging.WARNING)
    algo = smoke_config("mbmpo", imagine_clip_margin=None).build_algo()
    try:
        algo.train()
        fit, good = algo.fitter.fit, {}

        def fit_then_explode(data, seed):
            out = fit(data, seed)
            good.update({k: v.clone() for k, v in algo.fitter.ensemble_state().items()})
            with torch.no_grad():
                for name, p in algo.fitter.ensemble.named_parameters():
                    if "bias" in name:
                        p.fill_(1e12)
            return out

        algo.fitter.fit = fit_then_explode
        before = {k: v.clone() for k, v in algo.learner_group._learner.module[
            "default_policy"].policy_params().items()}
        result = algo.train()
        after = algo.learner_group._learner.module["default_policy"].policy_params()
        assert result["imagination_diverged"] == 1
        for k, v in before.items():
            assert torch.equal(v, after[k]), k
        assert all(np.isfinite(p).all() for ps in algo._adapted_params for p in ps.values())
        assert "imagination diverged" in caplog.text
        # the next iteration (models refitted normally) is healthy again
        algo.fitter.fit = fit
        algo.fitter.ensemble.load_state_dict(good)
        assert algo.train()["imagination_diverged"] == 0
    finally:
        algo.stop()
