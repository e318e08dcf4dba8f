"""Fast unit tests of ``mbmpo_ray.meta``: config, policy, returns, TRPO helpers, inner and
outer step, meta step and the final task adaptation."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mbmpo_ray.meta import (
    GaussianMLPPolicy,
    LinearFeatureBaseline,
    MetaConfig,
    TaskBatch,
    adapt,
    adapt_policies,
    adapt_steps,
    adapt_tasks,
    backtracking_line_search,
    compute_returns,
    conjugate_gradient,
    discount_cumsum,
    estimate_advantages,
    explained_variance,
    gae,
    imagined_return,
    inner_gradients,
    make_gauss_newton_hvp,
    make_hvp,
    masked_mean,
    mean_kl,
    meta_step,
    normalize_advantages,
    outer_surrogate,
    ppo_surrogate,
    trpo_outer_step,
    trpo_step,
)
from mbmpo_ray.settings import rules_of

F64 = torch.float64


# ------------------------------------------------------------------------------------- helpers
def _tiny_policy(obs_dim: int = 3, act_dim: int = 2, obs_start: int = 0) -> GaussianMLPPolicy:
    return GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes=(4,), obs_start=obs_start)


def _random_params(policy: GaussianMLPPolicy, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float64 params with non-trivial output layer and log-std (init scales them down)."""
    g = torch.Generator().manual_seed(seed)
    return {k: 0.5 * torch.randn(s, generator=g, dtype=F64) for k, s in policy.param_shapes.items()}


