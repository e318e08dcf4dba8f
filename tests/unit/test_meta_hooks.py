"""The phase hook of ``meta_step`` (issue 28, item 6): called with each phase in order, and
the meta step's result bit-identical with and without it."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from test_meta import _toy_sample_fn

from mbmpo_ray.meta import META_STEP_PHASES, GaussianMLPPolicy, MetaConfig, meta_step, no_phase


class _Recorder:
    """A phase hook that records ``(event, name)`` pairs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @contextmanager
    def __call__(self, name: str):
        self.events.append(("enter", name))
        yield
        self.events.append(("exit", name))

    @property
    def names(self) -> list[str]:
        return [n for e, n in self.events if e == "enter"]


def _run(overrides: dict, phase=None, disagreement_fn=None):
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    params = policy.init_params(torch.Generator().manual_seed(0))
    cfg = MetaConfig(**{"num_tasks": 4, "inner_lr": 0.05, "max_kl": 0.05, **overrides})
    kwargs = {} if phase is None else {"phase": phase}
    return meta_step(policy, params, _toy_sample_fn(policy, n=4, horizon=6), cfg,
                     disagreement_fn=disagreement_fn, **kwargs)


def _assert_identical(a, b) -> None:
    (pa, da), (pb, db) = a, b
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert set(da) == set(db)
    for k in da:
        if not k.startswith("time_"):
            np.testing.assert_array_equal(np.asarray(da[k]), np.asarray(db[k]), err_msg=k)


def test_phases_in_order_and_not_nested() -> None:
    rec = _Recorder()
    _run({}, rec)
    assert rec.names == list(META_STEP_PHASES)
    # each phase is exited before the next one is entered
    assert rec.events == [(e, n) for n in META_STEP_PHASES for e in ("enter", "exit")]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"outer_optimizer": "ppo"},
         [*META_STEP_PHASES[:8], "outer_ppo"]),
        ({"num_inner_steps": 2, "first_order": True},
         [*META_STEP_PHASES[:4], "sample_pre", "advantages_pre", "adapt",
          *META_STEP_PHASES[4:]]),
    ],
)
def test_phases_of_other_configs(overrides: dict, expected: list[str]) -> None:
    rec = _Recorder()
    _run(overrides, rec)
    assert rec.names == expected


def test_plasticity_phase_after_the_pre_update_diagnostics() -> None:
    rec = _Recorder()
    _run({}, rec, disagreement_fn=lambda obs, act: obs.abs().mean(-1))
    names = list(META_STEP_PHASES)
    names.insert(names.index("diagnostics_pre") + 1, "plasticity")
    assert rec.names == names


@pytest.mark.parametrize("overrides", [{}, {"outer_optimizer": "ppo"}, {"hvp_method": "exact"}])
def test_result_is_bit_identical_with_and_without_the_hook(overrides: dict) -> None:
    rec = _Recorder()
    _assert_identical(_run(overrides), _run(overrides, rec))
    _assert_identical(_run(overrides), _run(overrides, no_phase))
    assert rec.names
