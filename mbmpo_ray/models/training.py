"""Fitting a :class:`DynamicsEnsemble` on transitions: bootstrapped, batched over members,
with per-member early stopping, warm starts and a divergence guard.

Shapes: ``N`` transitions, ``K`` members, ``D`` state dim, ``A`` action dim, ``I = D + A``.

:func:`fit_ensemble` runs these steps (each a function below):

1. :func:`_split_holdout` -- a held-out split shared by all members (``model_holdout_ratio``,
   capped at ``model_max_holdout``; if empty, validation uses up to ``model_max_holdout``
   training rows), random per call or, with ``row_ids``, a fixed function of each row's id;
2. :func:`_make_optimizer` -- Adam, warm-started from a previous call's state;
3. :func:`_normalised_data` -- the normalisers are refitted on the training rows and every row
   is normalised once;
4. per epoch, :func:`_epoch_order` -- each member gets its own bootstrap resample (or
   permutation) of the training rows, reshuffled per epoch -- and :func:`_train_epoch` -- each
   step gathers a ``K x batch x I`` tensor and takes one Adam step for the whole ensemble
   (:func:`train_step`); then :meth:`_EarlyStopping.update` with every member's validation
   MSE: a member keeps a copy of its best weights and stops after ``model_patience`` epochs
   without relative improvement ``model_improvement_threshold``. Once some members have
   stopped, an epoch trains and validates only the others (:func:`_train_active`). With a
   step budget (``model_fit_steps > 0``) an "epoch" is a round of at most
   ``model_check_steps`` steps on rows drawn by :func:`_sampled_order` (a share
   ``model_new_data_fraction`` from the rows new since the last fit), and the rounds stop when
   the budget is spent, so a fit costs at most ``model_fit_steps`` steps however much data
   there is;
5. :func:`_finish` -- every member is set to its best weights and the elites are selected from
   the best validation losses (:meth:`DynamicsEnsemble.select_elites`) -- or, if a loss became
   non-finite, :func:`_roll_back` to the pre-fit state.

The torch generator is consumed in this order: ``randperm`` (random split only), ``randint``
(bootstrap only), then one ``rand`` per epoch (with a step budget: one ``randint``, and a
``rand`` and a ``randint`` if there are new rows, per round).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import torch

from mbmpo_ray import settings
from mbmpo_ray.imagination import autocast_dtype, bf16_is_fast
from mbmpo_ray.models.ensemble import DynamicsEnsemble
from mbmpo_ray.settings import Rule, setting

__all__ = ["FitConfig", "FitResult", "fit_ensemble", "fit_precision", "train_step"]

LogFn = Callable[[int, np.ndarray, np.ndarray], None]


@dataclass
class FitConfig:
    """Hyper-parameters of :func:`fit_ensemble` (defaults follow the MB-MPO paper / MBPO).

    Field names match the algorithm config's settings, so it can be built by name
    (:func:`mbmpo_ray.settings.build`). Construction does not check values: call
    :meth:`problems` or :meth:`validate` (:func:`fit_ensemble` calls ``validate``).
    """

    model_batch_size: int = setting(
        500, "rows per member per gradient step (the paper's model batch size)", Rule(int, low=1))
    model_lr: float = setting(
        1e-3, "Adam learning rate", Rule(float, low=0, open_low=True))
    model_weight_decay: float = setting(
        0.0, "Adam L2 weight decay, applied to all parameters", Rule(float, low=0))
    model_max_epochs: int = setting(
        50, "upper bound on passes over each member's training rows", Rule(int, low=0))
    model_holdout_ratio: float = setting(
        0.2, "fraction of rows held out (shared by all members) for validation and early "
        "stopping", Rule(float, low=0, high=1, open_high=True))
    model_max_holdout: int = setting(
        5000, "cap on the number of held-out rows", Rule(int, low=0))
    model_holdout_split: str = setting(
        "fixed", "how rows are held out across fits: 'fixed' (with row ids, a row is held out "
        "in every fit or in none, so a warm-started fit validates on rows it never trained "
        "on) or 'per_fit' (a fresh random split every fit, as mbrl-lib and the MBPO "
        "reference: rows trained on in an earlier fit enter the holdout, whose loss then "
        "stops improving sooner, so fits run fewer epochs)",
        Rule(str, choices=("fixed", "per_fit")))
    model_patience: int = setting(
        5, "epochs without significant validation improvement after which a member stops "
        "training", Rule(int, low=1))
    model_improvement_threshold: float = setting(
        0.01, "relative validation improvement that resets a member's patience counter",
        Rule(float, low=0, high=1, open_high=True))
    model_val_space: str = setting(
        "normalized", "space of the validation MSE that early stopping and the elite choice "
        "use: 'normalized' deltas (every state dimension counts alike) or 'raw' deltas in the "
        "env's units (as mbrl-lib and the MBPO reference; large dimensions such as velocities "
        "dominate)", Rule(str, choices=("normalized", "raw")))
    model_precision: str = setting(
        "float32", "dtype of the fit's training matmuls: 'bfloat16' autocasts each step's "
        "forward pass (weights, Adam state and the validation that early stopping and the "
        "elite choice read stay float32), worth it only where bf16 matmuls are fast (AMX or "
        "AVX512-BF16 CPUs, GPUs) and the members large enough; 'auto': float32 where bf16 "
        "is not fast, elsewhere the faster of the two for these members and batch, timed "
        "once per process (see fit_precision)",
        Rule(str, choices=("float32", "bfloat16", "auto")))
    model_bootstrap: bool = setting(
        True, "each member trains on its own bootstrap resample (else its own permutation) of "
        "the training rows", Rule(bool))
    update_normalizers: bool = setting(
        True, "refit the input/delta normalisers on the training rows before fitting",
        Rule(bool))
    eval_batch_size: int = setting(
        4096, "rows per chunk when computing validation losses (memory bound only)",
        Rule(int, low=1))
    model_fit_steps: int = setting(
        0, "budget of gradient steps per fit (0: no budget, epochs over all training rows as "
        "in the paper); with a budget, rows are sampled (see model_new_data_fraction), the "
        "fit's cost stays flat as the data grows, and model_max_epochs still caps it at that "
        "many passes' worth of steps", Rule(int, low=0))
    model_check_steps: int = setting(
        50, "with model_fit_steps: gradient steps between validations (early-stopping checks, "
        "at most one epoch's worth); model_patience counts these checks", Rule(int, low=1))
    model_new_data_fraction: float = setting(
        0.0, "with model_fit_steps: expected fraction of each batch drawn from the rows added "
        "since the previous fit (the rest uniformly from all training rows)",
        Rule(float, low=0, high=1))

    def problems(self) -> list[str]:
        """Every invalid setting, one line each (empty: all fine)."""
        # Every rule constrains its own field only; no combination of valid values is invalid.
        return settings.problems(self)

    def validate(self) -> FitConfig:
        """``self`` if every setting is valid, else one ``ValueError`` listing all problems."""
        settings.raise_if(self.problems(), "FitConfig")
        return self

    def holdout_size(self, n: int) -> int:
        """Rows held out of ``n`` by the random split (:func:`fit_ensemble` without
        ``row_ids``): ``min(int(n * model_holdout_ratio), model_max_holdout, n - 1)``."""
        return min(int(n * self.model_holdout_ratio), self.model_max_holdout, n - 1)


@dataclass
class FitResult:
    """Outcome of :func:`fit_ensemble`. Losses are in normalised delta space."""

    train_loss: np.ndarray
    """``[K]`` training objective (L2 or NLL) of each member's last trained epoch."""
    val_loss: np.ndarray
    """``[K]`` validation MSE of the weights each member ends with (its best epoch)."""
    epochs: np.ndarray
    """``[K]`` epochs (with a step budget: rounds of ``model_check_steps``) each member
    actually trained before it stopped."""
    best_epoch: np.ndarray
    """``[K]`` epoch whose weights each member ends with; 0 means its pre-fit weights."""
    elites: np.ndarray
    """Sorted indices of the elite members chosen from ``val_loss``."""
    history: np.ndarray
    """``[E + 1]`` mean validation MSE over members per epoch; index 0 is before training."""
    holdout_indices: np.ndarray
    """Rows of the input arrays used for validation (empty: validated on training rows)."""
    diverged: bool = False
    """True if a loss became non-finite; the ensemble was then restored to its pre-fit state."""
    message: str = ""
    """Human-readable note (e.g. why the fit was flagged)."""