def _task_batch(
    policy: GaussianMLPPolicy,
    task_params: dict[str, torch.Tensor] | None,
    num_tasks: int = 2,
    n: int = 3,
    h: int = 4,
    seed: int = 0,
) -> TaskBatch:
    """A fixed random batch (float64) with a ragged mask and constant advantages."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(num_tasks, n, h, policy.obs_dim, generator=g, dtype=F64)
    act = torch.randn(num_tasks, n, h, policy.act_dim, generator=g, dtype=F64)
    mask = torch.ones(num_tasks, n, h, dtype=F64)
    mask[0, 0, h - 1 :] = 0.0
    mask[-1, -1, h // 2 :] = 0.0
    adv = torch.randn(num_tasks, n, h, generator=g, dtype=F64) * mask
    if task_params is None:
        old_logp = torch.zeros(num_tasks, n, h, dtype=F64)
    else:
        with torch.no_grad():
            old_logp = policy.log_prob(task_params, obs, act, batched=True)
    zeros = torch.zeros_like(adv)
    return TaskBatch(obs, act, mask, adv, old_logp, zeros, zeros)


# ------------------------------------------------------------------------------------- policy
def test_task_batched_forward_equals_loop() -> None:
    policy = GaussianMLPPolicy(5, 2, hidden_sizes=(6, 7), obs_start=1)
    num_tasks = 3
    per_task = [_random_params(policy, seed=s) for s in range(num_tasks)]
    batched = {k: torch.stack([p[k] for p in per_task]) for k in policy.param_names}
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(num_tasks, 2, 5, 5, generator=g, dtype=F64)
    act = torch.randn(num_tasks, 2, 5, 2, generator=g, dtype=F64)
    mean_b, log_std_b = policy.mean_and_log_std(batched, obs, batched=True)
    logp_b = policy.log_prob(batched, obs, act, batched=True)
    kl_b = policy.kl(batched, {k: v.flip(0) for k, v in batched.items()}, obs, batched=True)
    ent_b = policy.entropy(batched, batched=True)
    assert mean_b.shape == (num_tasks, 2, 5, 2) and logp_b.shape == (num_tasks, 2, 5)
    for t in range(num_tasks):
        mean, log_std = policy.mean_and_log_std(per_task[t], obs[t])
        torch.testing.assert_close(mean_b[t], mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(log_std_b[t], log_std)
        torch.testing.assert_close(logp_b[t], policy.log_prob(per_task[t], obs[t], act[t]))
        other = per_task[num_tasks - 1 - t]
        torch.testing.assert_close(kl_b[t], policy.kl(per_task[t], other, obs[t]))
        torch.testing.assert_close(ent_b[t], policy.entropy(per_task[t]))
    # obs_start: the first entry is ignored
    obs2 = obs.clone()
    obs2[..., 0] += 100.0
    torch.testing.assert_close(policy.mean_and_log_std(batched, obs2, batched=True)[0], mean_b)


def test_policy_log_prob_kl_sample_consistency() -> None:
    policy = _tiny_policy()
    p = _random_params(policy)
    q = _random_params(policy, seed=1)
    obs = torch.randn(7, 3, dtype=F64)
    act = torch.randn(7, 2, dtype=F64)
    mean, log_std = policy.mean_and_log_std(p, obs)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(act).sum(-1)
    torch.testing.assert_close(policy.log_prob(p, obs, act), ref)
    mq, lq = policy.mean_and_log_std(q, obs)
    ref_kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, log_std.exp()), torch.distributions.Normal(mq, lq.exp())
    ).sum(-1)
    torch.testing.assert_close(policy.kl(p, q, obs), ref_kl)
    assert torch.equal(policy.kl(p, p, obs), torch.zeros(7, dtype=F64))
    a, logp = policy.sample(p, obs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(logp, policy.log_prob(p, obs, a))
    vec = policy.flatten(p)
    assert vec.shape == (policy.num_params,)
    assert all(torch.equal(policy.unflatten(vec)[k], p[k]) for k in p)
    pq = {k: torch.stack([p[k], q[k]]) for k in p}
    mat = policy.flatten(pq, batched=True)
    assert mat.shape == (2, policy.num_params) and torch.equal(mat[1], policy.flatten(q))
    assert all(torch.equal(policy.unflatten(mat, batched=True)[k], pq[k]) for k in p)
    init = policy.init_params(torch.Generator().manual_seed(0))
    assert list(init) == policy.param_names
    assert torch.equal(init["log_std"], torch.zeros(2))


# ------------------------------------------------------------------------------------- returns
def test_discounting_and_gae_match_hand_loop() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 6, generator=g, dtype=F64)
    values = torch.randn(2, 3, 6, generator=g, dtype=F64)
    mask = torch.ones(2, 3, 6, dtype=F64)
    mask[0, 1, 4:] = 0.0  # terminated at step 3
    mask[1, 2, 1:] = 0.0  # terminated at step 0
    gamma, lam = 0.9, 0.7
    ret = compute_returns(rewards, mask, gamma)
    adv = gae(rewards, values, mask, gamma, lam)
    for t in range(2):
        for n in range(3):
            length = int(mask[t, n].sum())
            r, v = rewards[t, n, :length].tolist(), values[t, n, :length].tolist()
            exp_ret, running = [0.0] * length, 0.0
            for h in reversed(range(length)):
                running = r[h] + gamma * running
                exp_ret[h] = running
            exp_adv, running = [0.0] * length, 0.0
            for h in reversed(range(length)):
                nv = v[h + 1] if h + 1 < length else 0.0
                running = r[h] + gamma * nv - v[h] + gamma * lam * running
                exp_adv[h] = running
            torch.testing.assert_close(ret[t, n, :length], torch.tensor(exp_ret, dtype=F64))
            torch.testing.assert_close(adv[t, n, :length], torch.tensor(exp_adv, dtype=F64))
            assert torch.all(ret[t, n, length:] == 0) and torch.all(adv[t, n, length:] == 0)
    # lambda = 1: advantage = return - baseline
    torch.testing.assert_close(gae(rewards, values, mask, gamma, 1.0), (ret - values) * mask)
    x = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    torch.testing.assert_close(discount_cumsum(x, 0.5), torch.tensor([2.75, 3.5, 3.0], dtype=F64))


def test_normalize_advantages_per_task_and_explained_variance() -> None:
    g = torch.Generator().manual_seed(0)
    adv = (
        torch.randn(3, 4, 5, generator=g, dtype=F64)
        * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1).to(F64)
        + 5.0
    )
    mask = torch.ones_like(adv)
    mask[1, :, 3:] = 0.0
    out = normalize_advantages(adv, mask)
    for t in range(3):
        valid = out[t][mask[t] > 0]
        assert abs(float(valid.mean())) < 1e-10
        assert abs(float(valid.std(unbiased=False)) - 1.0) < 1e-6
    assert torch.all(out[mask == 0] == 0)
    assert explained_variance(adv, adv, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(adv) + 3.0, adv, mask) < 0.5
    assert math.isnan(explained_variance(adv, torch.ones_like(adv), mask))


def test_linear_baseline_matches_numpy_lstsq() -> None:
    g = torch.Generator().manual_seed(0)
    num_tasks, n, h, d = 2, 3, 7, 2
    obs = torch.randn(num_tasks, n, h, d, generator=g, dtype=F64) * 4.0  # some clipped at 10
    obs[0, 0, 0, 0] = 30.0
    returns = torch.randn(num_tasks, n, h, generator=g, dtype=F64)
    mask = torch.ones(num_tasks, n, h, dtype=F64)
    mask[1, 0, 4:] = 0.0
    base = LinearFeatureBaseline().fit(obs, returns, mask)
    pred = base.predict(obs, mask)
    for t in range(num_tasks):
        rows, ys = [], []
        for i in range(n):
            for step in range(h):
                if mask[t, i, step] == 0:
                    continue
                o = np.clip(obs[t, i, step].numpy(), -10, 10)
                tt = step / 100.0
                rows.append(np.concatenate([o, o**2, [tt, tt**2, tt**3, 1.0]]))
                ys.append(float(returns[t, i, step]))
        x, y = np.asarray(rows), np.asarray(ys)
        coeffs = np.linalg.lstsq(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y, rcond=None)[0]
        np.testing.assert_allclose(base.coeffs[t].numpy(), coeffs, rtol=1e-6, atol=1e-8)
        valid = mask[t] > 0
        np.testing.assert_allclose(pred[t][valid].numpy(), x @ coeffs, rtol=1e-6, atol=1e-8)
    assert torch.all(pred[mask == 0] == 0)


# ------------------------------------------------------------------------------------- optim
@pytest.mark.parametrize("n", [3, 8, 20])
def test_conjugate_gradient_solves_spd(n: int) -> None:
    rng = np.random.default_rng(n)
    m = rng.standard_normal((n, n))
    a = m @ m.T + 0.5 * np.eye(n)
    b = rng.standard_normal(n)
    at = torch.tensor(a, dtype=F64)
    x = conjugate_gradient(lambda v: at @ v, torch.tensor(b, dtype=F64), iters=5 * n, tol=1e-24)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), rtol=1e-7, atol=1e-9)


def test_kl_hvp_equals_explicit_hessian() -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    theta0 = policy.flatten(params)
    obs = torch.randn(11, 3, dtype=F64, generator=torch.Generator().manual_seed(3))

    def kl_fn(x: torch.Tensor) -> torch.Tensor:
        return policy.kl(params, policy.unflatten(x), obs).mean()

    v = torch.randn(policy.num_params, dtype=F64, generator=torch.Generator().manual_seed(4))
    for point in (theta0, theta0 + 0.1 * torch.randn_like(theta0)):
        hess = torch.autograd.functional.hessian(kl_fn, point)
        hvp = make_hvp(kl_fn, point, damping=0.0)
        torch.testing.assert_close(hvp(v), hess @ v, rtol=1e-9, atol=1e-10)
        hvp_d = make_hvp(kl_fn, point, damping=0.1)
        torch.testing.assert_close(hvp_d(v), hess @ v + 0.1 * v, rtol=1e-9, atol=1e-10)


def test_meta_kl_hvp_through_inner_step_equals_explicit_hessian() -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    theta0 = policy.flatten(params)
    pre = _task_batch(policy, None, seed=1)
    post = _task_batch(policy, None, seed=2)
    old = {k: v.detach() for k, v in adapt(policy, params, pre, 0.3).items()}

    def kl_fn(x: torch.Tensor) -> torch.Tensor:
        new = adapt(policy, policy.unflatten(x), pre, 0.3)
        return mean_kl(policy, old, new, post.obs, post.mask)

    v = torch.randn(policy.num_params, dtype=F64, generator=torch.Generator().manual_seed(4))
    point = theta0 + 0.05 * torch.randn_like(theta0)
    hess = torch.autograd.functional.hessian(kl_fn, point)
    torch.testing.assert_close(make_hvp(kl_fn, point)(v), hess @ v, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 2])
def test_gauss_newton_hvp_equals_exact_meta_kl_hessian_at_old_params(steps: int) -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    theta0 = policy.flatten(params)
    pre = [_task_batch(policy, None, seed=1 + i) for i in range(steps)]
    post = _task_batch(policy, None, seed=9)
    old = {k: v.detach() for k, v in adapt_steps(policy, params, pre, 0.3).items()}

    def inner(x: torch.Tensor) -> torch.Tensor:
        return policy.flatten(adapt_steps(policy, policy.unflatten(x), pre, 0.3), batched=True)

    def outer(y: torch.Tensor) -> torch.Tensor:
        new = policy.unflatten(y, batched=True)
        return mean_kl(policy, old, new, post.obs, post.mask)

    def kl_fn(x: torch.Tensor) -> torch.Tensor:
        return outer(inner(x))

    v = torch.randn(policy.num_params, dtype=F64, generator=torch.Generator().manual_seed(4))
    hess = torch.autograd.functional.hessian(kl_fn, theta0)
    gn = make_gauss_newton_hvp(inner, outer, theta0, damping=1e-3)
    torch.testing.assert_close(gn(v), hess @ v + 1e-3 * v, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gn(v), make_hvp(kl_fn, theta0, 1e-3)(v), rtol=1e-8, atol=1e-10)


def test_line_search_restores_old_params_when_nothing_improves() -> None:
    x0 = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    calls: list[torch.Tensor] = []

    def worse(x: torch.Tensor) -> tuple[float, float]:
        calls.append(x)
        return -1.0 - float((x - x0).abs().sum()), 0.0

    res = backtracking_line_search(worse, x0, torch.ones(3, dtype=F64), 0.0, 0.01, 0.5, 15)
    assert not res.accepted and res.num_steps == 15 and len(calls) == 15
    assert torch.equal(res.x, x0)
    # accepted only when the KL bound also holds
    res = backtracking_line_search(
        lambda x: (float(x.sum()), float(x.sum())), x0 * 0, torch.ones(3, dtype=F64), 0.0, 0.5
    )
    assert res.accepted and float(res.x.sum()) <= 0.5 and res.num_steps > 1


def test_trpo_step_restores_params_when_surrogate_always_gets_worse() -> None:
    x0 = torch.tensor([0.5, -0.25, 1.0, 2.0], dtype=F64)
    g = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=F64)

    def surrogate(x: torch.Tensor) -> torch.Tensor:  # gradient g at x0, but every step loses
        return g @ (x - x0) - 1e6 * (x - x0).pow(2).sum()

    def kl(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x - x0).pow(2).sum()

    x_new, info = trpo_step(x0, surrogate, kl, max_kl=0.01, ls_max_steps=15)
    assert torch.equal(x_new, x0)
    assert not info.accepted and info.ls_steps == 15

    # a well-behaved quadratic: the step is taken, improves, and respects the KL bound
    def good(x: torch.Tensor) -> torch.Tensor:
        return g @ (x - x0) - 0.5 * (x - x0).pow(2).sum()

    x_new, info = trpo_step(x0, good, kl, max_kl=0.01)
    assert info.accepted and info.ls_steps == 1
    assert float(kl(x_new)) == pytest.approx(0.01, rel=1e-4)
    assert float(good(x_new)) > 0.0


# ------------------------------------------------------------------------ inner / outer step
def test_zero_inner_lr_gives_theta_bit_for_bit() -> None:
    policy = GaussianMLPPolicy(3, 2)
    params = policy.init_params(torch.Generator().manual_seed(0))
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    pre = _task_batch(policy, None, num_tasks=4, seed=1)
    pre = TaskBatch(*(getattr(pre, f).float() for f in TaskBatch.__dataclass_fields__))
    for first_order in (False, True):
        tp = adapt(policy, params, pre, 0.0, first_order=first_order)
        tp2 = adapt_steps(policy, params, [pre, pre], 0.0, first_order)
        for k, p in params.items():
            assert tp[k].shape == (4, *p.shape)
            for t in range(4):
                assert torch.equal(tp[k][t], p) and torch.equal(tp2[k][t], p)


def _meta_objective_grad(policy, params, pre, post, inner_lr, first_order, steps=1):
    x = policy.flatten(params).detach().requires_grad_(True)
    tp = adapt_steps(policy, policy.unflatten(x), [pre] * steps, inner_lr, first_order)
    (grad,) = torch.autograd.grad(outer_surrogate(policy, tp, post), x)
    return grad


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_matches_finite_differences(steps: int) -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    inner_lr = 0.3
    pre = _task_batch(policy, None, seed=1)
    post_params = adapt_steps(policy, params, [pre] * steps, inner_lr)
    post = _task_batch(policy, {k: v.detach() for k, v in post_params.items()}, seed=2)
    grad = _meta_objective_grad(policy, params, pre, post, inner_lr, False, steps)

    def f(x: torch.Tensor) -> float:
        tp = adapt_steps(policy, policy.unflatten(x), [pre] * steps, inner_lr, True)
        return float(outer_surrogate(policy, tp, post).detach())

    theta = policy.flatten(params).detach()
    eps = 1e-6
    fd = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = eps
        fd[i] = (f(theta + e) - f(theta - e)) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)
    # first-order MAML ignores the inner Jacobian, so it must differ here
    grad_fo = _meta_objective_grad(policy, params, pre, post, inner_lr, True, steps)
    assert not torch.allclose(grad_fo, grad, rtol=1e-3, atol=1e-6)


def test_first_order_equals_second_order_only_without_adaptation() -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    pre = _task_batch(policy, None, seed=1)
    post = _task_batch(policy, None, seed=2)
    g2 = _meta_objective_grad(policy, params, pre, post, 0.0, False)
    g1 = _meta_objective_grad(policy, params, pre, post, 0.0, True)
    assert torch.equal(g1, g2)
    g2 = _meta_objective_grad(policy, params, pre, post, 0.05, False)
    g1 = _meta_objective_grad(policy, params, pre, post, 0.05, True)
    assert not torch.allclose(g1, g2, rtol=1e-4, atol=0)


def test_inner_step_is_per_task_vanilla_policy_gradient() -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    pre = _task_batch(policy, None, num_tasks=3, seed=5)
    tp = adapt(policy, params, pre, 0.1, first_order=True)
    for t in range(3):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        logp = policy.log_prob(p, pre.obs[t], pre.actions[t])
        j = (logp * pre.advantages[t] * pre.mask[t]).sum() / pre.mask[t].sum()
        grads = torch.autograd.grad(j, list(p.values()))
        for (k, v), gk in zip(p.items(), grads, strict=True):
            torch.testing.assert_close(tp[k][t], v + 0.1 * gk)


def test_adapt_reuses_precomputed_gradients_bit_for_bit() -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    pre = _task_batch(policy, None, num_tasks=3, seed=5)
    tp = policy.expand_params(params, 3)
    gradients = inner_gradients(policy, tp, pre)
    reused = adapt(policy, tp, pre, 0.1, first_order=True, batched_params=True,
                   gradients=gradients)
    fresh = adapt(policy, tp, pre, 0.1, first_order=True, batched_params=True)
    assert all(torch.equal(reused[k], fresh[k]) for k in fresh)
    with pytest.raises(ValueError, match="first_order"):
        adapt(policy, tp, pre, 0.1, batched_params=True, gradients=gradients)


def test_ppo_surrogate_clips_and_matches_unclipped_at_old_params() -> None:
    policy = _tiny_policy()
    params = _random_params(policy)
    tp = policy.expand_params(params, 2)
    post = _task_batch(policy, tp, seed=3)
    torch.testing.assert_close(ppo_surrogate(policy, tp, post), outer_surrogate(policy, tp, post))
    torch.testing.assert_close(
        outer_surrogate(policy, tp, post), masked_mean(post.advantages, post.mask, (1, 2)).mean()
    )
    # every ratio = e > 1 + clip with positive advantages: the clipped objective is flat
    with torch.no_grad():
        logp = policy.log_prob(tp, post.obs, post.actions, batched=True)
    far = TaskBatch(
        post.obs,
        post.actions,
        post.mask,
        post.advantages.abs(),
        logp - 1.0,
        post.returns,
        post.values,
    )
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    tp_theta = policy.expand_params(theta, 2)
    grads = torch.autograd.grad(ppo_surrogate(policy, tp_theta, far, 0.2), list(theta.values()))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    expected = 1.2 * masked_mean(far.advantages, far.mask, (1, 2)).mean()
    torch.testing.assert_close(ppo_surrogate(policy, tp_theta, far, 0.2), expected)


def test_imagined_return_and_masked_mean() -> None:
    rewards = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]])
    batch = SimpleNamespace(rewards=rewards, mask=mask)
    torch.testing.assert_close(imagined_return(batch), torch.tensor([3.0]))
    torch.testing.assert_close(masked_mean(rewards, mask), torch.tensor(6.0 / 5.0))
    torch.testing.assert_close(masked_mean(rewards, mask, (1, 2)), torch.tensor([6.0 / 5.0]))


# ------------------------------------------------------------------------------------- config
META_FIELDS = (
    "num_tasks", "inner_lr", "num_inner_steps", "first_order", "gamma", "gae_lambda",
    "normalize_advantages", "baseline_reg_coeff", "outer_optimizer", "max_kl", "cg_iters",
    "cg_damping", "hvp_method", "hvp_subsample", "ls_backtrack_ratio", "ls_max_steps",
    "ppo_clip", "ppo_epochs", "ppo_lr",
)


def test_meta_config_fields_defaults_and_rules() -> None:
    cfg = MetaConfig()
    assert tuple(f.name for f in dataclasses.fields(MetaConfig)) == META_FIELDS
    assert set(rules_of(MetaConfig)) == set(META_FIELDS)  # every field has a rule
    assert cfg.problems() == [] and cfg.validate() is cfg
    assert (cfg.inner_lr, cfg.max_kl, cfg.gamma, cfg.gae_lambda) == (0.001, 0.01, 0.99, 1.0)
    assert (cfg.num_tasks, cfg.num_inner_steps, cfg.first_order, cfg.outer_optimizer) == (
        20, 1, False, "trpo")
    assert (cfg.cg_iters, cfg.cg_damping, cfg.hvp_method, cfg.hvp_subsample) == (
        10, 1e-5, "gauss_newton", 5)
    assert (cfg.ls_backtrack_ratio, cfg.ls_max_steps) == (0.8, 15)
    assert (cfg.ppo_clip, cfg.ppo_epochs, cfg.ppo_lr) == (0.2, 5, 1e-3)
    assert (cfg.normalize_advantages, cfg.baseline_reg_coeff) == (True, 1e-5)
    # boundary values that are allowed
    ok = MetaConfig(inner_lr=0.0, gamma=1.0, gae_lambda=0.0, cg_damping=0.0, hvp_subsample=1)
    assert ok.validate() is ok


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # wrong values
        ("inner_lr", -0.1),
        ("inner_lr", float("nan")),
        ("max_kl", 0.0),
        ("outer_optimizer", "adam"),
        ("num_inner_steps", 0),
        ("gamma", 0.0),
        ("gamma", 1.5),
        ("gae_lambda", 1.1),
        ("ls_backtrack_ratio", 1.0),
        ("num_tasks", 0),
        ("hvp_method", "bfgs"),
        ("hvp_subsample", 0),
        ("baseline_reg_coeff", 0.0),
        ("cg_damping", -1e-3),
        ("ppo_clip", 0.0),
        # wrong types
        ("num_tasks", 2.5),
        ("num_tasks", "abc"),
        ("num_tasks", True),
        ("cg_iters", None),
        ("hvp_subsample", 2.0),
        ("gamma", "0.99"),
        ("max_kl", float("inf")),
        ("outer_optimizer", 1),
        ("first_order", 1),
        ("normalize_advantages", "yes"),
        ("ppo_epochs", 5.0),
    ],
)
def test_meta_config_rejects_wrong_types_and_values(field: str, value: object) -> None:
    cfg = MetaConfig(**{field: value})
    assert len(cfg.problems()) == 1 and cfg.problems()[0].startswith(f"{field} must be ")
    with pytest.raises(ValueError, match=rf"MetaConfig: .*\n  - {field} must be .*got"):
        cfg.validate()


def test_meta_config_lists_every_problem_at_once() -> None:
    cfg = MetaConfig(num_tasks=2.5, gamma=2.0, outer_optimizer="sgd")
    with pytest.raises(ValueError, match="3 invalid") as err:
        cfg.validate()
    for field in ("num_tasks", "gamma", "outer_optimizer"):
        assert f"{field} must be" in str(err.value)
    assert "'trpo', 'ppo'" in str(err.value)


# ------------------------------------------------------------------------------------- meta step
class _PointMass:
    """Two-member toy 'ensemble': next = obs + c_k * clip(act); member k has gain c_k."""

    ensemble_size = 2

    def sample_next_obs(self, obs, act, *, deterministic=True, generator=None):
        gains = torch.tensor([0.2, 0.1], dtype=obs.dtype).view(2, 1, 1)
        return obs + gains * act


def _toy_sample_fn(policy, num_tasks=4, n=16, horizon=12, seed=0):
    from mbmpo_ray.imagination import imagine

    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(num_tasks, n, 2, generator=gen)

    def sample_fn(task_params):
        def policy_fn(obs, generator):
            return policy.sample(task_params, obs, generator, batched=True)

        return imagine(
            _PointMass(),
            policy_fn,
            start,
            horizon,
            lambda o, a, o2: -(o2**2).sum(-1),
            None,
            action_low=-1.0,
            action_high=1.0,
            generator=gen,
        )

    return sample_fn


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"outer_optimizer": "ppo"},
        {"num_inner_steps": 2, "first_order": True},
        {"inner_lr": 0.0},
        {"hvp_method": "exact"},
        {"hvp_method": "first_order"},
    ],
)
def test_meta_step_runs_and_improves_toy_problem(overrides: dict) -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,))
    params = policy.init_params(torch.Generator().manual_seed(0))
    cfg = MetaConfig(**{"num_tasks": 4, "inner_lr": 0.05, "max_kl": 0.05, **overrides})
    sample_fn = _toy_sample_fn(policy)
    returns = []
    for _ in range(6):
        new_params, diag = meta_step(policy, params, sample_fn, cfg, ensemble_size=2)
        returns.append(diag["pre_return_mean"])
        params = new_params
    assert diag["pre_return_per_task"].shape == (4,)
    assert diag["post_return_per_task"].shape == (4,)
    np.testing.assert_array_equal(diag["task_members"], [0, 0, 1, 1])
    for key in (
        "surrogate_before",
        "surrogate_after",
        "kl_after",
        "inner_grad_norm",
        "baseline_ev_pre",
        "baseline_ev_post",
        "ls_steps",
        "ls_accepted",
    ):
        assert np.isfinite(diag[key]), key
    if cfg.outer_optimizer == "trpo":
        assert diag["kl_after"] <= cfg.max_kl * (1 + 1e-6)
    assert returns[-1] > returns[0]


def test_meta_step_rejects_wrong_task_count() -> None:
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(4,))
    params = policy.init_params()
    two_task_fn = _toy_sample_fn(policy, num_tasks=2)

    def sample_fn(task_params):
        return two_task_fn({k: v[:2] for k, v in task_params.items()})

    with pytest.raises(ValueError, match="num_tasks"):
        meta_step(policy, params, sample_fn, MetaConfig(num_tasks=4))
    with pytest.raises(ValueError, match="num_tasks"):
        adapt_policies(policy, params, sample_fn, MetaConfig(num_tasks=4))
    with pytest.raises(ValueError, match="task axis"):
        policy.mean_and_log_std(policy.expand_params(params, 3), torch.zeros(2, 5, 2), True)


def _perturbed_params(policy: GaussianMLPPolicy) -> dict[str, torch.Tensor]:
    """float32 params whose inner gradient is not tiny (the output layer starts near 0)."""
    g = torch.Generator().manual_seed(1)
    init = policy.init_params(torch.Generator().manual_seed(0))
    return {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in init.items()}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("inner_lr", [0.05, 0.0])
def test_adapt_policies_equals_manual_inner_loop(steps: int, inner_lr: float) -> None:
    """The learner's final adaptation, written out: sample, estimate advantages, first-order
    inner step, detach; bit for bit, and the sampler's RNG is consumed alike."""
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    params = _perturbed_params(policy)
    cfg = MetaConfig(num_tasks=4, inner_lr=inner_lr, num_inner_steps=steps)
    sample_a = _toy_sample_fn(policy, seed=3)
    got = adapt_policies(policy, params, sample_a, cfg)

    sample_b = _toy_sample_fn(policy, seed=3)
    task_params = policy.expand_params(params, 4)
    for _ in range(steps):
        tb = estimate_advantages(policy, task_params, sample_b(task_params), cfg.gamma,
                                 cfg.gae_lambda, cfg.normalize_advantages, cfg.baseline_reg_coeff)
        adapted = adapt(policy, task_params, tb, inner_lr, first_order=True, batched_params=True)
        task_params = {k: v.detach() for k, v in adapted.items()}

    assert list(got) == policy.param_names
    for k, p in params.items():
        assert got[k].shape == (4, *p.shape) and not got[k].requires_grad
        assert torch.equal(got[k], task_params[k])
    theta = policy.flatten(params)
    for t in range(4):  # inner_lr = 0: every task policy is theta; else each one moved
        task_t = policy.flatten({k: v[t] for k, v in got.items()})
        assert torch.equal(task_t, theta) == (inner_lr == 0.0)
    assert torch.equal(sample_a(got).actions, sample_b(task_params).actions)


