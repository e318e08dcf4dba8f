import pickle

import numpy as np
import pytest

from mbmpo_ray.buffer import TransitionBuffer


def _batch(rng, n, d=3, a=2, start=0):
    obs = rng.normal(size=(n, d)).astype(np.float32)
    obs[:, 0] = np.arange(start, start + n)  # identifies the row
    return obs, rng.normal(size=(n, a)), obs + 1, rng.normal(size=n), rng.random(n) < 0.1


def test_grows_then_overwrites_oldest_first():
    rng = np.random.default_rng(0)
    buf = TransitionBuffer(3, 2, capacity=2500)
    for i in range(4):
        buf.add(*_batch(rng, 1000, start=1000 * i))
    assert len(buf) == 2500 and buf.total_added == 4000
    ids = buf.all()["obs"][:, 0]
    np.testing.assert_array_equal(ids, np.arange(1500, 4000))
    np.testing.assert_array_equal(buf.row_ids(), np.arange(1500, 4000))  # lifetime index


def test_state_round_trip_is_exact_and_picklable():
    rng = np.random.default_rng(1)
    buf = TransitionBuffer(3, 2, capacity=1500)
    for i in range(3):
        buf.add(*_batch(rng, 700, start=700 * i))
    restored = TransitionBuffer.from_state(pickle.loads(pickle.dumps(buf.get_state())))
    for k, v in buf.all().items():
        np.testing.assert_array_equal(v, restored.all()[k])
    assert restored.total_added == buf.total_added
    # both continue identically
    nxt = _batch(rng, 400, start=5000)
    buf.add(*nxt)
    restored.add(*nxt)
    for k, v in buf.all().items():
        np.testing.assert_array_equal(v, restored.all()[k])


def test_rejects_bad_input_without_storing():
    rng = np.random.default_rng(2)
    buf = TransitionBuffer(3, 2)
    buf.add(*_batch(rng, 10))
    obs, act, nxt, rew, done = _batch(rng, 5)
    nxt[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite 'next_obs'"):
        buf.add(obs, act, nxt, rew, done)
    with pytest.raises(ValueError, match="'act' has shape"):
        buf.add(obs, act[:, :1], obs, rew, done)
    assert len(buf) == 10


def test_restore_into_wrong_dims_is_refused():
    buf = TransitionBuffer(3, 2)
    with pytest.raises(ValueError, match="different environment"):
        TransitionBuffer(4, 2).set_state(buf.get_state())
