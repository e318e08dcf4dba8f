"""MBMPO on local Ray with tiny configs (seconds per iteration)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import tune_configs
from mbmpo_ray import MBMPO, MBMPOConfig
from mbmpo_ray.envs import SUPPORTED_ENV_IDS, register_model_functions

pytestmark = pytest.mark.usefixtures("ray_local")


def tiny(env="Pendulum-v1", **overrides):
    return tune_configs.load_config("pendulum", "smoke", **overrides).environment(env)


def policy_params(algo):
    return algo.learner_group._learner.module["default_policy"].policy_params()


@pytest.mark.parametrize("env_id", SUPPORTED_ENV_IDS)
def test_smoke_every_supported_env(env_id):
    algo = tiny(env_id).build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        assert result["num_env_steps_sampled_lifetime"] == len(algo.buffer) >= 200
        assert np.isfinite(result["episode_return_mean"])
        assert np.isfinite(result["model"]["val_loss_mean"])
        assert result["num_imagined_steps_lifetime"] > 0
        # this iteration's adapted policies, measured on the real env
        assert np.isfinite(result["post_adaptation_return_mean"])
        assert np.isfinite(result["sample_return_mean"])
        for phase in ("sample_real", "fit_models", "meta_update", "evaluate_real"):
            assert result["timers"][phase] > 0
    finally:
        algo.stop()


def test_remote_runners_and_model_trainers_and_fault_tolerance():
    import ray

    cfg = tiny(num_model_trainers=2, num_cpus_per_model_trainer=0).env_runners(
        num_env_runners=2, num_cpus_per_env_runner=0
    )
    algo = cfg.build_algo()
    try:
        algo.train()
        n_before = len(algo.buffer)
        kept = algo.buffer.all()["obs"].copy()
        # crash one env runner and one model trainer: the next iteration still completes
        runner = algo.env_runner_group._worker_manager._actors[1]
        ray.kill(runner, no_restart=False)
        ray.kill(algo.fitter.trainers[0], no_restart=False)
        result = algo.train()
        assert len(algo.buffer) == n_before + cfg.real_steps_per_iter
        np.testing.assert_array_equal(algo.buffer.all()["obs"][:n_before], kept)
        assert np.isfinite(result["model"]["val_loss_mean"])
    finally:
        algo.stop()


def test_checkpoint_round_trip(tmp_path):
    algo = tiny().build_algo()
    try:
        algo.train()
        algo.save_to_path(str(tmp_path))
        restored = MBMPO.from_checkpoint(str(tmp_path))
        try:
            for k, v in algo.buffer.all().items():
                np.testing.assert_array_equal(v, restored.buffer.all()[k])
            for k, v in algo.fitter.ensemble.state_dict().items():
                assert torch.equal(v, restored.fitter.ensemble.state_dict()[k]), k
            for k, v in policy_params(algo).items():
                assert torch.equal(v, policy_params(restored)[k]), k
            assert restored.counters == algo.counters
            assert restored.iteration == algo.iteration == 1
            assert len(restored._adapted_params) == 2
            assert restored.fitter.optimizer_states[0] is not None
            # a restored run continues exactly as the uninterrupted one
            r1, r2 = algo.train(), restored.train()
            assert r1["num_real_steps_lifetime"] == r2["num_real_steps_lifetime"] == 200
            assert restored.iteration == 2
            for k, v in algo.buffer.all().items():
                np.testing.assert_array_equal(v, restored.buffer.all()[k])
            for k, v in policy_params(algo).items():
                torch.testing.assert_close(v, policy_params(restored)[k], rtol=0, atol=1e-6)
            assert r1["episode_return_mean"] == pytest.approx(r2["episode_return_mean"])
        finally:
            restored.stop()
    finally:
        algo.stop()


def test_evaluate_pre_and_post_adaptation():
    algo = tiny().build_algo()
    try:
        algo.train()
        res = algo.evaluate(num_episodes=2)
        assert len(res["episode_returns"]) == len(res["post_adaptation_episode_returns"]) == 2
        assert res["explore"] is True  # the config's eval_explore
        assert res["episode_return_std"] == pytest.approx(np.std(res["episode_returns"]))
        assert np.isfinite(res["post_adaptation_return_mean"])
        assert np.isfinite(res["post_adaptation_return_std"])
        assert algo.evaluate(num_episodes=1, explore=False)["explore"] is False
    finally:
        algo.stop()


def test_imagined_start_states_are_reset_states_or_the_buffer():
    """imagine_from='reset': fresh initial states of the real env (HalfCheetah-v5 resets lie
    within +-0.1 of qpos0 and have small velocities; seeded, so restores draw the same);
    'buffer': every state in the buffer."""
    for mode in ("reset", "buffer"):
        algo = tiny("HalfCheetah-v5", imagine_from=mode, num_start_states=300).build_algo()
        try:
            algo.train()
            obs = algo.buffer.all()["obs"]
            starts = algo._start_states(obs, seed=7)
            if mode == "buffer":
                assert starts is obs
                continue
            assert starts.shape == (300, obs.shape[1])
            np.testing.assert_array_equal(starts, algo._start_states(obs, seed=7))
            assert not np.array_equal(starts, algo._start_states(obs, seed=8))
            assert len(np.unique(starts, axis=0)) == 300
            # positions (after the kept x) within the reset noise; the buffer wanders further
            assert np.abs(starts[:, 1:9]).max() <= 0.1 + 1e-6
            assert np.abs(obs[:, 1:9]).max() > 0.1
        finally:
            algo.stop()


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(imagine_from="replay"), "imagine_from"),
        (dict(num_tasks=3), "multiple of ensemble_size"),
        (dict(inner_lr=-0.1), "inner_lr"),
        (dict(horizon=0), "horizon"),
        (dict(num_model_trainers=5), "num_model_trainers"),
        (dict(outer_optimizer="adam"), "outer_optimizer"),
        (dict(model_device="gpu"), "model_device"),
        (dict(model_device="cuda", num_model_trainers=1), "num_model_trainers=0"),
    ],
)
def test_validate_rejects_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        tiny(**settings).validate()


def test_validate_rejects_env_without_model_functions():
    with pytest.raises(ValueError, match="register_model_functions"):
        MBMPOConfig().environment("MountainCarContinuous-v0").validate()


def test_discrete_action_space_is_rejected(monkeypatch):
    from mbmpo_ray.envs import registry

    # a registration for this test only (tests/unit/test_envs.py checks that none leaks)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model_functions(
        "CartPole-v1", lambda o, a, n: o[..., 0] * 0 + 1, lambda n: n[..., 0] > 1e9
    )
    with pytest.raises(ValueError, match="continuous"):
        MBMPOConfig().validate_spaces(gym.make("CartPole-v1").observation_space,
                                      gym.make("CartPole-v1").action_space)


def test_tune_runs_registered_name(tmp_path):
    from ray import tune

    tuner = tune.Tuner(
        "MBMPO",
        param_space=tiny(),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), stop={"training_iteration": 1}, verbose=0
        ),
    )
    results = tuner.fit()
    assert not results.errors
    assert results[0].metrics["num_real_steps_lifetime"] == 100


def test_remote_learner_and_trial_resources():
    cfg = tiny(num_model_trainers=2, num_cpus_per_model_trainer=0.5).learners(
        num_learners=1, num_cpus_per_learner=0.5)
    pgf = MBMPO.default_resource_request(cfg)
    # the two model-trainer actors are part of the trial's placement group
    assert pgf.bundles[-2:] == [{"CPU": 0.5}, {"CPU": 0.5}]
    algo = cfg.build_algo()
    try:
        result = algo.train()
        assert np.isfinite(result["learners"]["default_policy"]["kl_after"])
        assert len(algo._adapted_params) == 2
    finally:
        algo.stop()


def test_results_pass_rllibs_checker_and_carry_the_documented_keys():
    """RLlib's own result checker accepts train() results; the meta diagnostics are the
    Learner's (learners/default_policy/), and every key the README documents is there."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, LEARNER_RESULTS
    from ray.rllib.utils.test_utils import check_train_results_new_api_stack

    from mbmpo_ray.reporting import LEARNER_RESULTS as OUR_LEARNER_RESULTS

    assert OUR_LEARNER_RESULTS == (LEARNER_RESULTS, DEFAULT_MODULE_ID)
    algo = tiny().build_algo()
    try:
        for it in (1, 2):
            result = algo.train()
            check_train_results_new_api_stack(result)
            learner = result[LEARNER_RESULTS][DEFAULT_MODULE_ID]
            for key in ("kl_after", "pre_return_mean", "post_return_mean", "surrogate_after",
                        "inner_grad_norm", "baseline_ev_pre"):
                assert np.isfinite(learner[key]), key
            assert "meta" not in result  # one home for the meta diagnostics
            runners = result[ENV_RUNNER_RESULTS]
            assert runners["num_env_steps_sampled_lifetime"] == 100 * it
            assert runners["episode_return_mean"] == result["episode_return_mean"]
            for key in ("episode_return_mean", "post_adaptation_return_mean",
                        "sample_return_mean", "episode_len_mean"):
                assert np.isfinite(result[key]), key
            # random actions only sample the first iteration; NaN marks "not measured"
            assert np.isfinite(result["random_return_mean"]) == (it == 1)
            assert result["num_real_steps_lifetime"] == 100 * it
            assert result["num_eval_steps_lifetime"] > 0
    finally:
        algo.stop()