def test_adapt_tasks_returns_the_batches_and_first_inner_gradient() -> None:
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    params = _perturbed_params(policy)
    cfg = MetaConfig(num_tasks=4, inner_lr=0.05, num_inner_steps=2)
    with_grads = adapt_tasks(policy, params, _toy_sample_fn(policy, seed=3), cfg,
                             with_first_grads=True)
    plain = adapt_tasks(policy, params, _toy_sample_fn(policy, seed=3), cfg)
    assert plain.first_grads is None and len(with_grads.batches) == 2
    assert all(torch.equal(with_grads.task_params[k], plain.task_params[k]) for k in params)
    assert torch.equal(with_grads.first_raw.obs, with_grads.batches[0].obs)
    _, grads = inner_gradients(policy, policy.expand_params(params, 4), with_grads.batches[0])
    assert all(torch.equal(with_grads.first_grads[k], grads[k]) for k in grads)
    assert with_grads.sample_seconds > 0.0


def test_estimate_advantages_recomputes_old_log_probs_and_baseline() -> None:
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(4,))
    params = policy.expand_params(policy.init_params(), 4)
    raw = _toy_sample_fn(policy)(params)
    tb = estimate_advantages(policy, params, raw, gamma=0.99, gae_lambda=1.0, normalize=False)
    torch.testing.assert_close(tb.old_log_probs, raw.log_probs)
    torch.testing.assert_close(tb.advantages, (tb.returns - tb.values) * tb.mask)
    assert explained_variance(tb.values, tb.returns, tb.mask) > 0.5


