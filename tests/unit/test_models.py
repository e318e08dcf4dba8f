"""Unit tests of mbmpo_ray.models: batched ensemble layers, normalisers and the fitting loop.

Everything is small (K=3, hidden (64, 64), a few thousand rows) and runs on one CPU thread.
"""

import copy
import dataclasses
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mbmpo_ray.models import (
    DynamicsEnsemble,
    EnsembleLinear,
    FitConfig,
    Normalizer,
    fit_ensemble,
    train_step,
)
from mbmpo_ray.models.training import _member_mse
from mbmpo_ray.settings import build

OBS, ACT, K, HIDDEN = 4, 2, 3, (64, 64)


def linear_system(n, seed=0, noise=1e-3):
    """Transitions of a fixed random linear system next = A s + B a + noise (float32 numpy)."""
    sys_rng = np.random.default_rng(1234)  # the same A, B for every call
    a_mat = np.eye(OBS) + 0.1 * sys_rng.standard_normal((OBS, OBS))
    b_mat = 0.5 * sys_rng.standard_normal((OBS, ACT))
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, OBS))
    act = rng.uniform(-1.0, 1.0, (n, ACT))
    nxt = obs @ a_mat.T + act @ b_mat.T + noise * rng.standard_normal((n, OBS))
    return obs.astype(np.float32), act.astype(np.float32), nxt.astype(np.float32)


def make(probabilistic=False, k=K, seed=0, **kw):
    torch.manual_seed(seed)
    return DynamicsEnsemble(OBS, ACT, k, HIDDEN, probabilistic=probabilistic, **kw)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def snapshot(module):
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --------------------------------------------------------------------------- layers


def test_ensemble_linear_equals_separate_matmuls():
    torch.manual_seed(0)
    layer = EnsembleLinear(K, 5, 7)
    assert layer.weight.shape == (K, 5, 7) and layer.bias.shape == (K, 1, 7)
    x = torch.randn(K, 11, 5)
    y = layer(x)
    assert y.shape == (K, 11, 7)
    for k in range(K):
        assert torch.allclose(y[k], x[k] @ layer.weight[k] + layer.bias[k], atol=1e-6)
    # Independent nn.Linear-style init per member: members differ and respect the bound.
    bound = 1 / np.sqrt(5)
    assert not torch.equal(layer.weight[0], layer.weight[1])
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound


def test_forward_members_distinct_and_without_cross_member_leakage():
    ens = make(probabilistic=True)
    obs, act = torch.randn(K, 8, OBS), torch.randn(K, 8, ACT)
    mean, logvar = ens.forward_members(obs, act)
    assert mean.shape == logvar.shape == (K, 8, OBS)
    same_obs, same_act = obs[:1].expand(K, -1, -1), act[:1].expand(K, -1, -1)
    mean_same, _ = ens.forward_members(same_obs, same_act)
    assert not torch.allclose(mean_same[0], mean_same[1])  # members are different functions
    obs2 = obs.clone()
    obs2[1] += 10.0  # change only member 1's rows
    mean2, logvar2 = ens.forward_members(obs2, act)
    assert torch.equal(mean2[0], mean[0]) and torch.equal(mean2[2], mean[2])
    assert torch.equal(logvar2[0], logvar[0])
    assert not torch.allclose(mean2[1], mean[1])
    # Soft bounds keep the log-variance inside [min_logvar, max_logvar].
    assert (logvar <= ens.max_logvar).all() and (logvar >= ens.min_logvar).all()
    assert make(probabilistic=False).forward_members(obs, act)[1] is None


# --------------------------------------------------------------------------- normalisers


