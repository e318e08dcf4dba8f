"""TransitionBuffer.add with invalid rows: dropped and counted (drop_invalid), or refused."""

import numpy as np
import pytest

from mbmpo_ray.buffer import TransitionBuffer


def _batch(n=10, d=3, a=2, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, d)).astype(np.float32)
    obs[:, 0] = np.arange(n)  # identifies the row
    return obs, rng.normal(size=(n, a)), obs + 1, rng.normal(size=n), np.zeros(n, bool)


def test_drop_invalid_keeps_the_good_rows_in_order_and_counts_the_bad():
    obs, act, nxt, rew, done = _batch()
    nxt[2, 1] = np.nan
    obs[5, 2] = np.inf
    rew[7] = np.nan
    act[8, 0] = 1e18  # exploding
    buf = TransitionBuffer(3, 2)
    assert buf.add(obs, act, nxt, rew, done, drop_invalid=True, max_abs=1e8) == 4
    assert len(buf) == 6 and buf.num_dropped == 4 and buf.total_added == 6
    np.testing.assert_array_equal(buf.all()["obs"][:, 0], [0, 1, 3, 4, 6, 9])
    assert all(np.isfinite(v).all() for v in buf.all().values())
    # counted across calls and kept by get_state/set_state
    assert buf.add(*_batch(seed=1), drop_invalid=True) == 0
    restored = TransitionBuffer.from_state(buf.get_state())
    assert restored.num_dropped == 4 and len(restored) == 16


def test_all_rows_invalid_stores_nothing():
    obs, act, nxt, rew, done = _batch(4)
    obs[:] = np.nan
    buf = TransitionBuffer(3, 2)
    assert buf.add(obs, act, nxt, rew, done, drop_invalid=True) == 4
    assert len(buf) == 0 and buf.total_added == 0


def test_without_drop_invalid_bad_rows_are_refused_whole():
    obs, act, nxt, rew, done = _batch()
    act[3, 1] = 1e18
    buf = TransitionBuffer(3, 2)
    buf.add(obs, act, nxt, rew, done)  # no max_abs: any finite value is fine
    with pytest.raises(ValueError, match=r"\|value\| > 1e\+08 'act'"):
        buf.add(obs, act, nxt, rew, done, max_abs=1e8)
    assert len(buf) == 10 and buf.num_dropped == 0


def test_old_states_without_the_count_still_load():
    buf = TransitionBuffer(3, 2)
    buf.add(*_batch())
    state = buf.get_state()
    del state["num_dropped"]
    assert TransitionBuffer.from_state(state).num_dropped == 0