def test_hvp_subsample_keeps_the_trpo_direction() -> None:
    """CG on every 2nd rollout gives nearly the full-batch natural gradient; k = 1 is exact."""
    policy = _tiny_policy()
    params = _random_params(policy)
    pre = _task_batch(policy, policy.expand_params(params, 2), n=40, h=6, seed=1)
    post_params = adapt(policy, params, pre, 0.01, first_order=True)
    post = _task_batch(policy, post_params, n=40, h=6, seed=2)

    def step(k: int) -> torch.Tensor:
        cfg = MetaConfig(num_tasks=2, inner_lr=0.01, hvp_subsample=k, ls_max_steps=30)
        new, info = trpo_outer_step(policy, params, [pre], post, cfg)
        assert info["ls_accepted"] == 1.0
        return policy.flatten(new) - policy.flatten(params)

    full, full_again, sub = step(1), step(1), step(2)
    assert torch.equal(full, full_again)
    cos = torch.dot(full, sub) / (full.norm() * sub.norm())
    assert cos > 0.95, float(cos)
    assert not torch.equal(full, sub)
    with pytest.raises(ValueError, match="hvp_subsample"):
        MetaConfig(hvp_subsample=0).validate()


def test_plasticity_ranks_the_policy_change_against_disagreement() -> None:
    from mbmpo_ray.imagination import ImaginedBatch
    from mbmpo_ray.meta.step import plasticity

    policy = _tiny_policy()
    params = _random_params(policy)
    g = torch.Generator().manual_seed(3)
    task_params = {k: v.expand(2, *v.shape) + 0.3 * torch.randn(2, *v.shape, generator=g,
                                                                  dtype=F64)
                   for k, v in params.items()}
    T, N, H = 2, 6, 20
    obs = torch.randn(T, N, H, 3, generator=g, dtype=F64)
    mask = torch.ones(T, N, H, dtype=F64)
    mask[:, :, 15:] = 0.0  # steps that did not happen: excluded even with huge values
    obs[:, :, 15:] = 1e6
    zeros = torch.zeros(T, N, H, dtype=F64)
    raw = ImaginedBatch(obs=obs, actions=torch.zeros(T, N, H, 2, dtype=F64), rewards=zeros,
                        dones=zeros.bool(), mask=mask, log_probs=zeros, next_obs=obs)
    kl_fn = lambda o, a: policy.kl(policy.expand_params(params, T), task_params, o,  # noqa: E731
                                   batched=True)
    same = plasticity(policy, params, task_params, raw, kl_fn, stride=2, bins=4)
    opposite = plasticity(policy, params, task_params, raw, lambda o, a: -kl_fn(o, a),
                          stride=2, bins=4)
    assert same["plasticity_rank_corr"] == pytest.approx(1.0)
    assert opposite["plasticity_rank_corr"] == pytest.approx(-1.0)
    kl_bins = [same[f"plasticity_kl_bin{i}"] for i in range(4)]
    assert kl_bins == sorted(kl_bins) and kl_bins[0] < kl_bins[-1]
    assert same["plasticity_kl_mean"] < 1e3  # the masked 1e6 states were left out
    assert same["plasticity_kl_mean"] == pytest.approx(same["plasticity_disagreement_mean"])
    unchanged = plasticity(policy, params, policy.expand_params(params, T), raw, kl_fn)
    assert unchanged["plasticity_kl_mean"] == 0.0


def test_meta_step_reports_plasticity_when_given_a_disagreement() -> None:
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,))
    params = policy.init_params(torch.Generator().manual_seed(0))
    cfg = MetaConfig(num_tasks=4, inner_lr=0.05, max_kl=0.05)
    _, diag = meta_step(policy, params, _toy_sample_fn(policy), cfg,
                        disagreement_fn=lambda o, a: o.norm(dim=-1))
    assert diag["plasticity_kl_mean"] > 0
    assert -1.0 <= diag["plasticity_rank_corr"] <= 1.0
    _, plain = meta_step(policy, params, _toy_sample_fn(policy), cfg)
    assert not any(k.startswith("plasticity") for k in plain)