def _to_checked_tensors(
    arrays: dict[str, torch.Tensor | np.ndarray],
    dims: dict[str, int],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Convert ``name -> N x dim`` arrays to tensors; raise ``ValueError`` on bad shapes or on
    non-finite rows (after conversion to the model dtype, so float32 overflow is caught)."""
    out: dict[str, torch.Tensor] = {}
    for name, arr in arrays.items():
        t = torch.as_tensor(arr).detach().to(device=device, dtype=dtype)
        if t.ndim != 2 or t.shape[1] != dims[name]:
            raise ValueError(f"{name} must have shape N x {dims[name]}, got {tuple(t.shape)}")
        out[name] = t
    sizes = {name: t.shape[0] for name, t in out.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"obs, act and next_obs must have the same number of rows, got {sizes}")
    n = next(iter(sizes.values()))
    if n < 2:
        raise ValueError(f"need at least 2 transitions to fit, got {n}")
    bad = {name: int((~torch.isfinite(t)).any(dim=1).sum()) for name, t in out.items()}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        detail = ", ".join(f"{name}: {count} of {n} rows" for name, count in bad.items())
        raise ValueError(
            f"fit_ensemble: non-finite values (NaN/inf, or beyond {dtype} range) in {detail}; "
            "drop or fix these transitions before fitting (model weights left unchanged)"
        )
    return out


@torch.no_grad()
def _member_mse(
    ensemble: DynamicsEnsemble, x_n: torch.Tensor, y_n: torch.Tensor, chunk: int,
    space: str = "normalized",
) -> torch.Tensor:
    """``[K]`` MSE of every member on the same rows ``x_n`` (``N x I``) -> ``y_n`` (``N x D``),
    on the normalised deltas, or (``space="raw"``) on the deltas in the env's units (each
    dimension's squared error times the delta normaliser's variance)."""
    k = ensemble.ensemble_size
    weight = ensemble.delta_normalizer.std.square().to(y_n) if space == "raw" else None
    sse = x_n.new_zeros(k)
    for start in range(0, x_n.shape[0], chunk):
        xb = x_n[start : start + chunk]
        mean, _ = ensemble.forward_normalized(xb.unsqueeze(0).expand(k, -1, -1))
        sq = (mean - y_n[start : start + chunk]).square()
        sse += (sq if weight is None else sq * weight).sum(dim=(1, 2))
    return sse / (x_n.shape[0] * y_n.shape[1])


@torch.no_grad()
def _copy_members(
    dst: list[torch.Tensor], src: list[torch.Tensor], member_mask: torch.Tensor
) -> None:
    """For members with ``member_mask[k]`` (``[K]`` bool), copy ``src[..][k]`` into ``dst[..][k]``
    (tensors ``K x ...``) without a loop over members."""
    for d, s in zip(dst, src, strict=True):
        m = member_mask.view(-1, *([1] * (d.ndim - 1)))
        d.copy_(torch.where(m, s, d))


def _stable_split(
    row_ids: np.ndarray, n: int, ratio: float, max_holdout: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(val_idx, train_idx)``: row ``i`` is held out iff a hash of ``row_ids[i]`` falls below
    ``ratio`` (the same ids always give the same answer); at most ``max_holdout`` held-out rows
    (those with the largest ids) and at least one training row."""
    ids = np.asarray(row_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"row_ids must be {n} integers (one per row), got {ids.dtype} {ids.shape}")
    # Fibonacci hashing: the top 24 bits of id * 2^64/phi are spread uniformly over [0, 1)
    h = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    held = (h.astype(np.float64) / float(1 << 24)) < ratio
    val = np.flatnonzero(held)
    if len(val) > max_holdout:
        val = val[np.argsort(ids[val], kind="stable")[len(val) - max_holdout:]]
    if len(val) >= n:
        val = val[1:]
    train_mask = np.ones(n, bool)
    train_mask[val] = False
    return torch.from_numpy(np.sort(val)), torch.from_numpy(np.flatnonzero(train_mask))