def test_normalizer_roundtrip_floor_and_state_dict():
    norm = Normalizer(3)
    x = torch.randn(100, 3) * torch.tensor([2.0, 0.5, 0.0]) + torch.tensor([1.0, -3.0, 7.0])
    norm.update(x)
    assert norm.std[2] == pytest.approx(1e-6)  # constant column: floored, not zero
    z = norm.normalize(x)
    assert torch.allclose(z[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.allclose(norm.denormalize(z), x, atol=1e-5)
    assert set(norm.state_dict()) == {"mean", "std"}


def test_normalizers_travel_in_state_dict():
    ens = make()
    keys = set(ens.state_dict())
    for name in ("input_normalizer", "delta_normalizer"):
        assert {f"{name}.mean", f"{name}.std"} <= keys
    obs, act, nxt = linear_system(200)
    ens.update_normalizers(obs, act, nxt)
    assert not torch.allclose(ens.delta_normalizer.std, torch.ones(OBS))
    other = make(seed=1)
    other.load_state_dict(ens.state_dict())
    assert torch.equal(other.delta_normalizer.mean, ens.delta_normalizer.mean)
    assert np.array_equal(other.predict(obs[:5], act[:5]), ens.predict(obs[:5], act[:5]))


# --------------------------------------------------------------------------- prediction


def test_predict_shapes_member_idx_and_sampling():
    ens = make(probabilistic=True)
    obs, act, nxt = linear_system(50)
    ens.update_normalizers(obs, act, nxt)
    full = ens.predict(obs, act)
    assert isinstance(full, np.ndarray) and full.shape == (K, 50, OBS)
    idx = torch.arange(50) % K
    rows = ens.predict(torch.from_numpy(obs), torch.from_numpy(act), member_idx=idx)
    assert isinstance(rows, torch.Tensor) and rows.shape == (50, OBS)
    assert torch.allclose(rows, torch.from_numpy(full)[idx, torch.arange(50)])
    with pytest.raises(ValueError):
        ens.predict(obs, act, member_idx=torch.zeros(49, dtype=torch.long))
    # Stochastic head: sampling differs from the mean, reproducibly with a generator.
    o, a = torch.from_numpy(obs).expand(K, -1, -1), torch.from_numpy(act).expand(K, -1, -1)
    det = ens.sample_next_obs(o, a)
    s1 = ens.sample_next_obs(o, a, deterministic=False, generator=gen(3))
    s2 = ens.sample_next_obs(o, a, deterministic=False, generator=gen(3))
    assert s1.shape == (K, 50, OBS) and torch.equal(s1, s2) and not torch.allclose(s1, det)
    assert torch.allclose(det, torch.from_numpy(full))


# --------------------------------------------------------------------------- elite sampling (MBPO)


def test_sample_elite_next_obs_uses_only_elites_and_their_means():
    ens = make(probabilistic=True, num_elites=2)
    obs, act, nxt = linear_system(400)
    ens.update_normalizers(obs, act, nxt)
    ens.select_elites([0.3, 0.1, 0.2])  # elites: members 1 and 2
    o, a = torch.from_numpy(obs), torch.from_numpy(act)
    out, members = ens.sample_elite_next_obs(o, a, gen(0), deterministic=True,
                                             return_members=True)
    assert out.shape == (400, OBS) and members.shape == (400,)
    assert set(members.tolist()) == {1, 2}  # only elites, both used
    # each row is its member's mean prediction (each member computes only its own rows)
    per_member = ens.sample_next_obs(o.expand(K, -1, -1), a.expand(K, -1, -1))
    torch.testing.assert_close(out, per_member[members, torch.arange(400)])
    # all members elite (the default): every member is drawn
    _, all_members = make(probabilistic=True).sample_elite_next_obs(
        o, a, gen(0), return_members=True)
    assert set(all_members.tolist()) == set(range(K))


def test_sample_elite_next_obs_is_seeded_and_samples_the_members_gaussian():
    ens = make(probabilistic=True, num_elites=2)
    obs, act, nxt = linear_system(400)
    ens.update_normalizers(obs, act, nxt)
    ens.select_elites([0.1, 0.3, 0.2])  # elites: members 0 and 2
    b = 20_000
    o = torch.from_numpy(obs[:1]).expand(b, -1)  # one state-action pair, many draws
    a = torch.from_numpy(act[:1]).expand(b, -1)
    s1, m1 = ens.sample_elite_next_obs(o, a, gen(4), return_members=True)
    s2, m2 = ens.sample_elite_next_obs(o, a, gen(4), return_members=True)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    assert not torch.equal(s1, ens.sample_elite_next_obs(o, a, gen(5)))
    # The exact recipe: members from one randint, then B x D standard normal noise.
    g = gen(4)
    pick = torch.randint(2, (b,), generator=g)
    assert torch.equal(m1, torch.tensor([0, 2])[pick])
    noise = torch.randn(b, OBS, generator=g)
    mean, logvar = ens.forward_members(o[:1].expand(K, -1, -1), a[:1].expand(K, -1, -1))
    mean, std = mean[:, 0], torch.exp(0.5 * logvar[:, 0])  # K x D
    expected = o + ens.delta_normalizer.denormalize(mean[m1] + noise * std[m1])
    torch.testing.assert_close(s1, expected)
    # Statistically: per member, the normalised deltas have that member's mean and std.
    z = ens.delta_normalizer.normalize(s1 - o)
    for k in (0, 2):
        zk = z[m1 == k]
        torch.testing.assert_close(zk.mean(0), mean[k], atol=0.05 * std[k].max().item(),
                                   rtol=0)
        torch.testing.assert_close(zk.std(0), std[k], rtol=0.05, atol=0)
    assert not torch.allclose(std[0], std[2], rtol=0.05)  # the members' stds differ
    # The deterministic head ignores `deterministic` and draws no noise.
    det = make(probabilistic=False)
    det.update_normalizers(obs, act, nxt)
    d1 = det.sample_elite_next_obs(o[:10], a[:10], gen(1))
    assert torch.equal(d1, det.sample_elite_next_obs(o[:10], a[:10], gen(1), deterministic=True))


# --------------------------------------------------------------------------- fit config


def test_fit_config_rejects_wrong_types_and_values_all_at_once():
    assert FitConfig().problems() == []
    assert FitConfig().validate() == FitConfig()
    bad = FitConfig(model_batch_size=2.5, model_lr="abc", model_holdout_ratio=1.0,
                    model_patience=0, model_bootstrap="yes", eval_batch_size=0,
                    model_weight_decay=-1.0, model_max_epochs=-1, model_max_holdout=None,
                    model_improvement_threshold=float("nan"), update_normalizers=1,
                    model_fit_steps=-5, model_check_steps=0, model_new_data_fraction=1.5,
                    model_val_space="log", model_precision="fp16",
                    model_holdout_split="stable")
    found = bad.problems()
    assert len(found) == len(dataclasses.fields(FitConfig))  # every field is wrong
    for name in ("model_batch_size", "model_lr", "model_holdout_ratio", "model_patience"):
        assert any(p.startswith(name + " must be") for p in found), name
    with pytest.raises(ValueError, match=r"FitConfig: 17 invalid") as err:
        bad.validate()
    assert "model_batch_size must be an integer >= 1, got 2.5" in str(err.value)
    assert "model_lr must be a number > 0, got 'abc' (str)" in str(err.value)
    assert FitConfig(model_batch_size="500").problems()  # a string is not an integer
    assert FitConfig(model_holdout_ratio=-0.1).problems()
    assert FitConfig(model_holdout_ratio=0.0, model_max_epochs=0).problems() == []
    assert FitConfig(model_lr=1).problems() == []  # ints are numbers
    # fit_ensemble validates first: nothing changes on a bad config
    ens = make()
    before = snapshot(ens)
    obs, act, nxt = linear_system(50)
    with pytest.raises(ValueError, match="model_holdout_ratio"):
        fit_ensemble(ens, obs, act, nxt, FitConfig(model_holdout_ratio=1.5))
    assert_state_equal(before, snapshot(ens))


def test_fit_config_builds_from_an_algorithm_config_by_name():
    algo = SimpleNamespace(model_batch_size=256, model_lr=3e-4, model_max_epochs=7,
                           model_patience=2, model_holdout_ratio=0.1, num_tasks=20)
    cfg = build(FitConfig, algo, update_normalizers=False)
    assert cfg == FitConfig(model_batch_size=256, model_lr=3e-4, model_max_epochs=7,
                            model_patience=2, model_holdout_ratio=0.1, update_normalizers=False)
    assert cfg.validate() is cfg
    assert cfg.holdout_size(1000) == 100
    assert FitConfig(model_max_holdout=30).holdout_size(1000) == 30
    assert FitConfig(model_holdout_ratio=0.9).holdout_size(5) == 4  # >= 1 training row


# --------------------------------------------------------------------------- fitting


def test_seeded_fits_are_bit_identical():
    obs, act, nxt = linear_system(400, noise=0.3)
    cfg = FitConfig(model_batch_size=64, model_max_epochs=4, model_patience=1)
    outs = []
    for _ in range(2):
        ens, g = make(probabilistic=True), gen(3)
        res, opt = fit_ensemble(ens, obs, act, nxt, cfg, generator=g)
        outs.append((snapshot(ens), res, opt, g.get_state()))
    (s1, r1, o1, g1), (s2, r2, o2, g2) = outs
    assert_state_equal(s1, s2)
    assert torch.equal(g1, g2)  # the generator was consumed identically
    for f in dataclasses.fields(r1):
        assert np.array_equal(np.asarray(getattr(r1, f.name)), np.asarray(getattr(r2, f.name)))
    for pid, st in o1["state"].items():
        assert all(torch.equal(v, o2["state"][pid][n]) for n, v in st.items())


def test_bfloat16_fit_steps_stay_close_to_float32():
    """``model_precision='bfloat16'``: the training steps' forward passes run in bf16 (the
    weights end up different from a float32 fit's), the weights and Adam state stay float32,
    and the fit is about as good (validation is float32 in both)."""
    obs, act, nxt = linear_system(600, noise=1e-2)
    fits = {}
    for precision in ("float32", "bfloat16"):
        cfg = FitConfig(model_batch_size=64, model_max_epochs=8, model_patience=8,
                        model_precision=precision)
        ens = make(probabilistic=True)
        res, opt = fit_ensemble(ens, obs, act, nxt, cfg, generator=gen(1))
        assert not res.diverged and res.epochs.min() == 8
        assert all(p.dtype == torch.float32 for p in ens.parameters())
        assert all(v.dtype == torch.float32 for st in opt["state"].values()
                   for v in st.values() if v.is_floating_point())
        fits[precision] = snapshot(ens), res
    (w32, r32), (w16, r16) = fits["float32"], fits["bfloat16"]
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)  # bf16 did run
    assert r16.history[-1] < 0.2 * r16.history[0]  # it learned
    np.testing.assert_allclose(r16.val_loss, r32.val_loss, rtol=0.3)


def test_auto_fit_precision_is_float32_without_bf16_units(monkeypatch):
    from mbmpo_ray.models import training

    monkeypatch.setattr(training, "bf16_is_fast", lambda device_type="cpu": False)
    monkeypatch.setattr(training, "_faster_precision", lambda *a, **kw: pytest.fail("timed"))
    assert training.fit_precision(make(), 64) == "float32"
    assert training.fit_precision(make(), 64, "bfloat16") == "bfloat16"  # as configured


def test_auto_fit_precision_times_once_per_shape_and_the_fit_uses_it(monkeypatch):
    from mbmpo_ray.models import training

    monkeypatch.setattr(training, "bf16_is_fast", lambda device_type="cpu": True)
    monkeypatch.setattr(training, "_PRECISION_OF", {})
    timed = []
    monkeypatch.setattr(training, "_faster_precision",
                        lambda ens, batch: timed.append((ens.ensemble_size, batch)) or "bfloat16")
    used = []
    real = training.train_step
    monkeypatch.setattr(training, "train_step", lambda *a, autocast=None, **kw: used.append(
        autocast) or real(*a, autocast=autocast, **kw))
    cfg = FitConfig(model_batch_size=100, model_max_epochs=1, model_precision="auto")
    for _ in range(2):
        fit_ensemble(make(), *linear_system(500), cfg, generator=gen())
    fit_ensemble(make(k=2), *linear_system(500), cfg, generator=gen())
    assert timed == [(K, 100), (2, 100)]  # once per shape
    assert used and set(used) == {torch.bfloat16}


@pytest.mark.parametrize("bf16_cost, want", [(2.0, "float32"), (0.5, "bfloat16")])
def test_faster_precision_picks_the_faster_dtype(monkeypatch, bf16_cost, want):
    """The timing decides (a fake clock: each step costs 1 in float32, ``bf16_cost`` under a
    bf16 autocast), on a copy: the ensemble is left as it was."""
    from mbmpo_ray.models import training

    clock = [0.0]
    real = training.train_step

    def step(*a, autocast=None, **kw):
        clock[0] += 1.0 if autocast is None else bf16_cost
        return real(*a, autocast=autocast, **kw)

    monkeypatch.setattr(training, "train_step", step)
    monkeypatch.setattr(training, "perf_counter", lambda: clock[0])
    ens = make(probabilistic=True)
    before = snapshot(ens)
    assert training._faster_precision(ens, 32, steps=2, rounds=2) == want
    assert_state_equal(snapshot(ens), before)


def test_train_step_moves_only_members_with_weight():
    ens = make()
    obs, act, nxt = linear_system(300)
    ens.update_normalizers(obs, act, nxt)
    x = ens.input_normalizer.normalize(torch.cat((torch.from_numpy(obs), torch.from_numpy(act)),
                                                 1))
    y = ens.delta_normalizer.normalize(torch.from_numpy(nxt - obs))
    rows = torch.arange(300).view(K, 100)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in ens.member_parameters()]
    losses = train_step(ens, opt, x[rows], y[rows], torch.tensor([1.0, 0.0, 1.0]))
    assert losses.shape == (K,) and not losses.requires_grad
    for p, q in zip(ens.member_parameters(), before, strict=True):
        assert torch.equal(p[1], q[1])  # zero weight: zero gradient, fresh Adam does not move
        assert not torch.equal(p[0], q[0]) and not torch.equal(p[2], q[2])



