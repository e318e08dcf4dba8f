"""The ``progress.csv`` columns of each algorithm: which ``train()`` result key each reads, what
it means, and which of them the summary and the plot use.

MB-MPO and MBPO share the counters, the sampled and random-action returns, the model fit and the
phase timers they have in common; each adds its own (MB-MPO: the adapted policies, the imagined
returns and the KL of its meta update; MBPO: the SAC losses, alpha, the rollout length k and the
buffer sizes). No column is empty by design in either set. The README's "progress.csv" tables
say the same as :attr:`Column.meaning`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: RLlib's place for a single-agent Learner's metrics: ``learners/<DEFAULT_MODULE_ID>/``
LEARNER_RESULTS = ("learners", "default_policy")
_L = "/".join(LEARNER_RESULTS) + "/"


def finite(v: Any) -> float | None:
    """``v`` as a float, or None when missing or not finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def lookup(result: Mapping[str, Any], path: str) -> Any:
    """``result["a"]["b"]`` for ``path="a/b"``; a flat result (Tune's ``progress.csv`` row,
    keys joined with ``/``) holds the same value under ``"a/b"`` itself. None when missing."""
    if path in result:
        return result[path]
    d: Any = result
    for part in path.split("/"):
        if not isinstance(d, Mapping):
            return None
        d = d.get(part)
    return d


@dataclass(frozen=True)
class Column:
    """One ``progress.csv`` column.

    Attributes:
        name: the column's header.
        keys: ``train()`` result keys (``/`` for nesting) read in order; the first finite
            value is the cell (empty when none is).
        meaning: one line for the README and ``CSV_SCHEMA``.
        count: written as an integer.
        sign: multiplies the value (``entropy`` is minus RLlib's ``logps``).
    """

    name: str
    keys: tuple[str, ...]
    meaning: str
    count: bool = False
    sign: float = 1.0

    def value(self, result: Mapping[str, Any]) -> float | None:
        """This column's cell of ``result`` (None: not measured)."""
        for key in self.keys:
            f = finite(lookup(result, key))
            if f is not None:
                return self.sign * f
        return None


@dataclass(frozen=True)
class Curve:
    """A plotted column: its legend text and matplotlib line style."""

    column: str
    legend: str
    style: str = "-"


@dataclass(frozen=True)
class ColumnSet:
    """What one algorithm reports: its ``progress.csv`` columns and how the summary and the
    plot read them.

    Attributes:
        algo: ``"mbmpo"`` or ``"mbpo"`` (``run.json``'s ``algo``).
        title: the algorithm's name on the screen and in plot titles.
        columns: the CSV columns in order.
        return_column: the headline real-env return (its ``<name>_std`` the spread).
        policy: how the summary names the headline policy ("pre-update ", or "").
        curves: the plotted returns vs ``real_steps``; the first gets the spread band.
        model_steps: (column, summary label) of the model-generated transitions.
        phases: (label, column) of the phase timers the summary shares out.
        old_names: column names of files written by earlier versions -> today's.
    """

    algo: str
    title: str
    columns: tuple[Column, ...]
    return_column: str
    policy: str
    curves: tuple[Curve, ...]
    model_steps: tuple[str, str]
    phases: tuple[tuple[str, str], ...]
    old_names: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The CSV header."""
        return [c.name for c in self.columns]

    @property
    def count_columns(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns if c.count)

    @property
    def schema(self) -> list[tuple[str, str]]:
        """(column, meaning) pairs, as the README's table."""
        return [(c.name, c.meaning) for c in self.columns]

    def row(self, result: Mapping[str, Any], elapsed_s: float | None = None
            ) -> dict[str, float | None]:
        """One ``progress.csv`` row from a ``train()`` result (nested, or flat as in Tune's
        ``progress.csv``); ``elapsed_s`` defaults to the result's ``time_total_s``."""
        row = {c.name: c.value(result) for c in self.columns}
        if elapsed_s is not None:
            row["elapsed_s"] = finite(elapsed_s)
        return row


def _c(name: str, keys: str | tuple[str, ...], meaning: str, **kw: Any) -> Column:
    return Column(name, (keys,) if isinstance(keys, str) else keys, meaning, **kw)