# ----------------------------------------------------------------------------- fitting steps
def _split_holdout(
    n: int, cfg: FitConfig, generator: torch.Generator | None, row_ids: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(val_idx, train_idx)`` (CPU LongTensors) of the held-out split shared by all members:
    random (one ``randperm`` from ``generator``, :meth:`FitConfig.holdout_size` rows) or, with
    ``row_ids``, a fixed function of each row's id (:func:`_stable_split`, no RNG)."""
    if row_ids is None:
        perm = torch.randperm(n, generator=generator)
        n_val = cfg.holdout_size(n)
        return perm[:n_val], perm[n_val:]
    return _stable_split(row_ids, n, cfg.model_holdout_ratio, cfg.model_max_holdout)


def _make_optimizer(
    ensemble: DynamicsEnsemble, cfg: FitConfig, optimizer_state: dict[str, Any] | None
) -> tuple[torch.optim.Adam, dict[str, Any]]:
    """Adam over all parameters, warm-started from ``optimizer_state`` (the config's lr and
    weight decay win over the saved ones), and a deep copy of its state before any step."""
    optimizer = torch.optim.Adam(
        ensemble.parameters(), lr=cfg.model_lr, weight_decay=cfg.model_weight_decay, fused=True
    )
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:
            group["lr"] = cfg.model_lr
            group["weight_decay"] = cfg.model_weight_decay
    return optimizer, copy.deepcopy(optimizer.state_dict())


@dataclass
class _FitData:
    """Normalised tensors batches are gathered from: inputs ``x`` (``rows x I``) and target
    deltas ``y`` (``rows x D``) of the training and validation rows."""

    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def _normalised_data(
    ensemble: DynamicsEnsemble,
    obs_t: torch.Tensor,
    act_t: torch.Tensor,
    next_t: torch.Tensor,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    cfg: FitConfig,
) -> _FitData:
    """Refit the normalisers on the training rows (if ``update_normalizers``) and normalise
    every row once. Without held-out rows, validation uses up to ``model_max_holdout``
    training rows."""
    tr_dev, val_dev = train_idx.to(obs_t.device), val_idx.to(obs_t.device)
    if cfg.update_normalizers:
        ensemble.update_normalizers(obs_t[tr_dev], act_t[tr_dev], next_t[tr_dev])
    with torch.no_grad():
        x_n = ensemble.input_normalizer.normalize(torch.cat((obs_t, act_t), dim=-1))
        y_n = ensemble.delta_normalizer.normalize(next_t - obs_t)
    x_tr, y_tr = x_n[tr_dev], y_n[tr_dev]
    if val_idx.numel() > 0:
        return _FitData(x_tr, y_tr, x_n[val_dev], y_n[val_dev])
    cap = max(cfg.model_max_holdout, 1)
    return _FitData(x_tr, y_tr, x_tr[:cap], y_tr[:cap])


@dataclass
class _EarlyStopping:
    """Per-member early-stopping state; every tensor is ``[K]`` (no Python loop over members).

    Attributes:
        best_params: copies of the member-axis parameters at each member's best epoch.
        best_val: best validation MSE so far (inf where the pre-fit loss was non-finite).
        best_epoch: epoch of ``best_params`` (0: the pre-fit weights).
        stale: epochs since the last significant improvement.
        epochs: epochs each member has trained.
        active: members still training.
        train_loss: training loss of each member's last trained epoch (NaN before).
    """

    best_params: list[torch.Tensor]
    best_val: torch.Tensor
    best_epoch: torch.Tensor
    stale: torch.Tensor
    epochs: torch.Tensor
    active: torch.Tensor
    train_loss: torch.Tensor

    @classmethod
    def start(
        cls, member_params: list[torch.Tensor], val: torch.Tensor, dtype: torch.dtype,
        device: torch.device,
    ) -> _EarlyStopping:
        """State before the first epoch, from the pre-fit validation losses ``val``."""
        k = val.shape[0]
        return cls(
            best_params=[p.detach().clone() for p in member_params],
            best_val=torch.where(torch.isfinite(val), val, torch.full_like(val, math.inf)),
            best_epoch=torch.zeros(k, dtype=torch.long, device=device),
            stale=torch.zeros(k, dtype=torch.long, device=device),
            epochs=torch.zeros(k, dtype=torch.long, device=device),
            active=torch.ones(k, dtype=torch.bool, device=device),
            train_loss=torch.full((k,), math.nan, dtype=dtype, device=device),
        )

    def update(
        self, epoch: int, epoch_train: torch.Tensor, val: torch.Tensor,
        member_params: list[torch.Tensor], patience: int, threshold: float,
    ) -> None:
        """After ``epoch``: active members that improved keep a copy of their weights; those
        without a relative improvement of ``threshold`` for ``patience`` epochs stop and are
        reset to their best weights."""
        active = self.active
        improved = active & (val < self.best_val)
        significant = active & (val < self.best_val * (1.0 - threshold))
        self.best_val = torch.where(improved, val, self.best_val)
        self.best_epoch = torch.where(
            improved, torch.full_like(self.best_epoch, epoch), self.best_epoch
        )
        _copy_members(self.best_params, [p.detach() for p in member_params], improved)
        self.stale = torch.where(
            significant, torch.zeros_like(self.stale), self.stale + active.long()
        )
        self.epochs += active.long()
        self.train_loss = torch.where(active, epoch_train, self.train_loss)
        stopping = active & (self.stale >= patience)
        if bool(stopping.any()):
            self.active &= ~stopping
            _copy_members(member_params, self.best_params, stopping)


def train_step(
    ensemble: DynamicsEnsemble,
    optimizer: torch.optim.Optimizer,
    x_K_B_I: torch.Tensor,
    y_K_B_D: torch.Tensor,
    loss_weight_K: torch.Tensor | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """One optimiser step of the whole ensemble, member ``k`` on its own normalised rows
    ``x[k] -> y[k]``: minimises ``sum_k w_k loss_k + regularization_loss`` (``w = 1`` if
    ``loss_weight_K`` is None). ``autocast`` (e.g. ``torch.bfloat16``): the forward pass runs
    under ``torch.autocast`` of that dtype (entered per step: it caches cast weights until it
    exits, and the step changes them). Returns the ``[K]`` member losses (detached)."""
    if autocast is None:
        losses = ensemble.member_losses(x_K_B_I, y_K_B_D)
    else:
        with torch.autocast(x_K_B_I.device.type, dtype=autocast):
            losses = ensemble.member_losses(x_K_B_I, y_K_B_D).float()
    weighted = losses if loss_weight_K is None else losses * loss_weight_K
    loss = weighted.sum() + ensemble.regularization_loss()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return losses.detach()


_PRECISION_OF: dict[tuple, str] = {}  # fit_precision's timed choices, by shape


def fit_precision(ensemble: DynamicsEnsemble, batch_size: int, precision: str = "auto") -> str:
    """The dtype ("float32" or "bfloat16") the fit's training steps run in for a
    ``model_precision`` setting.

    "float32" and "bfloat16" are what they say. "auto" is float32 where bf16 matmuls are not
    fast (:func:`~mbmpo_ray.imagination.bf16_is_fast`: emulated bf16 is many times slower);
    elsewhere the faster of the two for this ensemble's shapes and ``batch_size``, timed once
    per process and shape (:func:`_faster_precision`). A bf16 autocast casts every weight on
    every step, so small members can train slower in bf16 even on bf16 units: MBPO's seven
    4 x 200 members at batch 256 refitted in 3.5 s against 2.2 s in float32 on an AMX Xeon
    (2026-12-07), while its SAC updates (512 x 512) were faster in bf16. The timing decides
    only where both are fast, so a near tie picks either without much cost."""
    if precision != "auto":
        return precision
    device = ensemble.input_normalizer.mean.device
    if not bf16_is_fast(device.type):
        return "float32"
    key = (str(device), ensemble.ensemble_size, ensemble.obs_dim, ensemble.act_dim,
           ensemble.hidden_sizes, ensemble.activation, ensemble.probabilistic, batch_size)
    if key not in _PRECISION_OF:
        _PRECISION_OF[key] = _faster_precision(ensemble, batch_size)
    return _PRECISION_OF[key]


def _faster_precision(ensemble: DynamicsEnsemble, batch_size: int, steps: int = 8,
                      rounds: int = 2) -> str:
    """"bfloat16" if ``steps`` training steps of a copy of ``ensemble`` on random rows of
    ``batch_size`` per member take less time under a bf16 autocast than in float32 (the best
    of ``rounds`` alternating timings each, after a warm-up step), else "float32". Leaves
    ``ensemble`` and every random generator untouched."""
    model = ensemble.subset(range(ensemble.ensemble_size))
    device = model.input_normalizer.mean.device
    gen = torch.Generator(device=device).manual_seed(0)
    k, d = model.ensemble_size, model.obs_dim
    x = torch.randn(k, batch_size, d + model.act_dim, generator=gen, device=device)
    y = torch.randn(k, batch_size, d, generator=gen, device=device)
    best = {"float32": math.inf, "bfloat16": math.inf}
    for _ in range(rounds):
        for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-6, fused=True)
            train_step(model, optimizer, x, y, autocast=dtype)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = perf_counter()
            for _ in range(steps):
                train_step(model, optimizer, x, y, autocast=dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], perf_counter() - t0)
    return "bfloat16" if best["bfloat16"] < best["float32"] else "float32"