@pytest.mark.parametrize("probabilistic", [False, True])
def test_fit_learns_linear_dynamics(probabilistic):
    obs, act, nxt = linear_system(3000, noise=1e-3)
    ens = make(probabilistic, num_elites=2 if probabilistic else None)
    cfg = FitConfig(model_batch_size=100, model_lr=1e-3, model_max_epochs=40, model_patience=5)
    res, opt_state = fit_ensemble(ens, obs, act, nxt, cfg, generator=gen())
    assert not res.diverged and opt_state["state"]
    assert res.val_loss.shape == res.train_loss.shape == res.epochs.shape == (K,)
    assert len(res.history) == res.epochs.max() + 1 and res.history[-1] < res.history[0]

    # Fresh test transitions of the same system, errors on raw next_obs.
    t_obs, t_act, t_nxt = linear_system(1000, seed=1, noise=1e-3)
    mse = ((ens.predict(t_obs, t_act) - t_nxt) ** 2).mean(axis=(1, 2))
    rel_to_next = mse / t_nxt.var(axis=0).mean()
    rel_to_delta = mse / (t_nxt - t_obs).var(axis=0).mean()
    # Predicting the mean delta gives rel_to_delta = 1, the noise floor is ~1e-5; 40 epochs of a
    # (64, 64) ReLU MLP reach ~1e-3 (measured 3e-4 .. 1e-3), so 1e-2 leaves a 10x margin while
    # still demanding the dynamics were learned. Relative to next_obs variance it is ~5x smaller.
    print(
        f"probabilistic={probabilistic} rel MSE vs delta var {rel_to_delta}, "
        f"vs next_obs var {rel_to_next}"
    )
    assert (rel_to_delta < 1e-2).all()
    assert (rel_to_next < 1e-2).all()

    if probabilistic:
        assert res.elites.tolist() == sorted(np.argsort(res.val_loss)[:2].tolist())
        assert ens.elite_indices.tolist() == res.elites.tolist()
    else:
        assert ens.elite_indices.tolist() == list(range(K))