def test_each_return_is_reported_against_the_policy_that_produced_it():
    """post_adaptation_return_mean of iteration i: episodes of theta'_i, the adapted policies
    of iteration i's theta (not the previous iteration's); sample_return_mean of iteration
    i + 1: the training episodes, collected with those same theta'_i."""
    algo = tiny(eval_episodes_per_iter=2).build_algo()
    calls = []
    run = algo.sampler.run

    def spy(jobs, *fn):
        out = run(jobs, *fn)
        calls.append(([params for _, params, _, _ in jobs], out))
        return out

    algo.sampler.run = spy
    try:
        r1 = algo.train()
        adapted_1 = algo._adapted_params
        # iteration 1: random sampling, theta's evaluation, theta'_1's evaluation
        params, out = calls[-1]
        assert all(p is adapted_1[k] for k, p in enumerate(params))
        assert r1["post_adaptation_return_mean"] == pytest.approx(
            np.mean(out["episode_returns"]))
        _, pre = calls[-2]
        assert r1["episode_return_mean"] == pytest.approx(np.mean(pre["episode_returns"]))
        assert r1["episode_return_std"] == pytest.approx(np.std(pre["episode_returns"]))
        calls.clear()
        r2 = algo.train()
        params, out = calls[0]  # iteration 2's training samples: theta'_1
        assert all(p is adapted_1[k] for k, p in enumerate(params))
        assert r2["sample_return_mean"] == pytest.approx(np.mean(out["episode_returns"]))
        params, out = calls[-1]  # and its adapted-policy evaluation: theta'_2
        assert all(p is algo._adapted_params[k] for k, p in enumerate(params))
        assert all(p is not adapted_1[k] for k, p in enumerate(params))
        assert r2["post_adaptation_return_mean"] == pytest.approx(
            np.mean(out["episode_returns"]))
    finally:
        algo.stop()