def _epoch_order(
    boot: torch.Tensor | None, k: int, n_train: int, generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """``K x n_train`` training rows of one epoch: each member's bootstrap resample ``boot``
    (or all rows) in a fresh random order (one ``torch.rand`` from ``generator``)."""
    shuffle = torch.argsort(torch.rand(k, n_train, generator=generator), dim=1)
    return (boot.gather(1, shuffle) if boot is not None else shuffle).to(device)


def _sampled_order(
    boot: torch.Tensor | None, k: int, n_train: int, rows: int, new_pos: torch.Tensor,
    new_fraction: float, generator: torch.Generator | None, device: torch.device,
) -> torch.Tensor:
    """``K x rows`` training rows of one budgeted round, drawn with replacement: each row from
    the member's bootstrap resample ``boot`` (or all training rows) or, with probability
    ``new_fraction``, from the new training rows ``new_pos`` (if there are any)."""
    pick = torch.randint(n_train, (k, rows), generator=generator)
    order = boot.gather(1, pick) if boot is not None else pick
    if new_fraction > 0 and new_pos.numel() > 0:
        use_new = torch.rand(k, rows, generator=generator) < new_fraction
        fresh = new_pos[torch.randint(new_pos.numel(), (k, rows), generator=generator)]
        order = torch.where(use_new, fresh, order)
    return order.to(device)


def _rounds(cfg: FitConfig, n_train: int) -> list[int | None]:
    """Steps of each epoch/round: ``None`` (a full pass) ``model_max_epochs`` times without a
    budget; else rounds of ``model_check_steps`` (at most one pass) adding up to
    ``min(model_fit_steps, model_max_epochs passes)``."""
    if not cfg.model_fit_steps:
        return [None] * cfg.model_max_epochs
    per_pass = math.ceil(n_train / cfg.model_batch_size)
    budget = min(cfg.model_fit_steps, cfg.model_max_epochs * per_pass)
    size = min(cfg.model_check_steps, per_pass)
    return [size] * (budget // size) + ([budget % size] if budget % size else [])


def _train_epoch(
    ensemble: DynamicsEnsemble,
    optimizer: torch.optim.Optimizer,
    data: _FitData,
    order: torch.Tensor,
    batch_size: int,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """One pass over ``order`` (``M x n``: the rows of each of the ensemble's ``M`` members) in
    batches of ``batch_size`` rows per member (:func:`train_step`, with ``autocast``); returns
    each member's mean training loss ``[M]``."""
    loss_sum = data.x_tr.new_zeros(order.shape[0])
    n_steps = 0
    for start in range(0, order.shape[1], batch_size):
        rows = order[:, start : start + batch_size]  # M x b
        loss_sum += train_step(ensemble, optimizer, data.x_tr[rows], data.y_tr[rows],
                               autocast=autocast)
        n_steps += 1
    return loss_sum / max(n_steps, 1)


def _active_subset(
    ensemble: DynamicsEnsemble, optimizer: torch.optim.Optimizer, idx: torch.Tensor
) -> tuple[DynamicsEnsemble, torch.optim.Adam]:
    """Members ``idx`` as a stand-alone ensemble (:meth:`DynamicsEnsemble.subset`) and an Adam
    of the same settings whose state is theirs, sliced from ``optimizer``'s (shared tensors,
    e.g. the log-variance bounds, and Adam's step counts copied whole)."""
    sub = ensemble.subset(idx)
    group = optimizer.param_groups[0]
    sub_opt = torch.optim.Adam(sub.parameters(), lr=group["lr"], betas=group["betas"],
                               eps=group["eps"], weight_decay=group["weight_decay"], fused=True)
    members = {id(p) for p in ensemble.member_parameters()}
    for p, q in zip(ensemble.parameters(), sub.parameters(), strict=True):
        if p in optimizer.state:
            sub_opt.state[q] = {
                k: v[idx].clone() if id(p) in members and v.shape == p.shape else v.clone()
                for k, v in optimizer.state[p].items()}
    return sub, sub_opt


@torch.no_grad()
def _write_back(
    ensemble: DynamicsEnsemble, optimizer: torch.optim.Optimizer, sub: DynamicsEnsemble,
    sub_opt: torch.optim.Optimizer, idx: torch.Tensor,
) -> None:
    """Undo :func:`_active_subset` after training ``sub``: its weights and Adam state back into
    members ``idx`` of ``ensemble`` and ``optimizer`` (shared tensors replaced whole)."""
    members = {id(p) for p in ensemble.member_parameters()}
    for p, q in zip(ensemble.parameters(), sub.parameters(), strict=True):
        member = id(p) in members
        if member:
            p[idx] = q
        else:
            p.copy_(q)
        state = optimizer.state[p]
        for k, v in sub_opt.state.get(q, {}).items():
            if member and v.shape == q.shape:
                if k not in state:  # not allocated on every write-back, as setdefault would
                    state[k] = torch.zeros_like(p)
                state[k][idx] = v
            else:
                state[k] = v


def _train_active(
    ensemble: DynamicsEnsemble,
    optimizer: torch.optim.Optimizer,
    data: _FitData,
    order: torch.Tensor,
    stop: _EarlyStopping,
    cfg: FitConfig,
    autocast: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round (:func:`_train_epoch` over ``order``, ``K x n``) for the members still
    training, then their validation MSE; returns ``([K] training loss, [K] validation MSE)``.

    Stopped members cost nothing: once some have stopped, the round trains and validates the
    active members as a sub-ensemble of their own (:func:`_active_subset`, written back
    afterwards), so a fit costs the members' summed epochs, not ``K`` times the longest
    member's. A stopped member keeps its best weights and its Adam state; its entries in the
    returned losses are its last training loss and its best validation MSE (the loss of the
    weights it holds)."""
    batch, chunk, space = cfg.model_batch_size, cfg.eval_batch_size, cfg.model_val_space
    if bool(stop.active.all()):
        train = _train_epoch(ensemble, optimizer, data, order, batch, autocast)
        return train, _member_mse(ensemble, data.x_val, data.y_val, chunk, space)
    idx = torch.nonzero(stop.active).flatten()
    sub, sub_opt = _active_subset(ensemble, optimizer, idx)
    train_sub = _train_epoch(sub, sub_opt, data, order[idx.to(order.device)], batch, autocast)
    val_sub = _member_mse(sub, data.x_val, data.y_val, chunk, space)
    _write_back(ensemble, optimizer, sub, sub_opt, idx)
    train, val = stop.train_loss.clone(), stop.best_val.clone()
    train[idx], val[idx] = train_sub, val_sub
    return train, val


def _roll_back(
    ensemble: DynamicsEnsemble,
    pre_state: dict[str, torch.Tensor],
    epoch: int,
    stop: _EarlyStopping,
    history: list[float],
    holdout: np.ndarray,
) -> FitResult:
    """A loss became non-finite at ``epoch``: restore the pre-fit snapshot (weights,
    normalisers, logvar bounds, elites) and warn. A fit that diverged is not trusted even for
    members whose best weights looked fine; the caller can retry (e.g. with a lower lr) from a
    known-good state."""
    ensemble.load_state_dict(pre_state)
    msg = (
        f"fit_ensemble diverged at epoch {epoch} (non-finite loss); ensemble restored to its "
        "pre-fit state"
    )
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    k = stop.best_val.shape[0]
    return FitResult(
        train_loss=np.full(k, np.nan),
        val_loss=np.full(k, np.nan),
        epochs=stop.epochs.cpu().numpy(),
        best_epoch=np.zeros(k, dtype=np.int64),
        elites=ensemble.elite_indices.cpu().numpy(),
        history=np.asarray(history),
        holdout_indices=holdout,
        diverged=True,
        message=msg,
    )


def _finish(
    ensemble: DynamicsEnsemble,
    member_params: list[torch.Tensor],
    stop: _EarlyStopping,
    history: list[float],
    holdout: np.ndarray,
) -> FitResult:
    """Set every member to its best weights and select the elites from the best losses."""
    _copy_members(member_params, stop.best_params, torch.ones_like(stop.active))
    elites = ensemble.select_elites(stop.best_val.cpu())
    return FitResult(
        train_loss=stop.train_loss.detach().cpu().numpy(),
        val_loss=stop.best_val.cpu().numpy(),
        epochs=stop.epochs.cpu().numpy(),
        best_epoch=stop.best_epoch.cpu().numpy(),
        elites=elites.cpu().numpy(),
        history=np.asarray(history),
        holdout_indices=holdout,
    )


def _round_orders(cfg: FitConfig, train_idx: torch.Tensor, first_new: int, k: int,
                  generator: torch.Generator | None, device) -> Iterator[torch.Tensor]:
    """Per round of the fit (an epoch, or ``model_check_steps`` steps with a budget), the
    ``K x M`` positions in the training rows each member trains on, in order: its bootstrap
    resample (or all rows) shuffled, or with a budget sampled with
    ``model_new_data_fraction`` of them from the rows at ``train_idx >= first_new``."""
    n_train = train_idx.numel()
    boot = (torch.randint(n_train, (k, n_train), generator=generator)
            if cfg.model_bootstrap else None)
    new_pos = torch.nonzero(train_idx >= first_new).flatten()
    for steps in _rounds(cfg, n_train):
        yield (_epoch_order(boot, k, n_train, generator, device) if steps is None else
               _sampled_order(boot, k, n_train, steps * cfg.model_batch_size, new_pos,
                              cfg.model_new_data_fraction, generator, device))


def _fit_rounds(ensemble: DynamicsEnsemble, optimizer, member_params, fit_data, stop,
                orders: Iterator[torch.Tensor], cfg: FitConfig, autocast, history: list[float],
                log_fn: LogFn | None) -> int | None:
    """Train round after round (one per order) until every member stopped early or the
    rounds run out; ``history`` gets each round's mean validation loss. Returns the round at
    which a loss became non-finite (None: none did)."""
    for epoch, order in enumerate(orders, start=1):
        epoch_train, val = _train_active(ensemble, optimizer, fit_data, order, stop, cfg,
                                         autocast)
        # Divergence guard. NaN/inf weights after any step make every later loss non-finite,
        # so checking the summed epoch losses and the end-of-epoch validation covers each step.
        if not (bool(torch.isfinite(epoch_train).all()) and bool(torch.isfinite(val).all())):
            return epoch
        stop.update(epoch, epoch_train, val, member_params, cfg.model_patience,
                    cfg.model_improvement_threshold)
        history.append(float(val.mean()))
        if log_fn is not None:
            log_fn(epoch, epoch_train.detach().cpu().numpy(), val.cpu().numpy())
        if not bool(stop.active.any()):
            break
    return None


def fit_ensemble(
    ensemble: DynamicsEnsemble,
    obs: torch.Tensor | np.ndarray,
    act: torch.Tensor | np.ndarray,
    next_obs: torch.Tensor | np.ndarray,
    config: FitConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    optimizer_state: dict[str, Any] | None = None,
    log_fn: LogFn | None = None,
    row_ids: np.ndarray | None = None,
    new_rows: int = 0,
) -> tuple[FitResult, dict[str, Any]]:
    """Fit every member of ``ensemble`` in place on transitions ``(obs, act, next_obs)``.

    The ensemble is warm-started (training continues from its current weights); pass the
    returned optimiser state back as ``optimizer_state`` to warm-start Adam too. The procedure
    is described in the module docstring; at the end every member has its best weights and
    the elites are selected from the best validation losses.

    Args:
        ensemble: Model to fit (modified in place).
        obs, act, next_obs: Raw states ``N x D``, actions ``N x A``, next states ``N x D``.
        config: Hyper-parameters (validated first); ``None`` means ``FitConfig()``.
        generator: CPU RNG for the split, bootstrap and shuffling (reproducible fits).
        optimizer_state: ``state_dict`` of the Adam optimiser returned by a previous call.
        log_fn: Called as ``log_fn(epoch, train_loss_K, val_loss_K)`` after every epoch.
        row_ids: Optional stable integer id per row (e.g. its lifetime index in a replay
            buffer). A row is then held out in every call or in none, so a warm-started fit
            validates on rows it has never trained on (a fresh random split per call would let
            rows trained on last time into the holdout and stop training too early). Beyond
            ``model_max_holdout``, the held-out rows with the largest ids (the newest) are used.
            With ``model_holdout_split='per_fit'`` the split ignores them (random per call).
        new_rows: The last ``new_rows`` rows are new since the previous fit (rows oldest
            first); with a step budget, ``model_new_data_fraction`` of the batches is drawn
            from them.

    Returns:
        ``(result, optimizer_state)``. If a loss became non-finite, the ensemble (weights,
        normalisers, elites) and the returned optimiser state are those from before the call,
        ``result.diverged`` is True and a ``RuntimeWarning`` is emitted.

    Raises:
        ValueError: On invalid settings, shape mismatches or non-finite input rows (before any
            state changes).
    """
    cfg = (config if config is not None else FitConfig()).validate()
    ref = ensemble.input_normalizer.mean
    device, dtype = ref.device, ref.dtype
    data = _to_checked_tensors(
        {"obs": obs, "act": act, "next_obs": next_obs},
        {"obs": ensemble.obs_dim, "act": ensemble.act_dim, "next_obs": ensemble.obs_dim},
        dtype, device)
    obs_t, act_t, next_t = data["obs"], data["act"], data["next_obs"]
    n = obs_t.shape[0]
    val_idx, train_idx = _split_holdout(
        n, cfg, generator, row_ids if cfg.model_holdout_split == "fixed" else None)
    holdout = val_idx.cpu().numpy()
    autocast = autocast_dtype(fit_precision(ensemble, cfg.model_batch_size,
                                            cfg.model_precision), device.type)

    # snapshots for the divergence guard (never modified afterwards)
    pre_state = {name: t.detach().clone() for name, t in ensemble.state_dict().items()}
    optimizer, pre_opt_state = _make_optimizer(ensemble, cfg, optimizer_state)

    fit_data = _normalised_data(ensemble, obs_t, act_t, next_t, train_idx, val_idx, cfg)
    member_params = ensemble.member_parameters()
    val = _member_mse(ensemble, fit_data.x_val, fit_data.y_val, cfg.eval_batch_size,
                      cfg.model_val_space)
    stop = _EarlyStopping.start(member_params, val, dtype, device)
    history = [float(val.mean())]
    orders = _round_orders(cfg, train_idx, n - max(0, int(new_rows)), ensemble.ensemble_size,
                           generator, device)
    diverged_at = _fit_rounds(ensemble, optimizer, member_params, fit_data, stop, orders, cfg,
                              autocast, history, log_fn)
    if diverged_at is not None:
        return _roll_back(ensemble, pre_state, diverged_at, stop, history, holdout), pre_opt_state
    return _finish(ensemble, member_params, stop, history, holdout), optimizer.state_dict()