def test_early_stopping_freezes_members_and_keeps_best_weights():
    obs, act, nxt = linear_system(1500, noise=0.3)  # noisy: validation plateaus quickly
    ens = make()
    logged = []
    cfg = FitConfig(model_batch_size=100, model_lr=3e-3, model_max_epochs=200, model_patience=2)
    res, _ = fit_ensemble(
        ens, obs, act, nxt, cfg, generator=gen(1), log_fn=lambda e, tr, va: logged.append(va)
    )
    print("epochs per member", res.epochs, "best epoch", res.best_epoch)
    assert (res.epochs < cfg.model_max_epochs).all()
    # best_epoch follows any improvement, patience is reset only by a >= 1% improvement.
    assert ((res.best_epoch >= 1) & (res.best_epoch <= res.epochs)).all()
    vals = np.stack(logged)  # E x K
    assert len(vals) == res.epochs.max()
    # Returned weights are each member's best: recomputed holdout MSE equals the best logged one.
    idx = torch.from_numpy(res.holdout_indices)
    x = ens.input_normalizer.normalize(torch.cat((torch.from_numpy(obs), torch.from_numpy(act)), 1))
    y = ens.delta_normalizer.normalize(torch.from_numpy(nxt - obs))
    recomputed = _member_mse(ens, x[idx], y[idx], 4096).numpy()
    assert np.allclose(recomputed, res.val_loss, rtol=1e-5)
    assert np.allclose(res.val_loss, vals.min(axis=0), rtol=1e-6)
    # A stopped member no longer changes: its validation loss stays at its best afterwards.
    for k in range(K):
        after = vals[res.epochs[k] :, k]
        assert np.allclose(after, res.val_loss[k], rtol=1e-6)