# ---------------------------------------------------------------------------- shared columns
_HEAD = (
    _c("iteration", "training_iteration", "train() calls completed (1, 2, ...)", count=True),
    _c("elapsed_s", "time_total_s",
       "wall-clock seconds since the run started (continues over --resume)"),
    _c("real_steps", "num_real_steps_lifetime",
       "real env steps learned from (the buffer), evaluation episodes excluded", count=True),
)
_EVAL_STEPS = _c("eval_steps", "num_eval_steps_lifetime",
                 "real env steps of evaluation episodes (not learned from)", count=True)
_RANDOM = _c("return_random", "random_return_mean",
             "random-action return (the first iteration only): the baseline")
_MODEL = (
    _c("model_val_loss", "model/val_loss_mean",
       "ensemble validation loss (MSE of normalised deltas, mean over models)"),
    _c("model_epochs", "model/epochs_mean", "model training epochs this iteration, mean over "
                                            "models"),
)
_TIME_SAMPLE = _c("time_sample", "timers/sample_real", "seconds: real sampling")
_TIME_FIT = _c("time_fit", "timers/fit_models", "seconds: fitting the ensemble")
_TIME_EVAL = _c("time_eval", "timers/evaluate_real", "seconds: real-env evaluation episodes")
_TIME_ITER = _c("time_iter", "time_this_iter_s", "seconds: the whole iteration")
# progress.csv files of the first versions used the result keys themselves
_FIRST_NAMES = {"episode_return_mean": "return_pre_update",
                "post_adaptation_return_mean": "return_adapted",
                "random_return_mean": "return_random",
                "imagined_pre_return": "imagined_return_pre_update",
                "imagined_post_return": "imagined_return_adapted"}

# ---------------------------------------------------------------------------- MB-MPO
MBMPO_COLUMNS = ColumnSet(
    algo="mbmpo", title="MB-MPO",
    columns=(
        *_HEAD,
        _c("imagined_steps", "num_imagined_steps_lifetime",
           "imagined (model) steps used by the meta updates", count=True),
        _EVAL_STEPS,
        _c("return_pre_update", "episode_return_mean",
           "real-env return of this iteration's meta-policy theta_i, mean over "
           "eval_episodes_per_iter episodes (results: episode_return_mean)"),
        _c("return_pre_update_std", "episode_return_std",
           "its standard deviation over those episodes"),
        _c("return_adapted", "post_adaptation_return_mean",
           "real-env return of theta'_i: theta_i after one inner step on each model's "
           "imagined data, the policies that collect the next iteration's data; same number "
           "of episodes, spread over the K models (results: post_adaptation_return_mean)"),
        _c("return_adapted_std", "post_adaptation_return_std",
           "its standard deviation over those episodes"),
        _c("return_sampled", "sample_return_mean",
           "mean return of this iteration's training episodes: random actions in the first "
           "iteration, else the previous row's adapted policies (results: sample_return_mean)"),
        _RANDOM,
        *_MODEL,
        _c("imagined_return_pre_update", _L + "pre_return_mean",
           "return of theta_i in the models (last meta step)"),
        _c("imagined_return_adapted", _L + "post_return_mean",
           "return of the adapted policies in the models (last meta step)"),
        _c("kl", _L + "kl_after", "KL(theta_old || theta_new) of the last outer step"),
        _TIME_SAMPLE, _TIME_FIT,
        _c("time_meta", "timers/meta_update",
           "seconds: meta update (imagination + inner and outer steps)"),
        _TIME_EVAL, _TIME_ITER,
    ),
    return_column="return_pre_update", policy="pre-update ",
    curves=(Curve("return_pre_update", "pre-update meta-policy θ", "-"),
            Curve("return_adapted", "adapted θ' (θ after one inner step, same iteration)",
                  "--")),
    model_steps=("imagined_steps", "imagined steps"),
    phases=(("sample", "time_sample"), ("fit", "time_fit"), ("meta", "time_meta"),
            ("eval", "time_eval")),
    old_names=_FIRST_NAMES,
)

