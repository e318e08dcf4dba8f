import ast
import sys
from pathlib import Path

import pytest
import torch

from mbmpo_ray.imagination import (
    AutocastDynamics,
    BiasedDynamics,
    ImaginationSampler,
    StateBounds,
    autocast_dtype,
    bf16_is_fast,
    first_task_of_each_member,
    gaussian_sample,
    imagine,
    task_members,
    task_seed,
)
from mbmpo_ray.meta import GaussianMLPPolicy
from mbmpo_ray.models import DynamicsEnsemble

PACKAGE = Path(__file__).resolve().parents[2] / "mbmpo_ray"


class LinearMembers:
    """K linear systems next = s + (k + 1) * a, one per member."""

    def __init__(self, k):
        self.ensemble_size = k

    def sample_next_obs(self, obs_K_B_D, act_K_B_A, *, deterministic=True, generator=None):
        scale = torch.arange(1, self.ensemble_size + 1, dtype=obs_K_B_D.dtype).view(-1, 1, 1)
        return obs_K_B_D + scale * act_K_B_A.sum(-1, keepdim=True)


def const_policy(value):
    def fn(obs, gen):
        act = torch.full(obs.shape[:-1] + (1,), value, dtype=obs.dtype)
        return act, torch.zeros(obs.shape[:-1], dtype=obs.dtype)

    return fn