@pytest.mark.parametrize("probabilistic", [False, True])
def test_stopped_members_are_left_out_of_the_step(probabilistic, monkeypatch):
    """With member 1 stopped, a round trains members 0 and 2 alone (a K = 2 sub-ensemble) and
    gives them what one masked step of the whole ensemble (member 1's loss weighted 0) gives
    them -- weights, Adam state and the shared log-variance bounds; member 1's weights and
    Adam state are not touched."""
    from mbmpo_ray.models import training

    obs, act, nxt = linear_system(600)
    ens = make(probabilistic)
    cfg = FitConfig(model_batch_size=200, model_lr=1e-2, model_holdout_ratio=0.0,
                    model_max_epochs=1)
    _, opt_state = fit_ensemble(ens, obs, act, nxt, cfg, generator=gen())  # Adam state
    data = training._normalised_data(ens, *map(torch.from_numpy, (obs, act, nxt)),
                                     torch.arange(600), torch.arange(0), cfg)
    order = torch.stack([torch.randperm(600, generator=gen(k))[:200] for k in range(K)])

    masked = make(probabilistic)
    masked.load_state_dict(ens.state_dict())
    masked_opt = torch.optim.Adam(masked.parameters(), lr=1e-2, fused=True)
    masked_opt.load_state_dict(copy.deepcopy(opt_state))  # loading shares the tensors
    train_step(masked, masked_opt, data.x_tr[order], data.y_tr[order],
               torch.tensor([1.0, 0.0, 1.0]))

    opt = torch.optim.Adam(ens.parameters(), lr=1e-2, fused=True)
    opt.load_state_dict(copy.deepcopy(opt_state))
    before = snapshot(ens)
    frozen_state = {k: v[1].clone() for k, v in opt.state[ens.net[0].weight].items()
                    if v.ndim}
    stop = training._EarlyStopping.start(ens.member_parameters(), torch.zeros(K),
                                         torch.float32, torch.device("cpu"))
    stop.active = torch.tensor([True, False, True])
    stop.train_loss = torch.full((K,), 7.0)
    steps = _count_steps(monkeypatch)
    train, val = training._train_active(ens, opt, data, order, stop, cfg, None)
    assert [tuple(s[:2]) for s in steps] == [(2, 200)]  # member 1 not computed
    assert train[1] == 7.0 and val[1] == 0.0  # its last training loss, its best val
    after, want = snapshot(ens), snapshot(masked)
    for name in after:
        if name in ens.member_keys():
            assert torch.equal(after[name][1], before[name][1]), name
            torch.testing.assert_close(after[name][[0, 2]], want[name][[0, 2]])
            assert not torch.equal(after[name][0], before[name][0]), name
        else:
            torch.testing.assert_close(after[name], want[name])
    st, want_st = opt.state[ens.net[0].weight], masked_opt.state[masked.net[0].weight]
    for k, v in frozen_state.items():
        assert torch.equal(st[k][1], v), k  # the stopped member's Adam state kept as it was
        torch.testing.assert_close(st[k][[0, 2]], want_st[k][[0, 2]])
    assert torch.equal(st["step"], want_st["step"])


