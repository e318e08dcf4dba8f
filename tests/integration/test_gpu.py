"""The GPU path (a CUDA Learner, imagination and model fitting on the GPU): the same maths as on
the CPU, and the algorithms train, checkpoint and restore across devices.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``pytest tests/integration/test_gpu.py``.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch

import tune_configs
from mbmpo_ray.envs import get_env_spec
from mbmpo_ray.imagination import imagine
from mbmpo_ray.meta import (
    GaussianMLPPolicy,
    MetaConfig,
    estimate_advantages,
    meta_step,
    trpo_outer_step,
)
from mbmpo_ray.models import DynamicsEnsemble, FitConfig, fit_ensemble

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

OBS, ACT = 3, 1  # Pendulum-v1


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    act = rng.uniform(-2, 2, size=(n, ACT)).astype(np.float32)
    nxt = (obs + 0.1 * np.tanh(obs) * act + 0.01 * rng.normal(size=obs.shape)).astype(np.float32)
    return obs, act, nxt


def _ensemble(device, seed=0):
    torch.manual_seed(seed)
    return DynamicsEnsemble(OBS, ACT, ensemble_size=3, hidden_sizes=(64, 64)).to(device)


def test_model_fit_and_prediction_on_gpu_match_cpu():
    obs, act, nxt = _data()
    results = {}
    for dev in ("cpu", "cuda"):
        ens = _ensemble(dev)
        res, _ = fit_ensemble(ens, obs, act, nxt, FitConfig(model_max_epochs=3, model_patience=9),
                              generator=torch.Generator().manual_seed(1))
        results[dev] = (np.asarray(res.val_loss, dtype=np.float64),
                        {k: v.detach().cpu() for k, v in ens.state_dict().items()})
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-3)
    for k, v in results["cpu"][1].items():
        torch.testing.assert_close(results["cuda"][1][k], v, rtol=1e-3, atol=1e-4, msg=k)


def _imagined(device):
    spec = get_env_spec("Pendulum-v1")
    ens = _ensemble("cpu").eval()
    policy = GaussianMLPPolicy(OBS, ACT, (16, 16), "tanh", obs_start=spec.policy_obs_start)
    params = policy.init_params(torch.Generator().manual_seed(0))
    cfg = MetaConfig(num_tasks=3).validate()
    task_params = policy.expand_params(params, cfg.num_tasks)
    start = torch.as_tensor(_data(seed=2)[0][:3 * 8].reshape(3, 8, OBS))
    gen = torch.Generator().manual_seed(3)
    raw = imagine(ens, lambda o, g: policy.sample(task_params, o, g, batched=True), start, 20,
                  spec.reward_fn, spec.termination_fn, action_low=-2.0, action_high=2.0,
                  generator=gen)
    # float64 on both devices, so their results agree to rounding (in float32 the line
    # search took 6 steps on one device and 7 on the other on the same batch)
    raw = dataclasses.replace(raw, **{
        f.name: getattr(raw, f.name).double() for f in dataclasses.fields(raw)
        if isinstance(getattr(raw, f.name), torch.Tensor)
        and getattr(raw, f.name).is_floating_point()}).to(device)
    to = lambda p: {k: v.to(device, torch.float64) for k, v in p.items()}  # noqa: E731
    tb = estimate_advantages(policy, to(task_params), raw, cfg.gamma, cfg.gae_lambda,
                             cfg.normalize_advantages, cfg.baseline_reg_coeff)
    return policy, to(params), tb, cfg


def test_trpo_outer_step_on_gpu_matches_cpu():
    """The same batch (imagined on the CPU, then moved): TRPO takes the same step."""
    steps, diags = {}, {}
    for dev in ("cpu", "cuda"):
        policy, params, tb, cfg = _imagined(dev)
        new, diags[dev] = trpo_outer_step(policy, params, [tb], tb, cfg)
        assert all(v.device.type == dev for v in new.values())
        steps[dev] = torch.cat([(new[k] - params[k]).double().cpu().flatten() for k in new])
    assert diags["cuda"]["ls_steps"] == diags["cpu"]["ls_steps"], diags
    rel = float((steps["cuda"] - steps["cpu"]).norm() / steps["cpu"].norm())
    assert steps["cpu"].norm() > 0 and rel < 1e-6, (rel, diags)


def test_meta_step_runs_on_gpu():
    spec = get_env_spec("Pendulum-v1")
    ens = _ensemble("cuda").eval()
    policy = GaussianMLPPolicy(OBS, ACT, (16, 16), "tanh", obs_start=spec.policy_obs_start)
    params = {k: v.cuda() for k, v in policy.init_params(torch.Generator().manual_seed(0)).items()}
    cfg = MetaConfig(num_tasks=3).validate()
    gen = torch.Generator(device="cuda").manual_seed(0)
    pool = torch.randn(100, OBS, device="cuda")

    def sample_fn(task_params):
        idx = torch.randint(100, (3, 8), generator=gen, device="cuda")
        return imagine(ens, lambda o, g: policy.sample(task_params, o, g, batched=True),
                       pool[idx], 20, spec.reward_fn, spec.termination_fn, action_low=-2.0,
                       action_high=2.0, generator=gen)

    new, diag = meta_step(policy, params, sample_fn, cfg, ensemble_size=3)
    assert all(v.is_cuda and torch.isfinite(v).all() for v in new.values())
    assert np.isfinite(diag["post_return_mean"]) and diag["ls_steps"] >= 1


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("algo_name", ["mbmpo", "mbpo"])
def test_gpu_learner_trains_and_checkpoints_restore_on_cpu(algo_name, tmp_path):
    """num_gpus_per_learner=1 with a local Learner and model_device='cuda': the module lives on
    the GPU, training works, and its checkpoint restores into a CPU-only config with equal
    weights (and that one trains on)."""
    cfg = tune_configs.load_config("pendulum", "smoke", algo=algo_name)
    algo = (cfg.copy(copy_frozen=False).learners(num_gpus_per_learner=1)
            .training(model_device="cuda").build_algo())
    try:
        for _ in range(2):
            result = algo.train()
        assert np.isfinite(result["episode_return_mean"])
        module = algo.learner_group._learner.module["default_policy"]
        assert next(module.parameters()).is_cuda
        algo.save_to_path(str(tmp_path))
        weights = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    finally:
        algo.stop()
    cpu_algo = cfg.copy(copy_frozen=False).build_algo()
    try:
        cpu_algo.restore_from_path(str(tmp_path))
        module = cpu_algo.learner_group._learner.module["default_policy"]
        assert not next(module.parameters()).is_cuda
        for k, v in module.state_dict().items():
            torch.testing.assert_close(v, weights[k], msg=k)
        assert np.isfinite(cpu_algo.train()["episode_return_mean"])
    finally:
        cpu_algo.stop()


@pytest.mark.usefixtures("ray_local")
def test_mbpo_sac_updates_as_a_cuda_graph_match_eager_updates():
    """A block of SAC updates replayed from the captured CUDA graph moves the critics like
    the eager updates on the same batches (the policy's sampling noise differs, so the
    comparison is of directions, not bits)."""
    cfg = tune_configs.load_config("pendulum", "smoke", algo="mbpo", sac_cuda_graph=True)
    algo = cfg.copy(copy_frozen=False).learners(num_gpus_per_learner=1).build_algo()
    try:
        algo.train()
        lrn = algo.learner_group._learner
        assert lrn._graph is not None and not lrn._graph_failed
        module = lrn.module["default_policy"]
        start = {k: v.clone() for k, v in module.state_dict().items()}
        opt_start = copy.deepcopy(lrn._get_optimizer_state())
        alpha_start = lrn.curr_log_alpha["default_policy"].detach().clone()
        deltas = {}
        for name in ("graph", "eager"):
            if name == "eager":  # back to the start (this drops the graph: fresh tensors)
                module.load_state_dict(start)
                lrn._set_optimizer_state(copy.deepcopy(opt_start))
                with torch.no_grad():
                    lrn.curr_log_alpha["default_policy"].copy_(alpha_start)
                lrn._graph, lrn._graph_failed = None, True
            metrics = lrn.train_block(new_real=None, num_updates=40, seed=11)
            assert np.isfinite(metrics["default_policy"]["qf_loss"])
            deltas[name] = torch.cat([(v - start[k]).flatten().double().cpu()
                                      for k, v in module.state_dict().items()
                                      if k.startswith("qf")])
        g, e = deltas["graph"], deltas["eager"]
        cos = float(g @ e / (g.norm() * e.norm()))
        assert cos > 0.9 and 0.7 < float(g.norm() / e.norm()) < 1.4, cos
    finally:
        algo.stop()
