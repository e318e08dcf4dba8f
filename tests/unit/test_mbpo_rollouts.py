"""MBPO's pure parts (no Ray): branched rollouts, the rollout-length schedule, the model buffer."""

import pickle

import numpy as np
import pytest
import torch

from mbmpo_ray.buffer import ModelBuffer
from mbmpo_ray.envs import get_env_spec
from mbmpo_ray.imagination import branched_rollouts, rollout_length
from mbmpo_ray.models import DynamicsEnsemble


class ShiftDynamics:
    """next_obs = obs + act (in every dim); optionally non-finite where obs[:, 0] > nan_above."""

    def __init__(self, nan_above=None):
        self.nan_above = nan_above
        self.calls = []

    def sample_elite_next_obs(self, obs, act, generator=None, *, deterministic=False):
        self.calls.append(obs.shape[0])
        nxt = obs + act.sum(-1, keepdim=True)
        if self.nan_above is not None:
            nxt[obs[:, 0] > self.nan_above] = float("nan")
        return nxt


def reward(obs, act, nxt):
    return nxt[..., 0] - obs[..., 0]


def terminate_above(limit):
    return lambda nxt: nxt[..., 0] > limit


def test_rollouts_step_every_live_row_and_stop_terminated_ones():
    start = torch.arange(6, dtype=torch.float32).reshape(6, 1) * torch.ones(6, 2)  # 0..5
    dyn = ShiftDynamics()
    out = branched_rollouts(dyn, lambda o, g: torch.full((o.shape[0], 1), 2.0), start, 4,
                            reward, terminate_above(6.5), action_low=-1.0, action_high=1.0)
    # actions are clipped to the box: every step adds 1; a rollout ends once x > 6.5
    assert torch.all(out.actions == 1.0)
    torch.testing.assert_close(out.next_obs - out.obs, torch.ones_like(out.obs))
    torch.testing.assert_close(out.rewards, torch.ones(len(out)))
    # start 0: 1,2,3,4 (4 steps); 3: 4,5,6,7 (terminal at step 4); 4: 5,6,7 (terminal at 3);
    # 5: 6,7 (terminal at step 2)
    assert out.rows_per_step.tolist() == [6, 6, 5, 4] and len(out) == 21
    assert dyn.calls == [6, 6, 5, 4]  # terminated rows are not stepped again
    assert torch.equal(out.dones, out.next_obs[:, 0] > 6.5)
    assert int(out.dones.sum()) == 3
    np_rows = out.as_numpy()
    assert set(np_rows) == {"obs", "act", "next_obs", "reward", "done"}
    assert np_rows["done"].dtype == bool and np_rows["obs"].shape == (21, 2)


def test_non_finite_predictions_are_dropped_and_end_their_rollout():
    start = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    out = branched_rollouts(ShiftDynamics(nan_above=5.0), lambda o, g: torch.ones(len(o), 1),
                            start, 3, reward, None, action_low=-1.0, action_high=1.0)
    assert out.dropped == 1 and len(out) == 3  # row 1 dies at step 1, row 0 runs 3 steps
    assert torch.isfinite(out.next_obs).all()


def test_chunks_give_the_same_rows():
    start = torch.randn(50, 2)
    kwargs = dict(action_low=-1.0, action_high=1.0)
    policy = lambda o, g: torch.tanh(o[:, :1])  # noqa: E731
    whole = branched_rollouts(ShiftDynamics(), policy, start, 3, reward, terminate_above(1.0),
                              **kwargs)
    parts = branched_rollouts(ShiftDynamics(), policy, start, 3, reward, terminate_above(1.0),
                              max_rows_per_call=7, **kwargs)
    assert len(whole) == len(parts)
    assert torch.equal(whole.rows_per_step, parts.rows_per_step)
    key = lambda r: sorted(map(tuple, torch.cat((r.obs, r.next_obs), 1).tolist()))  # noqa: E731
    assert key(whole) == key(parts)