def test_subset_is_an_independent_copy_of_some_members():
    obs, act, nxt = linear_system(200)
    ens = make(probabilistic=True, num_elites=2)
    ens.update_normalizers(obs, act, nxt)
    rng = torch.get_rng_state()
    sub = ens.subset([2, 0])
    assert torch.equal(torch.get_rng_state(), rng)  # torch's global RNG not consumed
    assert sub.ensemble_size == 2 and sub.elite_indices.tolist() == [0, 1]
    assert np.array_equal(sub.predict(obs[:5], act[:5]), ens.predict(obs[:5], act[:5])[[2, 0]])
    before = snapshot(ens)
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
        sub.input_normalizer.mean.add_(1.0)
    assert_state_equal(snapshot(ens), before)


def test_raw_validation_space_is_the_mse_of_raw_deltas():
    """model_val_space='raw' scores the held-out MSE in the env's units (mbrl-lib's and the
    MBPO reference's early-stopping metric): equal to the MSE of the predicted raw deltas."""
    obs, act, nxt = linear_system(1500, noise=0.05)
    nxt[:, 0] = obs[:, 0] + 40.0 * (nxt[:, 0] - obs[:, 0])  # one large dimension
    ens = make()
    res, _ = fit_ensemble(ens, obs, act, nxt, FitConfig(model_batch_size=100, model_max_epochs=3,
                          model_val_space="raw"), generator=gen())
    idx = torch.from_numpy(res.holdout_indices)
    x = ens.input_normalizer.normalize(torch.cat((torch.from_numpy(obs), torch.from_numpy(act)), 1))
    y = ens.delta_normalizer.normalize(torch.from_numpy(nxt - obs))
    raw = _member_mse(ens, x[idx], y[idx], 4096, "raw").numpy()
    with torch.no_grad():
        mean, _ = ens.forward_normalized(x[idx].unsqueeze(0).expand(K, -1, -1))
        delta = ens.delta_normalizer.denormalize(mean)
    direct = (delta - torch.from_numpy(nxt - obs)[idx]).square().mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(raw, direct, rtol=1e-4)
    np.testing.assert_allclose(res.val_loss, raw, rtol=1e-5)
    normalized = _member_mse(ens, x[idx], y[idx], 4096).numpy()
    assert (raw > 10 * normalized).all()  # dominated by the large dimension


def test_warm_start_begins_from_lower_loss():
    obs, act, nxt = linear_system(2000)
    cfg = FitConfig(model_batch_size=100, model_max_epochs=10)
    warm = make()
    _, opt_state = fit_ensemble(warm, obs, act, nxt, cfg, generator=gen(0))
    obs2, act2, nxt2 = linear_system(2000, seed=5)
    cfg1 = FitConfig(model_batch_size=100, model_max_epochs=1)
    res_warm, _ = fit_ensemble(
        warm, obs2, act2, nxt2, cfg1, generator=gen(1), optimizer_state=opt_state
    )
    res_fresh, _ = fit_ensemble(make(seed=7), obs2, act2, nxt2, cfg1, generator=gen(1))
    print("warm history", res_warm.history, "fresh history", res_fresh.history)
    assert res_warm.history[0] < 0.1 * res_fresh.history[0]
    assert res_warm.history[1] < res_fresh.history[1]
    assert (res_warm.train_loss < res_fresh.train_loss).all()


