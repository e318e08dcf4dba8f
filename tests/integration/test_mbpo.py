"""MBPO on local Ray with tiny configs (seconds per iteration)."""

import copy

import numpy as np
import pytest
import torch

import tune_configs
from mbmpo_ray import MBPO, MBPOConfig
from mbmpo_ray.envs import SUPPORTED_ENV_IDS

pytestmark = pytest.mark.usefixtures("ray_local")

SMOKE = tune_configs.training_settings("pendulum", "smoke", algo="mbpo")[1]
RANDOM, FREQ = SMOKE["initial_random_steps"], SMOKE["model_train_freq"]


def tiny(env="Pendulum-v1", **overrides):
    return tune_configs.load_config("pendulum", "smoke", algo="mbpo",
                                    **overrides).environment(env)


def learner(algo):
    return algo.learner_group._learner


def assert_nested_equal(a, b, path="state"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_nested_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_nested_equal(x, y, f"{path}/{i}")
    elif isinstance(a, (np.ndarray, torch.Tensor)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    else:
        assert a == b, path


@pytest.mark.parametrize("env_id", SUPPORTED_ENV_IDS)
def test_smoke_every_supported_env(env_id):
    algo = tiny(env_id).build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        assert result["num_env_steps_sampled_lifetime"] == len(algo.buffer) == RANDOM + 2 * FREQ
        assert result["num_real_steps_lifetime"] == RANDOM + 2 * FREQ
        assert result["num_model_steps_lifetime"] > 0
        assert result["num_sac_updates_lifetime"] == 2 * FREQ * SMOKE["updates_per_step"]
        assert np.isfinite(result["episode_return_mean"])
        assert np.isfinite(result["model"]["val_loss_mean"])
        sac = result["learners"]["default_policy"]
        for key in ("qf_loss", "policy_loss", "alpha_value", "alpha_loss"):
            assert np.isfinite(sac[key]), key
        for phase in ("fit_models", "model_rollouts", "sample_real", "sac_updates",
                      "evaluate_real"):
            assert result["timers"][phase] > 0, phase
    finally:
        algo.stop()


def test_observation_dims_hidden_from_the_policy():
    algo = tiny("HalfCheetah-v5").build_algo()
    try:
        module = learner(algo).module["default_policy"]
        # HalfCheetah-v5 keeps x in the observation (18 dims) for the model reward only
        assert algo.buffer.obs_dim == 18 and module.observation_space.shape == (17,)
        assert module.qf.weights[0].shape[1] == 17 + 6  # critics: MLPs on [obs, act]
    finally:
        algo.stop()


def test_block_of_one_and_updates_per_step():
    algo = tiny(env_steps_per_block=1, updates_per_step=3, model_train_freq=10).build_algo()
    try:
        result = algo.train()
        assert algo.counters["blocks"] == 10
        assert result["num_sac_updates_lifetime"] == 30
        assert result["learners"]["default_policy"]["num_target_updates"] == 30
        assert len(algo.buffer) == RANDOM + 10
        # the phase timers add up every block of the iteration (not just the last one)
        result = algo.train()
        phases = ("sample_real", "fit_models", "model_rollouts", "sac_updates",
                  "synch_weights", "evaluate_real")
        timed = sum(result["timers"][p] for p in phases)
        assert 0.6 * result["time_this_iter_s"] < timed <= result["time_this_iter_s"]
    finally:
        algo.stop()


def test_mixed_batches_and_target_updates_follow_mbpo():
    """One SAC step per gradient step, target Polyak with tau after each, real_ratio rows."""
    algo = tiny(real_ratio=0.25, tau=0.5).build_algo()
    try:
        algo.train()
        lrn = learner(algo)
        assert lrn.config.batch_split() == (64, 192)  # int(256 * 0.25) real rows
        module = lrn.module["default_policy"]
        before = {k: v.clone() for k, v in module.state_dict().items()}
        lrn.train_block(new_real=None, num_updates=1, seed=3)
        after = module.state_dict()
        for main, target in (("qf_encoder", "target_qf_encoder"), ("qf", "target_qf")):
            for k in (k for k in before if k.startswith(main + ".")):
                t = target + k[len(main):]
                expected = 0.5 * after[k] + 0.5 * before[t]
                torch.testing.assert_close(after[t], expected)
    finally:
        algo.stop()


def test_one_backward_pass_gives_rllib_sac_gradients():
    """MBPOTorchLearner sums RLlib's SAC losses into one backward pass; the gradients of
    every parameter (policy, both critics, log_alpha) equal SACTorchLearner's per-optimiser
    passes exactly."""
    from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
    from ray.rllib.core.columns import Columns

    algo = tiny("Hopper-v5").build_algo()
    try:
        algo.train()
        lrn = learner(algo)
        rows = lrn._real.take(torch.arange(64))
        ones = torch.ones(64)
        batch = {"default_policy": {
            Columns.OBS: rows["obs"], Columns.ACTIONS: rows["act"],
            Columns.REWARDS: rows["reward"], Columns.NEXT_OBS: rows["next_obs"],
            Columns.TERMINATEDS: rows["done"], "n_step": ones, "weights": ones}}

        def grads(compute):
            torch.manual_seed(0)
            losses = lrn.compute_losses(fwd_out=lrn.module.forward_train(batch), batch=batch)
            return {k: v.clone() for k, v in compute(losses).items() if v is not None}

        ours = grads(lrn.compute_gradients)
        rllib = grads(lambda losses: SACTorchLearner.compute_gradients(lrn, losses))
        assert set(ours) == set(rllib) and len(ours) > 10
        for k in ours:
            torch.testing.assert_close(ours[k], rllib[k], rtol=0, atol=0)
    finally:
        algo.stop()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_quiet_update_is_rllibs_update_without_metrics(precision):
    """The updates inside a block (all but its last) skip RLlib's metrics and per-parameter
    isfinite reads; from the same state and seed they give exactly RLlib's ``_update``
    (with bf16 autocast too)."""
    algo = tiny(sac_precision=precision).build_algo()
    try:
        algo.train()
        lrn = learner(algo)
        batch = lrn._sac_batch(lrn._real.take(torch.arange(128)))
        module = lrn.module["default_policy"]
        start = {k: v.clone() for k, v in module.state_dict().items()}
        opt_start = copy.deepcopy(lrn._get_optimizer_state())
        log_alpha = lrn.curr_log_alpha["default_policy"]
        alpha_start = log_alpha.detach().clone()
        after = {}
        for name, update in (("rllib", lrn._update), ("quiet", lrn._quiet_update)):
            module.load_state_dict(start)
            # (load_state_dict keeps the given tensors: a fresh copy each time)
            lrn._set_optimizer_state(copy.deepcopy(opt_start))
            with torch.no_grad():
                log_alpha.copy_(alpha_start)
            torch.manual_seed(5)
            for _ in range(3):
                update(batch)
            after[name] = {k: v.clone() for k, v in module.state_dict().items()}
            after[name]["log_alpha"] = log_alpha.detach().clone()
        start["log_alpha"] = alpha_start
        changed = 0
        for k, v in after["rllib"].items():
            torch.testing.assert_close(after["quiet"][k], v, rtol=0, atol=0, msg=k)
            changed += not torch.equal(v, start[k])
        assert changed > 10
    finally:
        algo.stop()


def test_bfloat16_sac_updates_keep_outputs_and_gradients_float32():
    """``sac_precision='bfloat16'``: the hidden layers run in bf16 (the gradients differ from
    float32's by its rounding), the output layers in float32 (Q values, the policy's
    distribution inputs), and gradients stay float32 and close to float32's."""
    from ray.rllib.algorithms.sac.sac_learner import QF_PREDS
    from ray.rllib.core.columns import Columns

    algo = tiny("Hopper-v5", sac_precision="bfloat16").build_algo()
    try:
        algo.train()
        lrn = learner(algo)
        assert lrn._bf16  # resolved by the updates of that iteration
        batch = lrn._sac_batch(lrn._real.take(torch.arange(128)))

        def step(bf16):
            lrn._bf16 = bf16
            torch.manual_seed(0)
            with lrn._sac_autocast():
                fwd = lrn.module.forward_train(batch)
                losses = lrn.compute_losses(fwd_out=fwd, batch=batch)
            grads = lrn.compute_gradients(losses)
            return fwd["default_policy"], {k: v.clone() for k, v in grads.items()
                                           if v is not None}

        out16, g16 = step(True)
        out32, g32 = step(False)
        for key in (QF_PREDS, Columns.ACTION_DIST_INPUTS, "q_curr", "q_target_next"):
            assert out16[key].dtype == torch.float32, key
        assert set(g16) == set(g32) and len(g32) > 10
        assert all(g.dtype == torch.float32 for g in g16.values())
        assert sum(not torch.equal(g16[k], g32[k]) for k in g32) > 10  # bf16 did run
        flat16 = torch.cat([g16[k].flatten() for k in g32])  # (keyed by the parameters)
        flat32 = torch.cat([g32[k].flatten() for k in g32])
        rel = ((flat16 - flat32).norm() / flat32.norm()).item()
        print(f"relative gradient difference bf16 vs float32: {rel:.4f}")
        assert 0 < rel < 0.05, rel
    finally:
        algo.stop()


def test_checkpoint_round_trip(tmp_path):
    # target_entropy -1: RLlib's config state drops every value equal to its deprecation
    # placeholder (-1), so build_algo() and restores lost it (Hopper's reference value)
    algo = tiny(target_entropy=-1.0).build_algo()
    try:
        assert algo.config.target_entropy == -1.0
        algo.train()
        algo.save_to_path(str(tmp_path))
        restored = MBPO.from_checkpoint(str(tmp_path))
        try:
            a, b = learner(algo), learner(restored)
            # policy, critics and target critics
            for k, v in a.module["default_policy"].state_dict().items():
                assert torch.equal(v, b.module["default_policy"].state_dict()[k]), k
            assert any(k.startswith("target_qf") for k in a.module["default_policy"].state_dict())
            # entropy coefficient (RLlib's SAC does not checkpoint it) and optimiser states
            assert torch.equal(a.curr_log_alpha["default_policy"],
                               b.curr_log_alpha["default_policy"])
            assert float(a.curr_log_alpha["default_policy"].detach()) != 0.0  # it was trained
            assert_nested_equal(a._get_optimizer_state(), b._get_optimizer_state())
            # on a CPU every SAC Adam runs PyTorch's fused kernel, restored ones too
            assert all(group["fused"] for lrn in (a, b) for opt in lrn._optimizer_parameters
                       for group in opt.param_groups)
            # ensemble (weights, normalisers, elites) and its Adam states
            for k, v in algo.fitter.ensemble.state_dict().items():
                assert torch.equal(v, restored.fitter.ensemble.state_dict()[k]), k
            assert_nested_equal(algo.fitter.optimizer_states, restored.fitter.optimizer_states)
            # both buffers and the counters
            assert_nested_equal(algo.buffer.get_state(), restored.buffer.get_state())
            assert_nested_equal(a.model_buffer_state(), b.model_buffer_state())
            assert len(b._real) == len(restored.buffer)  # the Learner's copy of real data
            assert restored.counters == algo.counters
            assert restored.config.target_entropy == -1.0
            assert restored.iteration == algo.iteration == 1
            # the restored run continues
            r1, r2 = algo.train(), restored.train()
            assert (r1["num_real_steps_lifetime"] == r2["num_real_steps_lifetime"]
                    == RANDOM + 2 * FREQ)
            assert r2["num_env_steps_sampled_lifetime"] == RANDOM + 2 * FREQ
            assert restored.iteration == 2
        finally:
            restored.stop()
    finally:
        algo.stop()


def test_evaluate():
    algo = tiny().build_algo()
    try:
        algo.train()
        res = algo.evaluate(num_episodes=2)
        assert len(res["episode_returns"]) == 2 and np.isfinite(res["episode_return_mean"])
        assert res["episode_lengths"] == [SMOKE["horizon"]] * 2
    finally:
        algo.stop()


def test_remote_runners_remote_learner_and_model_trainers():
    cfg = (tiny(num_model_trainers=2, num_cpus_per_model_trainer=0)
           .env_runners(num_env_runners=2, num_cpus_per_env_runner=0)
           .learners(num_learners=1, num_cpus_per_learner=0))
    algo = cfg.build_algo()
    try:
        result = algo.train()
        assert len(algo.buffer) == RANDOM + FREQ
        assert algo.fitter.ensemble.elite_indices.numel() == SMOKE["num_elites"]
        assert np.isfinite(result["episode_return_mean"])
        assert np.isfinite(result["learners"]["default_policy"]["qf_loss"])
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(num_elites=5, ensemble_size=3), "num_elites=5 > ensemble_size=3"),
        (dict(real_ratio=1.5), "real_ratio"),
        (dict(rollout_schedule=(100, 20, 1, 1)), "rollout_schedule"),
        (dict(updates_per_step=0), "updates_per_step"),
        (dict(env_steps_per_block=100, model_train_freq=50), "env_steps_per_block=100"),
        (dict(actor_lr=-1.0), "actor_lr"),
        (dict(model_activation="sigmoid"), "model_activation"),
        (dict(target_entropy="high"), "target_entropy"),
        (dict(model_device="cuda", num_model_trainers=2), "num_model_trainers=0"),
    ],
)
def test_validate_rejects_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        tiny(**settings).validate()