def test_ensemble_rollouts_use_random_elites_are_seeded_and_match_the_env_functions():
    spec = get_env_spec("Pendulum-v1")
    ens = DynamicsEnsemble(3, 1, ensemble_size=4, hidden_sizes=(16,), probabilistic=True,
                           num_elites=2)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 3)).astype(np.float32)
    act = rng.uniform(-2, 2, size=(200, 1)).astype(np.float32)
    ens.update_normalizers(obs, act, obs + 0.1 * rng.normal(size=obs.shape).astype(np.float32))
    ens.select_elites([0.4, 0.1, 0.3, 0.2])  # elites 1 and 3
    start = torch.from_numpy(obs[:64])
    policy = lambda o, g: 4 * torch.rand(o.shape[0], 1, generator=g) - 2  # noqa: E731
    run = lambda seed: branched_rollouts(  # noqa: E731
        ens, policy, start, 2, spec.reward_fn, spec.termination_fn, action_low=-2.0,
        action_high=2.0, generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.next_obs, b.next_obs) and not torch.equal(a.next_obs, c.next_obs)
    assert len(a) == 128 and a.rows_per_step.tolist() == [64, 64]  # Pendulum never terminates
    torch.testing.assert_close(a.rewards, spec.reward_fn(a.obs, a.actions, a.next_obs))
    # non-elite members predict absurd changes: no rollout row comes from them
    with torch.no_grad():
        ens.net[-1].bias[[0, 2]] += 1e3
    z = ens.delta_normalizer.normalize(run(0).next_obs - run(0).obs)
    assert z.abs().max() < 100
    with torch.no_grad():
        ens.net[-1].bias[[0, 2]] -= 1e3
        ens.net[-1].bias[[1, 3]] += 1e3
    assert ens.delta_normalizer.normalize(run(0).next_obs - run(0).obs).abs().min() > 100


@pytest.mark.parametrize("epoch, k", [(0, 1), (20, 1), (21, 1), (60, 8), (100, 15), (150, 15)])
def test_rollout_length_schedule(epoch, k):
    assert rollout_length(epoch, (20, 100, 1, 15)) == k


def test_rollout_length_schedule_edge_cases():
    assert rollout_length(5, (1, 15, 1, 1)) == 1
    assert rollout_length(0, (0, 0, 5, 5)) == 5 and rollout_length(3, (0, 0, 5, 5)) == 5
    assert rollout_length(50, (20, 100, 25, 1)) == 16  # decreasing schedules work too
    with pytest.raises(ValueError, match="epoch_a <= epoch_b"):
        rollout_length(0, (100, 20, 1, 1))


def rows(n, start=0):
    obs = np.zeros((n, 2), np.float32)
    obs[:, 0] = np.arange(start, start + n)
    return dict(obs=obs, act=np.zeros((n, 1), np.float32), next_obs=obs + 1,
                reward=np.ones(n, np.float32), done=np.zeros(n, bool))


def test_model_buffer_keeps_retain_epochs_of_rollouts_fifo():
    # the reference: 400 rollouts x 250 steps per refit, 4 refits per 1000-step epoch, k = 1
    assert ModelBuffer.capacity_for(1, 100_000, 4, 1) == 400_000
    assert ModelBuffer.capacity_for(15, 100_000, 4, 1) == 6_000_000
    buf = ModelBuffer(2, 1, capacity=ModelBuffer.capacity_for(1, 10, 2, 1))  # 20 rows
    for i in range(3):
        buf.add(**rows(10, 10 * i))
    assert len(buf) == 20 and buf.total_added == 30
    np.testing.assert_array_equal(buf.all()["obs"][:, 0], np.arange(10, 30))


def test_model_buffer_resizes_keeping_the_newest_rows():
    buf = ModelBuffer(2, 1, capacity=20)
    buf.add(**rows(20))
    buf.set_capacity(8)  # k shrank (or fewer epochs kept)
    np.testing.assert_array_equal(buf.all()["obs"][:, 0], np.arange(12, 20))
    buf.set_capacity(30)  # k grew: room for more, nothing lost
    buf.add(**rows(15, 100))
    assert len(buf) == 23 and buf.capacity == 30
    np.testing.assert_array_equal(buf.all()["obs"][:8, 0], np.arange(12, 20))
    restored = ModelBuffer.from_state(pickle.loads(pickle.dumps(buf.get_state())))
    assert isinstance(restored, ModelBuffer) and restored.capacity == 30
    for k, v in buf.all().items():
        np.testing.assert_array_equal(v, restored.all()[k])
    with pytest.raises(ValueError, match=">= 1"):
        buf.set_capacity(0)