def test_row_ids_hold_out_the_same_rows_in_every_fit():
    """With row ids (a buffer's lifetime indices) the holdout is a fixed function of the id:
    a row held out once is held out in every later fit on a grown buffer, so a warm-started
    member is never validated on rows it trained on; the newest rows fill a capped holdout."""
    obs, act, nxt = linear_system(3000)
    cfg = FitConfig(model_batch_size=100, model_max_epochs=1, model_holdout_ratio=0.2,
                    model_max_holdout=10_000)
    ens = make()
    first, _ = fit_ensemble(ens, obs[:2000], act[:2000], nxt[:2000], cfg, generator=gen(0),
                            row_ids=np.arange(2000))
    second, _ = fit_ensemble(ens, obs, act, nxt, cfg, generator=gen(1), row_ids=np.arange(3000))
    held1, held2 = set(first.holdout_indices), set(second.holdout_indices)
    assert held1 == {i for i in held2 if i < 2000}  # old rows keep their role
    assert 0.17 < len(held2) / 3000 < 0.23  # about holdout_ratio
    # without ids, a fresh random split: some of the first holdout is now trained on
    third, _ = fit_ensemble(ens, obs, act, nxt, cfg, generator=gen(2))
    assert held1 - set(third.holdout_indices)
    capped_cfg = FitConfig(model_batch_size=100, model_max_epochs=1, model_max_holdout=50)
    capped, _ = fit_ensemble(ens, obs, act, nxt, capped_cfg, generator=gen(3),
                             row_ids=np.arange(3000))
    assert len(capped.holdout_indices) == 50
    assert set(capped.holdout_indices) == set(sorted(held2)[-50:])
    with pytest.raises(ValueError, match="row_ids must be 3000 integers"):
        fit_ensemble(ens, obs, act, nxt, cfg, row_ids=np.arange(10))


def test_per_fit_holdout_split_ignores_row_ids():
    """``model_holdout_split='per_fit'`` (mbrl-lib's and the MBPO reference's rule): a fresh
    random split every fit even with row ids, the same as the split without them."""
    obs, act, nxt = linear_system(3000)
    cfg = FitConfig(model_batch_size=100, model_max_epochs=1, model_holdout_split="per_fit")
    ens = make()
    ids = np.arange(3000)
    first, _ = fit_ensemble(ens, obs, act, nxt, cfg, generator=gen(0), row_ids=ids)
    second, _ = fit_ensemble(ens, obs, act, nxt, cfg, generator=gen(1), row_ids=ids)
    unsplit, _ = fit_ensemble(make(), obs, act, nxt, cfg, generator=gen(1))
    assert len(first.holdout_indices) == len(second.holdout_indices) == 600
    assert set(first.holdout_indices) != set(second.holdout_indices)
    np.testing.assert_array_equal(second.holdout_indices, unsplit.holdout_indices)


def test_non_finite_inputs_raise_and_leave_weights_unchanged():
    obs, act, nxt = linear_system(300)
    obs = obs.astype(np.float64)
    obs[[3, 7]] = np.nan
    obs[7, 1] = np.inf
    nxt[10, 0] = np.inf
    act = act.astype(np.float64)
    act[20, 0] = 1e300  # finite in float64, inf after conversion to the model's float32
    ens = make()
    before = snapshot(ens)
    with pytest.raises(ValueError, match="obs: 2 of 300 rows.*act: 1 of 300.*next_obs: 1 of 300"):
        fit_ensemble(ens, obs, act, nxt, FitConfig(model_max_epochs=1))
    assert_state_equal(before, snapshot(ens))


@pytest.mark.parametrize(
    ("probabilistic", "cause"), [(False, "lr"), (True, "lr"), (False, "huge_value")]
)
def test_divergence_restores_pre_fit_state(probabilistic, cause):
    obs, act, nxt = linear_system(500)
    ens = make(probabilistic)
    _, opt_state = fit_ensemble(
        ens, obs, act, nxt, FitConfig(model_max_epochs=2), generator=gen()
    )
    before = snapshot(ens)
    if cause == "lr":  # absurd step size: weights blow up, losses overflow
        cfg = FitConfig(model_lr=1e10, model_batch_size=50, model_max_epochs=5)
        bad_act = act
    else:  # a finite float32 value that overflows inside the network (stale normalisers)
        cfg = FitConfig(model_batch_size=50, model_max_epochs=5, update_normalizers=False)
        bad_act = act.copy()
        bad_act[::7, 0] = 3e30
    with pytest.warns(RuntimeWarning, match="diverged"):
        res, opt_after = fit_ensemble(
            ens, obs, bad_act, nxt, cfg, generator=gen(1), optimizer_state=opt_state
        )
    assert res.diverged
    for name, t in ens.state_dict().items():
        assert torch.isfinite(t.float()).all(), name
    assert_state_equal(before, snapshot(ens))
    for st in opt_after["state"].values():
        assert all(torch.isfinite(v).all() for v in st.values() if torch.is_tensor(v))
    # The returned optimiser state is usable for a sane retry.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res2, _ = fit_ensemble(
            ens, obs, act, nxt, FitConfig(model_max_epochs=1), optimizer_state=opt_after
        )
    assert not res2.diverged