# ---------------------------------------------------------------------------- MBPO
MBPO_COLUMNS = ColumnSet(
    algo="mbpo", title="MBPO",
    columns=(
        *_HEAD,
        _c("model_steps", ("num_imagined_steps_lifetime", "num_model_steps_lifetime"),
           "model transitions generated by the branched rollouts", count=True),
        _EVAL_STEPS,
        _c("sac_updates", "num_sac_updates_lifetime", "SAC gradient steps so far", count=True),
        _c("epoch", "epoch", "MBPO epoch: (real steps - initial_random_steps) / "
                             "epoch_length; its whole part sets k"),
        _c("return_eval", "episode_return_mean",
           "real-env return of the SAC policy after this iteration (its mean action unless "
           "eval_explore), mean over eval_episodes_per_iter episodes "
           "(results: episode_return_mean)"),
        _c("return_eval_std", "episode_return_std",
           "its standard deviation over those episodes"),
        _c("eval_len", "episode_len_mean", "mean length of those episodes"),
        _c("return_sampled", ("sample_return_mean", "train_return_mean"),
           "mean return of the training episodes that ended in this iteration: random "
           "actions before the first fit, else the SAC policy exploring "
           "(results: sample_return_mean)"),
        _RANDOM,
        *_MODEL,
        _c("rollout_length", "rollout_length", "model rollout length k this iteration",
           count=True),
        _c("buffer_size", "buffer_size", "real transitions in the buffer", count=True),
        _c("model_buffer_size", "model_buffer_size", "model transitions in the model buffer",
           count=True),
        _c("qf_loss", _L + "qf_loss", "SAC critic (Q) loss, last update of the iteration"),
        _c("policy_loss", _L + "policy_loss", "SAC actor loss, last update"),
        _c("alpha", _L + "alpha_value", "SAC entropy temperature alpha"),
        _c("entropy", _L + "logps", "policy entropy estimate -E[log pi(a|s)] on the last "
                                    "update's batch (results: minus logps)", sign=-1.0),
        _c("q_mean", _L + "qf_mean", "mean Q value on the last update's batch"),
        _TIME_SAMPLE, _TIME_FIT,
        _c("time_rollouts", "timers/model_rollouts", "seconds: model rollouts"),
        _c("time_sac", "timers/sac_updates", "seconds: SAC updates"),
        _c("time_sync", ("timers/sync_weights", "timers/synch_weights"),
           "seconds: sending the policy weights to the env runners"),
        _TIME_EVAL, _TIME_ITER,
    ),
    return_column="return_eval", policy="",
    curves=(Curve("return_eval", "SAC policy (evaluation episodes)", "-"),
            Curve("return_sampled", "training episodes (random actions, then SAC exploring)",
                  "--")),
    model_steps=("model_steps", "model steps"),
    phases=(("sample", "time_sample"), ("fit", "time_fit"), ("rollouts", "time_rollouts"),
            ("sac", "time_sac"), ("sync", "time_sync"), ("eval", "time_eval")),
    # MBPO's progress.csv files before its own columns had MB-MPO's
    old_names={**_FIRST_NAMES, "episode_return_mean": "return_eval",
               "return_pre_update": "return_eval", "return_pre_update_std": "return_eval_std",
               "imagined_steps": "model_steps"},
)

COLUMN_SETS = {cs.algo: cs for cs in (MBMPO_COLUMNS, MBPO_COLUMNS)}


def column_set(algo: str | None) -> ColumnSet:
    """The columns of ``algo`` (``None``: MB-MPO, as runs from before ``--algo``).

    Raises:
        ValueError: an unknown algorithm.
    """
    try:
        return COLUMN_SETS[algo or "mbmpo"]
    except KeyError:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {sorted(COLUMN_SETS)}"
                         ) from None


def algo_of_header(header: list[str]) -> str:
    """Which algorithm wrote a ``progress.csv`` (ours or Tune's), from its columns alone:
    MBPO's own columns or result keys, else MB-MPO."""
    mbpo_only = set(MBPO_COLUMNS.names) - set(MBMPO_COLUMNS.names)
    mbpo_keys = {"num_sac_updates_lifetime", "rollout_length", "model_buffer_size",
                 "train_return_mean", "num_model_steps_lifetime"}
    return "mbpo" if (mbpo_only | mbpo_keys) & set(header) else "mbmpo"


def row_from_result(result: Mapping[str, Any], elapsed_s: float | None = None,
                    algo: str | None = None) -> dict[str, float | None]:
    """One ``progress.csv`` row of ``algo``'s columns from a ``train()`` result."""
    return column_set(algo).row(result, elapsed_s)
