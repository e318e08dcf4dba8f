import pytest
import torch

from mbmpo_ray.imagination import StateBounds, imagine, task_members


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
    with pytest.raises(ValueError, match="multiple of ensemble_size"):
        task_members(7, 5)


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