def test_member_state_round_trip_through_sub_ensemble():
    obs, act, nxt = linear_system(1000)
    main = make(k=3)
    main.update_normalizers(obs, act, nxt)
    sub = make(k=2, seed=9)
    sub.load_member_state(range(2), main.member_state([0, 2]))
    full = main.predict(obs[:20], act[:20])
    assert np.array_equal(sub.predict(obs[:20], act[:20]), full[[0, 2]])

    # Fit the subset elsewhere (same normaliser statistics), then send it back.
    cfg = FitConfig(model_batch_size=100, model_max_epochs=3, update_normalizers=False)
    fit_ensemble(sub, obs, act, nxt, cfg, generator=gen())
    state = sub.member_state([0, 1])
    assert state["net.0.weight"].shape[0] == 2 and "elite_mask" not in state
    main.load_member_state([0, 2], state)
    after = main.predict(obs[:20], act[:20])
    assert np.array_equal(after[[0, 2]], sub.predict(obs[:20], act[:20]))
    assert np.array_equal(after[1], full[1])  # the member that was not sent is untouched
    assert not np.allclose(after[0], full[0])
    with pytest.raises(ValueError, match="shape"):
        main.load_member_state([0], state)  # 2 members of state into 1 slot


# --------------------------------------------------------------------------- step budget
def _count_steps(monkeypatch):
    """Record the member-rows of every gradient step ``fit_ensemble`` takes."""
    from mbmpo_ray.models import training

    steps = []
    real = training.train_step

    def spy(ensemble, optimizer, x, y, w=None, autocast=None):
        steps.append(x.shape)
        return real(ensemble, optimizer, x, y, w, autocast)

    monkeypatch.setattr(training, "train_step", spy)
    return steps


def test_step_budget_caps_the_fit_however_much_data(monkeypatch):
    steps = _count_steps(monkeypatch)
    cfg = FitConfig(model_batch_size=50, model_max_epochs=1000, model_patience=1000,
                    model_improvement_threshold=0.0, model_fit_steps=70, model_check_steps=20)
    costs = []
    for n in (2_000, 20_000):
        steps.clear()
        res, _ = fit_ensemble(make(), *linear_system(n), cfg, generator=gen())
        costs.append(len(steps))
        assert all(shape[:2] == (K, 50) for shape in steps)
        assert res.epochs.max() == 4  # rounds of 20, 20, 20, 10 steps
        assert res.history[-1] < 0.5 * res.history[0]  # it did learn
    assert costs == [70, 70]
    # model_max_epochs still caps it: 100 training rows are 2 steps per pass
    steps.clear()
    fit_ensemble(make(), *linear_system(125),
                 dataclasses.replace(cfg, model_max_epochs=3), generator=gen())
    assert len(steps) == 6


def test_new_data_fraction_draws_batches_from_the_new_rows(monkeypatch):
    from mbmpo_ray.models import training

    drawn = []
    real = training._sampled_order
    monkeypatch.setattr(training, "_sampled_order",
                        lambda *a, **kw: drawn.append(real(*a, **kw)) or drawn[-1])
    obs, act, nxt = linear_system(1000)
    ids = np.arange(1000)
    cfg = FitConfig(model_batch_size=50, model_fit_steps=10, model_check_steps=5)
    for fraction, new_rows in ((1.0, 100), (0.5, 100), (0.0, 100), (1.0, 0)):
        drawn.clear()
        _, _ = fit_ensemble(make(), obs, act, nxt,
                            dataclasses.replace(cfg, model_new_data_fraction=fraction),
                            generator=gen(), row_ids=ids, new_rows=new_rows)
        # positions into the training rows; map them back to row ids (the split is by id)
        _, train_idx = training._stable_split(ids, 1000, cfg.model_holdout_ratio,
                                              cfg.model_max_holdout)
        rows = train_idx[torch.cat(drawn, dim=1)]
        share_new = float((rows >= 900).float().mean())
        expected = {0.0: 0.1, 0.5: 0.55, 1.0: 1.0}[fraction] if new_rows else 0.1
        print(fraction, new_rows, share_new)
        assert abs(share_new - expected) < 0.05


def test_budget_of_zero_is_the_paper_fit(monkeypatch):
    """model_fit_steps=0 keeps full passes: every training row is seen each epoch."""
    steps = _count_steps(monkeypatch)
    cfg = FitConfig(model_batch_size=100, model_max_epochs=2, model_patience=10,
                    model_bootstrap=False)
    fit_ensemble(make(), *linear_system(1000), cfg, generator=gen())
    assert len(steps) == 2 * 8  # 800 training rows per epoch, 2 epochs