def test_task_members_uses_every_member_equally():
    m = task_members(20, 5)
    assert torch.equal(torch.bincount(m), torch.full((5,), 4))
    assert torch.equal(m[:4], torch.zeros(4, dtype=torch.long))
    for num_tasks, k in [(20, 5), (5, 5), (6, 3), (4, 1), (12, 4)]:
        m = task_members(num_tasks, k)
        assert m.dtype == torch.long and m.shape == (num_tasks,)
        assert torch.equal(torch.bincount(m, minlength=k), torch.full((k,), num_tasks // k))
        assert torch.all(m[1:] >= m[:-1])  # member-major: T x N -> K x (T/K * N) reshapes
    with pytest.raises(ValueError, match="multiple of ensemble_size"):
        task_members(7, 5)
    for num_tasks, k in [(6, 4), (0, 2), (3, 5), (5, 0)]:
        with pytest.raises(ValueError, match="multiple|ensemble_size"):
            task_members(num_tasks, k)


def test_first_task_of_each_member():
    assert first_task_of_each_member(20, 5) == [0, 4, 8, 12, 16]
    assert first_task_of_each_member(3, 3) == [0, 1, 2]
    assert first_task_of_each_member(4, 1) == [0]
    for num_tasks, k in [(20, 5), (6, 3), (12, 4)]:
        members = task_members(num_tasks, k)
        first = first_task_of_each_member(num_tasks, k)
        assert members[first].tolist() == list(range(k))
    with pytest.raises(ValueError, match="multiple"):
        first_task_of_each_member(6, 4)


def test_each_task_runs_in_its_member_and_actions_are_clipped():
    K, T, N, H = 2, 4, 3, 5
    start = torch.zeros(T, N, 2)
    reward_fn = lambda o, a, n: n[..., 0]
    batch = imagine(LinearMembers(K), const_policy(3.0), start, H, reward_fn, None,
                    action_low=-1.0, action_high=1.0)
    assert batch.obs.shape == (T, N, H, 2) and batch.actions.shape == (T, N, H, 1)
    # raw actions stored, clipped action (1.0) used: member k moves by (k+1) per step
    assert torch.all(batch.actions == 3.0)
    expected_step = torch.tensor([1.0, 1.0, 2.0, 2.0]).view(T, 1, 1)
    torch.testing.assert_close(batch.next_obs[..., 0],
                               expected_step * torch.arange(1, H + 1).view(1, 1, H).expand(T, N, H))
    assert batch.mask.sum() == T * N * H and batch.num_steps == T * N * H
    assert batch.disagreement is None


def test_termination_masks_later_steps_and_freezes_state():
    K, H = 1, 6
    start = torch.tensor([[[0.0], [10.0]]])
    term = lambda n: n[..., 0] >= 3.0
    batch = imagine(LinearMembers(K), const_policy(1.0), start, H, lambda o, a, n: torch.ones_like(
        n[..., 0]), term, action_low=-1.0, action_high=1.0)
    # rollout 0: states 1,2,3 -> terminates at step index 2; rollout 1 terminates at once
    torch.testing.assert_close(batch.mask[0, 0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    torch.testing.assert_close(batch.mask[0, 1], torch.tensor([1.0, 0, 0, 0, 0, 0]))
    assert batch.dones[0, 0].tolist() == [False, False, True, False, False, False]
    torch.testing.assert_close(batch.returns(), torch.tensor([[3.0, 1.0]]))
    assert torch.all(batch.obs[0, 0, 3:, 0] == 3.0)


def test_disagreement_measures_member_spread():
    batch = imagine(LinearMembers(2), const_policy(1.0), torch.zeros(2, 1, 1), 1,
                    lambda o, a, n: n[..., 0], None, action_low=-1.0, action_high=1.0,
                    compute_disagreement=True)
    # members predict 1 and 2 for the same input: std (unbiased) = 1/sqrt(2)
    torch.testing.assert_close(batch.disagreement, torch.full((2, 1, 1), 0.5 ** 0.5))


def test_state_bounds_clip_changes_and_states_to_the_widened_data_range():
    obs = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    nxt = torch.tensor([[0.5, 0.0], [1.0, 3.0]])  # deltas: dim0 in [0, 0.5], dim1 in [0, 1]
    b = StateBounds.from_transitions(obs, nxt, margin=1.0)
    torch.testing.assert_close(b.delta_low, torch.tensor([-0.5, -1.0]))
    torch.testing.assert_close(b.delta_high, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(b.obs_low, torch.tensor([-1.0, -3.0]))
    torch.testing.assert_close(b.obs_high, torch.tensor([2.0, 6.0]))
    # member 1 of LinearMembers moves by 2 per step with action 1: the change is cut to 1.0
    # per step in dim 0 (dim 1 allows 2.0), and the state stops at the box edge (2.0, 6.0)
    start = torch.zeros(2, 1, 2)
    batch = imagine(LinearMembers(2), const_policy(1.0), start, 4, lambda o, a, n: n[..., 0],
                    None, action_low=-1.0, action_high=1.0, bounds=b)
    torch.testing.assert_close(batch.next_obs[1, 0, :, 0], torch.tensor([1.0, 2.0, 2.0, 2.0]))
    torch.testing.assert_close(batch.next_obs[1, 0, :, 1], torch.tensor([2.0, 4.0, 6.0, 6.0]))
    # member 0 moves by 1 per step (within the change bound) and also stops at the box edge
    torch.testing.assert_close(batch.next_obs[0, 0, :, 0], torch.tensor([1.0, 2.0, 2.0, 2.0]))
    free = imagine(LinearMembers(2), const_policy(1.0), start, 4, lambda o, a, n: n[..., 0],
                   None, action_low=-1.0, action_high=1.0)
    assert free.next_obs[1, 0, -1, 0] == 8.0  # without bounds the state runs away
    with pytest.raises(ValueError, match="margin >= 0"):
        StateBounds.from_transitions(obs, nxt, margin=-1.0)


class NoisyLinearPolicy:
    """Duck-typed task-batched Gaussian policy: a = w_t * obs_0 + exp(log_std_t) * eps."""

    def mean_and_log_std(self, params, obs, batched=False):
        assert batched
        mean = params["w"].view(-1, 1, 1) * obs[..., :1]
        return mean, params["log_std"].view(-1, 1, 1).expand_as(mean)


def _fitted_probabilistic_ensemble(k=2):
    torch.manual_seed(0)
    ens = DynamicsEnsemble(2, 1, k, (16,), probabilistic=True)
    obs, act = torch.randn(200, 2), torch.rand(200, 1) * 2 - 1
    ens.update_normalizers(obs, act, obs + 0.1 * act)
    return ens, obs


def _sampler(ens, real, T, tasks=None, seed=7, **kw):
    common = dict(rollouts_per_task=3, horizon=5, reward_fn=lambda o, a, n: n[..., 0] - a[
        ..., 0].square(), termination_fn=lambda n: n[..., 1] > 2.0, action_low=-1.0,
        action_high=1.0)
    return ImaginationSampler(ens, NoisyLinearPolicy(), real, num_tasks=T, seed=seed,
                              tasks=tasks, **{**common, **kw})


@pytest.mark.parametrize("deterministic_model", [True, False])
def test_imagination_sampler_equals_a_direct_imagine_call(deterministic_model):
    """Each task draws its start states and then an H x N x A block of policy noise from its
    own generator (seeded by task_seed); the model's noise has a generator of its own."""
    ens, real = _fitted_probabilistic_ensemble()
    T, N, H, seed = 4, 3, 5, 7
    params = {"w": torch.linspace(-1, 1, T), "log_std": torch.full((T,), -1.0)}
    bounds = StateBounds.from_transitions(real, real + 0.1, margin=2.0)
    sampler = _sampler(ens, real, T, deterministic_model=deterministic_model, bounds=bounds)
    gens = [torch.Generator().manual_seed(task_seed(seed, t)) for t in range(T)]
    model_gen = torch.Generator().manual_seed(task_seed(seed, T))
    for _ in range(2):  # consecutive calls continue the same random streams
        got = sampler(params)
        idx = torch.stack([torch.randint(len(real), (N,), generator=g) for g in gens])
        eps = torch.stack([torch.randn(H, N, 1, generator=g) for g in gens])
        steps = iter(eps.unbind(1))

        def policy_fn(obs, g, steps=steps):
            mean, log_std = NoisyLinearPolicy().mean_and_log_std(params, obs, batched=True)
            return gaussian_sample(mean, log_std, next(steps))

        want = imagine(ens, policy_fn, real[idx], H, sampler.reward_fn, sampler.termination_fn,
                       action_low=-1.0, action_high=1.0, deterministic_model=deterministic_model,
                       bounds=bounds, generator=model_gen)
        for name in ("obs", "actions", "rewards", "dones", "mask", "log_probs", "next_obs"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        assert got.obs.shape == (T, N, H, 2)
        # start states are real states
        assert all(any(torch.equal(s, r) for r in real) for s in got.obs[:, :, 0].reshape(-1, 2))
    assert torch.equal(sampler.model_generator.get_state(), model_gen.get_state())


def test_a_share_of_the_tasks_imagines_what_all_tasks_do_for_them():
    """One learner's tasks (any subset, e.g. every 3rd: members unevenly represented) get the
    rollouts they get among all T tasks (a deterministic model; same seed), at index i."""
    torch.manual_seed(0)
    K, T = 5, 20
    ens = DynamicsEnsemble(2, 1, K, (16,))
    real = torch.randn(50, 2)
    params = {"w": torch.linspace(-1, 1, T), "log_std": torch.linspace(-2, 0, T)}
    full = _sampler(ens, real, T)
    shares = [_sampler(ens, real, T, range(r, T, 3)) for r in range(3)]
    shares.append(_sampler(ens, real, T, range(8, 13)))  # members 2 and 3, contiguous
    for _ in range(2):
        want = full(params)
        for share in shares:
            got = share({k: v[share.tasks] for k, v in params.items()})
            assert got.obs.shape[0] == len(share.tasks)
            for name in ("obs", "actions", "rewards", "log_probs", "next_obs"):
                torch.testing.assert_close(getattr(got, name), getattr(want, name)[share.tasks],
                                           rtol=1e-6, atol=1e-6, msg=name)


def test_imagine_batches_any_task_to_member_map_by_member():
    """members= puts each task's rows through its member, with padding where the members
    have unequal numbers of tasks."""
    K = 3
    start = torch.zeros(4, 2, 1)
    members = torch.tensor([2, 0, 2, 2])
    batch = imagine(LinearMembers(K), const_policy(1.0), start, 2, lambda o, a, n: n[..., 0],
                    None, action_low=-1.0, action_high=1.0, members=members)
    # member k moves by k + 1 per step
    torch.testing.assert_close(batch.next_obs[:, 0, -1, 0], torch.tensor([6.0, 2.0, 6.0, 6.0]))
    with pytest.raises(ValueError, match="one entry per task"):
        imagine(LinearMembers(K), const_policy(1.0), start, 2, lambda o, a, n: n[..., 0], None,
                action_low=-1.0, action_high=1.0, members=members[:3])
    with pytest.raises(ValueError, match="member indices"):
        imagine(LinearMembers(K), const_policy(1.0), start, 2, lambda o, a, n: n[..., 0], None,
                action_low=-1.0, action_high=1.0, members=torch.tensor([0, 1, 3, 0]))


def test_gaussian_sample_is_the_policy_sample_with_that_noise():
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(8,))
    params = policy.expand_params(policy.init_params(torch.Generator().manual_seed(0)), 4)
    obs = torch.randn(4, 5, 3)
    act, logp = policy.sample(params, obs, torch.Generator().manual_seed(1), batched=True)
    eps = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(1))
    mine = gaussian_sample(*policy.mean_and_log_std(params, obs, batched=True), eps)
    torch.testing.assert_close(mine[0], act)
    torch.testing.assert_close(mine[1], logp)
    assert task_seed(0, 1) != task_seed(0, 2) != task_seed(1, 1)
    assert 0 <= task_seed(-3, 10**6) < 2**63


def test_imagination_sampler_rejects_bad_sizes():
    ens, real = _fitted_probabilistic_ensemble(k=2)
    kw = dict(rollouts_per_task=2, horizon=3, reward_fn=lambda o, a, n: n[..., 0],
              termination_fn=None, action_low=-1.0, action_high=1.0, seed=None)
    with pytest.raises(ValueError, match="multiple of ensemble_size"):
        ImaginationSampler(ens, NoisyLinearPolicy(), real, num_tasks=3, **kw)
    with pytest.raises(ValueError, match="M x D"):
        ImaginationSampler(ens, NoisyLinearPolicy(), real[:0], num_tasks=2, **kw)
    with pytest.raises(ValueError, match="horizon"):
        ImaginationSampler(ens, NoisyLinearPolicy(), real, num_tasks=2,
                           **{**kw, "horizon": 0})
    for tasks in ([], [0, 0], [2]):
        with pytest.raises(ValueError, match="distinct task indices"):
            ImaginationSampler(ens, NoisyLinearPolicy(), real, num_tasks=2, tasks=tasks, **kw)


def _imported_modules(path: Path) -> set[str]:
    """Every ``module.name`` a file imports (relative imports resolved), anywhere in it."""
    package = path.relative_to(PACKAGE.parent).parts[:-1]  # e.g. ("mbmpo_ray", "models")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join((*base, *([node.module] if node.module else [])))
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def test_core_modules_import_only_torch_numpy_gymnasium():
    """models/, imagination.py and buffer.py stay free of Ray (and imagination of meta, which
    imports it): only the standard library, torch, numpy, gymnasium and pure-Python
    mbmpo_ray modules, at module level or inside functions."""
    files = [*sorted((PACKAGE / "models").glob("*.py")), PACKAGE / "imagination.py",
             PACKAGE / "buffer.py"]
    allowed_own = {"mbmpo_ray.models", "mbmpo_ray.settings", "mbmpo_ray.imagination"}
    for path in files:
        for name in _imported_modules(path):
            top = name.split(".")[0]
            if top == "mbmpo_ray":
                assert any(name == m or name.startswith(m + ".") for m in allowed_own), (
                    path.name, name)
            else:
                assert top in sys.stdlib_module_names or top in {"torch", "numpy", "gymnasium"}, (
                    path.name, name)


def test_biased_dynamics_adds_each_members_bias_and_noise():
    base = LinearMembers(3)
    obs, act = torch.randn(3, 20000, 2), torch.randn(3, 20000, 1)
    exact = BiasedDynamics(base, [0.0, 0.5, 1.0], std=0.0)
    diff = exact.sample_next_obs(obs, act) - base.sample_next_obs(obs, act)
    torch.testing.assert_close(diff.mean(dim=(1, 2)), torch.tensor([0.0, 0.5, 1.0]))
    noisy = BiasedDynamics(base, [0.0, 0.5, 1.0], std=0.1)
    g = torch.Generator().manual_seed(0)
    diff = noisy.sample_next_obs(obs, act, generator=g) - base.sample_next_obs(obs, act)
    assert torch.allclose(diff.mean(dim=(1, 2)), torch.tensor([0.0, 0.5, 1.0]), atol=3e-3)
    assert torch.allclose(diff.std(dim=(1, 2)), torch.full((3,), 0.1), rtol=0.02)
    # imagine() sees the biased model: member 2's task drifts by ~1 per step
    out = imagine(noisy, const_policy(0.0), torch.zeros(3, 4, 2), 5, lambda o, a, n: n.sum(-1),
                  None, action_low=-1.0, action_high=1.0, generator=g)
    assert 4.5 < float(out.next_obs[2, :, -1].mean()) < 5.5
    with pytest.raises(ValueError, match="one entry per member"):
        BiasedDynamics(base, [0.1, 0.2])


def test_autocast_dynamics_returns_the_input_dtype_and_close_predictions():
    torch.manual_seed(0)
    ens = DynamicsEnsemble(4, 2, 2, (32, 32))
    obs, act = torch.randn(2, 64, 4), torch.randn(2, 64, 2)
    ref = ens.sample_next_obs(obs, act)
    low = AutocastDynamics(ens).sample_next_obs(obs, act)
    assert low.dtype == torch.float32 and low.shape == ref.shape
    assert not torch.equal(low, ref)  # bf16 matmuls did run
    torch.testing.assert_close(low, ref, rtol=0.05, atol=0.05)
    assert isinstance(bf16_is_fast("cpu"), bool) and bf16_is_fast("meta") is False
    # the *_precision settings: bfloat16 always, auto only where bf16 is fast, else none
    assert autocast_dtype("bfloat16", "meta") is torch.bfloat16
    assert autocast_dtype("float32", "cpu") is None and autocast_dtype("auto", "meta") is None
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if bf16_is_fast("cpu") else None)