def test_validate_lists_every_problem_one_per_line():
    cfg = tiny(real_ratio=2.0, updates_per_step=-1, model_lr=0.0)
    assert len(cfg.problems()) == 3
    with pytest.raises(ValueError, match=r"3 invalid setting\(s\)"):
        cfg.validate()


def test_validate_rejects_env_without_model_functions():
    with pytest.raises(ValueError, match="register_model_functions"):
        MBPOConfig().environment("MountainCarContinuous-v0").validate()


def test_derived_settings():
    cfg = MBPOConfig()
    assert cfg.batch_split() == (12, 244)  # the reference: int(256 * 0.05) real rows
    assert cfg.model_buffer_capacity(1) == 400_000  # 400 x 250 rollouts x 4 refits per epoch
    hopper = tune_configs.load_config("hopper", "paper", algo="mbpo")
    assert hopper.rollout_length(5000) == 1  # random steps come before epoch 0
    assert hopper.rollout_length(5000 + 85_000) == 8  # epoch 85: halfway up the ramp 20 -> 150
    assert hopper.rollout_length(10**6) == 15
    assert hopper.target_entropy == -1.0  # the reference's, not RLlib's 'auto' (-|A| = -3)
    # ... and it survives the config state that build_algo() and restores rebuild it from
    assert MBPOConfig.from_state(hopper.get_state()).target_entropy == -1.0


@pytest.mark.parametrize("name", sorted(tune_configs.ENV_CONFIGS))
def test_every_mbpo_env_config_validates(name):
    for variant in ("default", "smoke"):
        config = tune_configs.load_config(name, variant, algo="mbpo")
        assert isinstance(config, MBPOConfig)
        config.validate()
        assert config.model_env_id == tune_configs.ENV_CONFIGS[name]
    assert tune_configs.stop_timesteps(name, "default", algo="mbpo") > 0


def test_registered_with_tune():
    from ray.tune.registry import get_trainable_cls

    assert get_trainable_cls("MBPO") is MBPO


def test_tune_runs_registered_name(tmp_path):
    from ray import tune

    from mbmpo_ray.tuning import get_sweep, param_space, trainable_name

    sweep = get_sweep("mbpo_smoke")
    config, space = param_space(sweep)
    assert isinstance(config, MBPOConfig) and trainable_name(sweep) == "MBPO"
    tuner = tune.Tuner(
        "MBPO",
        param_space=config.to_dict() | {"real_ratio": 0.5},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), stop={"training_iteration": 1}, verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    assert results[0].metrics["num_real_steps_lifetime"] == RANDOM + FREQ
