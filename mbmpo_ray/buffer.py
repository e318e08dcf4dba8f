"""Buffer of real transitions (NumPy), part of every checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np

_FIELDS = ("obs", "act", "next_obs", "reward", "done")


def invalid_rows(rows: dict[str, np.ndarray], max_abs: float | None = None) -> np.ndarray:
    """``[B]`` mask of the transitions to drop: any non-finite value in ``obs``, ``act``,
    ``next_obs`` or ``reward`` or, with ``max_abs``, any value larger than ``max_abs`` in
    magnitude (an exploding env). The one definition of an invalid real transition."""
    invalid = np.zeros(len(rows["reward"]), bool)
    for name in ("obs", "act", "next_obs", "reward"):
        invalid |= _invalid_values(rows[name], max_abs)
    return invalid


def _invalid_values(values, max_abs: float | None) -> np.ndarray:
    """``[B]`` mask of rows of ``values`` (``B`` or ``B x D``) with a non-finite value or one
    above ``max_abs`` in magnitude."""
    values = np.asarray(values)
    values = values.reshape(len(values), -1)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values).all(-1)
        if max_abs is not None:
            bad |= (np.abs(values) > max_abs).any(-1)
    return bad


class TransitionBuffer:
    """FIFO ring buffer of real ``(obs, act, next_obs, reward, done)`` transitions.

    Storage grows geometrically up to ``capacity`` (default 1e6; the paper used 1e5), after
    which the oldest transitions are overwritten. ``get_state`` / ``set_state``
    round-trip it exactly.

    Args:
        obs_dim: D, observation size.
        act_dim: A, action size.
        capacity: maximum number of transitions kept.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = int(obs_dim), int(act_dim), int(capacity)
        self._data = self._alloc(min(self.capacity, 1024))
        self._size = 0  # number of valid rows
        self._next = 0  # next write position
        self.total_added = 0  # lifetime count (not capped)
        self.num_dropped = 0  # lifetime count of invalid rows dropped by add()

    def _alloc(self, n: int) -> dict[str, np.ndarray]:
        return {
            "obs": np.zeros((n, self.obs_dim), np.float32),
            "act": np.zeros((n, self.act_dim), np.float32),
            "next_obs": np.zeros((n, self.obs_dim), np.float32),
            "reward": np.zeros((n,), np.float32),
            "done": np.zeros((n,), bool),
        }

    def __len__(self) -> int:
        return self._size

    def add(self, obs, act, next_obs, reward, done, *, drop_invalid: bool = False,
            max_abs: float | None = None) -> int:
        """Append a batch of transitions (``B x D``, ``B x A``, ``B x D``, ``B``, ``B``).

        A row is invalid if any of its values is non-finite (NaN/inf) or, with ``max_abs``,
        larger than ``max_abs`` in magnitude (an exploding env).

        Args:
            drop_invalid: store the valid rows and drop the invalid ones (counted in
                ``num_dropped``); False: raise ValueError if any row is invalid.
            max_abs: largest magnitude a value may have (None: any finite value).

        Returns:
            The number of rows dropped (0 unless ``drop_invalid``).

        Raises:
            ValueError: on wrong shapes, or invalid rows without ``drop_invalid``, before
                anything is stored.
        """
        batch = {
            "obs": np.atleast_2d(np.asarray(obs, np.float32)),
            "act": np.atleast_2d(np.asarray(act, np.float32)),
            "next_obs": np.atleast_2d(np.asarray(next_obs, np.float32)),
            "reward": np.asarray(reward, np.float32).reshape(-1),
            "done": np.asarray(done, bool).reshape(-1),
        }
        n = len(batch["reward"])
        widths = {"obs": self.obs_dim, "act": self.act_dim, "next_obs": self.obs_dim}
        for name, width in widths.items():
            if batch[name].shape != (n, width):
                raise ValueError(
                    f"TransitionBuffer.add: '{name}' has shape {batch[name].shape}, expected "
                    f"({n}, {width}) to match {n} rewards"
                )
        if len(batch["done"]) != n:
            raise ValueError(f"TransitionBuffer.add: {len(batch['done'])} dones for {n} rewards")
        invalid = invalid_rows(batch, max_abs)
        if invalid.any() and not drop_invalid:
            name = next(k for k in ("obs", "act", "next_obs", "reward")
                        if _invalid_values(batch[k], max_abs).any())
            finite = np.isfinite(batch[name]).all()
            what = "non-finite" if not finite else f"|value| > {max_abs:g}"
            raise ValueError(
                f"TransitionBuffer.add: {int(invalid.sum())} of {n} rows have {what} '{name}' "
                "(NaN/inf or exploding); check the environment or the action clipping. "
                "Nothing was stored."
            )
        dropped = int(invalid.sum())
        if dropped:
            batch = {k: v[~invalid] for k, v in batch.items()}
            n -= dropped
            self.num_dropped += dropped
        if n == 0:
            return dropped
        if n > self.capacity:  # only the newest `capacity` rows can survive
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            self.total_added += n - self.capacity
            n = self.capacity
        self._grow(min(self.capacity, self._size + n))
        rows = (self._next + np.arange(n)) % len(self._data["reward"])
        for k, v in batch.items():
            self._data[k][rows] = v
        self._next = (self._next + n) % len(self._data["reward"])
        self._size = min(self._size + n, self.capacity)
        self.total_added += n
        return dropped

    def _grow(self, needed: int) -> None:
        cur = len(self._data["reward"])
        if needed <= cur:
            return
        new = min(self.capacity, max(needed, 2 * cur))
        data = self._alloc(new)
        order = self._order()
        for k in _FIELDS:
            data[k][: self._size] = self._data[k][order]
        self._data, self._next = data, self._size % new

    def _order(self) -> np.ndarray:
        """Row indices of the valid transitions, oldest first."""
        cap = len(self._data["reward"])
        if self._size < cap:
            return np.arange(self._size)
        return (self._next + np.arange(cap)) % cap

    def all(self) -> dict[str, np.ndarray]:
        """Every stored transition, oldest first (copies)."""
        order = self._order()
        return {k: self._data[k][order] for k in _FIELDS}

    def row_ids(self) -> np.ndarray:
        """Lifetime insertion index of every row, in :meth:`all` order (stable across adds,
        so it can key a fixed train/holdout split)."""
        return np.arange(self.total_added - self._size, self.total_added, dtype=np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly with replacement."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty TransitionBuffer")
        idx = self._order()[rng.integers(0, self._size, size=n)]
        return {k: self._data[k][idx] for k in _FIELDS}

    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild this buffer exactly (NumPy arrays, picklable)."""
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "capacity": self.capacity,
            "total_added": self.total_added,
            "num_dropped": self.num_dropped,
            **self.all(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`get_state` (replaces the content)."""
        if (state["obs_dim"], state["act_dim"]) != (self.obs_dim, self.act_dim):
            raise ValueError(
                f"buffer state has obs/act dims {(state['obs_dim'], state['act_dim'])}, this "
                f"buffer "
                f"{(self.obs_dim, self.act_dim)}: the checkpoint is from a different environment"
            )
        self.capacity = int(state["capacity"])
        n = len(state["reward"])
        self._data = self._alloc(max(1, min(self.capacity, max(n, 1024))))
        for k in _FIELDS:
            self._data[k][:n] = state[k]
        self._size, self._next = n, n % len(self._data["reward"])
        self.total_added = int(state["total_added"])
        self.num_dropped = int(state.get("num_dropped", 0))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TransitionBuffer:
        """A new buffer restored from :meth:`get_state`."""
        buf = cls(state["obs_dim"], state["act_dim"], state["capacity"])
        buf.set_state(state)
        return buf


class ModelBuffer(TransitionBuffer):
    """MBPO's buffer of model transitions: a FIFO :class:`TransitionBuffer` whose capacity
    follows the rollout length, so it holds the rollouts of the last ``retain_epochs`` epochs
    (:meth:`capacity_for`); :meth:`set_capacity` drops the oldest rows when it shrinks.

    Rows with non-finite values are rejected by ``add`` like real ones (the rollout function
    already drops them).
    """

    @staticmethod
    def capacity_for(rollout_length: int, rollouts_per_refit: int, refits_per_epoch: float,
                     retain_epochs: int) -> int:
        """Rows of ``retain_epochs`` epochs of rollouts at length k: ``retain_epochs *
        refits_per_epoch * rollouts_per_refit * k`` (at least 1)."""
        return max(1, int(retain_epochs * refits_per_epoch * rollouts_per_refit
                          * rollout_length))

    def set_capacity(self, capacity: int) -> None:
        """Change the capacity, keeping the newest ``min(len, capacity)`` rows in order."""
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if capacity == self.capacity:
            return
        state = self.get_state()
        keep = min(len(self), capacity)
        for k in _FIELDS:
            state[k] = state[k][len(self) - keep:]
        state["capacity"] = capacity
        self.set_state(state)