def test_custom_env_registered_only_in_the_driver_reaches_remote_runners(monkeypatch):
    """register_model_functions (and gym.register) called in the driver only: the remote
    env runner still builds the env and the Learner still computes its model rewards,
    because the env creator carries the spec."""
    import gymnasium as gym

    from mbmpo_ray.envs import functions as F
    from mbmpo_ray.envs import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # no leak
    env_id = "DriverOnlyPendulum-v0"
    gym.register(env_id, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv")
    try:
        register_model_functions(env_id, F.pendulum_reward, F.no_termination)
        algo = tiny(env_id).env_runners(num_env_runners=1, num_cpus_per_env_runner=0)\
            .build_algo()
        try:
            for _ in range(2):
                result = algo.train()
            assert algo.env_runner_group.num_healthy_remote_workers() == 1
            assert len(algo.buffer) == result["num_real_steps_lifetime"] == 200
            assert np.isfinite(result["episode_return_mean"])
            assert np.isfinite(result["learners"]["default_policy"]["pre_return_mean"])
        finally:
            algo.stop()
    finally:
        gym.registry.pop(env_id, None)


def test_fit_budget_long_horizon_model_bias_and_bf16_reach_the_algorithm():
    cfg = tiny(imagined_horizon=7, model_bias_max=0.5, imagination_precision="bfloat16",
               model_fit_steps=10, model_check_steps=5, model_new_data_fraction=0.5,
               model_batch_size=8, model_max_epochs=50)
    algo = cfg.build_algo()
    try:
        result = algo.train()
        cfg = algo.config
        n_imag = cfg.meta_steps_per_iter * (cfg.num_inner_steps + 1) + cfg.num_inner_steps
        assert result["num_imagined_steps_lifetime"] == (
            n_imag * cfg.num_tasks * cfg.rollouts_per_task * 7)
        biases = cfg.model_biases()
        assert biases.shape == (cfg.ensemble_size,) and ((biases >= 0) & (biases <= 0.5)).all()
        np.testing.assert_array_equal(biases, tiny(model_bias_max=0.5).model_biases())
        assert tiny().model_biases() is None
        assert result["model"]["epochs_mean"] == 2  # 10 budgeted steps in rounds of 5
        assert np.isfinite(result["episode_return_mean"])
        meta = result["learners"]["default_policy"]
        assert np.isfinite(meta["plasticity_rank_corr"])
        assert algo.fitter.next_new_id == len(algo.buffer)
    finally:
        algo.stop()


def test_learner_threads_default_to_the_cpus_the_algorithm_reserves(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    base = MBMPOConfig().environment("Pendulum-v1")
    assert base.learner_threads() == 1  # the driver's CPU only
    trainers = base.copy(copy_frozen=False).training(num_model_trainers=5,
                                                     num_cpus_per_model_trainer=0.4)
    assert trainers.learner_threads() == 2  # driver + 5 x 0.4, capped at the 2 cores
    runners = base.copy(copy_frozen=False).env_runners(num_env_runners=1)
    assert runners.learner_threads() == 2
    assert base.copy(copy_frozen=False).training(learner_torch_threads=3).learner_threads() == 3
    remote = base.copy(copy_frozen=False).learners(num_learners=1, num_cpus_per_learner=1)
    assert remote.learner_threads() == 1
    # pinned to one core (taskset -c 0): one thread, however many the algorithm reserves
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert trainers.learner_threads() == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpu_settings_without_a_gpu_are_a_clear_error():
    with pytest.raises(ValueError, match="model_device='cuda' but torch sees no CUDA"):
        tiny(model_device="cuda").validate()
    with pytest.raises(ValueError, match="num_gpus_per_learner=1 with a local Learner"):
        tiny().learners(num_gpus_per_learner=1).validate()
    tiny().learners(num_learners=1, num_gpus_per_learner=1).validate()  # a GPU node may
