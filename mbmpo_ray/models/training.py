"""Fitting a :class:`DynamicsEnsemble` on transitions: bootstrapped, batched over members,
with per-member early stopping, warm starts and a divergence guard.

Shapes: ``N`` transitions, ``K`` members, ``D`` state dim, ``A`` action dim, ``I = D + A``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbmpo_ray.models.ensemble import DynamicsEnsemble

__all__ = ["FitConfig", "FitResult", "fit_ensemble"]

LogFn = Callable[[int, np.ndarray, np.ndarray], None]


@dataclass
class FitConfig:
    """Hyper-parameters of :func:`fit_ensemble` (defaults follow the MB-MPO paper / MBPO)."""

    batch_size: int = 500
    """Rows per member per gradient step (the paper's model batch size)."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam L2 weight decay, applied to all parameters."""
    max_epochs: int = 50
    """Upper bound on passes over each member's training rows."""
    holdout_ratio: float = 0.2
    """Fraction of rows held out (shared by all members) for validation and early stopping."""
    max_holdout: int = 5000
    """Cap on the number of held-out rows."""
    patience: int = 5
    """Epochs without significant validation improvement after which a member stops training."""
    improvement_threshold: float = 0.01
    """Relative validation improvement that resets a member's patience counter."""
    bootstrap: bool = True
    """Each member trains on its own bootstrap resample (else its own permutation) of train rows."""
    update_normalizers: bool = True
    """Refit the input/delta normalisers on the training rows before fitting."""
    eval_batch_size: int = 4096
    """Rows per chunk when computing validation losses (memory bound only)."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.max_epochs < 0 or self.patience <= 0:
            raise ValueError("batch_size and patience must be positive, max_epochs >= 0")
        if not 0.0 <= self.holdout_ratio < 1.0:
            raise ValueError(f"holdout_ratio must be in [0, 1), got {self.holdout_ratio}")
        if self.max_holdout < 0 or self.eval_batch_size <= 0 or self.lr <= 0:
            raise ValueError("max_holdout >= 0, eval_batch_size > 0 and lr > 0 are required")


@dataclass
class FitResult:
    """Outcome of :func:`fit_ensemble`. Losses are in normalised delta space."""

    train_loss: np.ndarray
    """``[K]`` training objective (L2 or NLL) of each member's last trained epoch."""
    val_loss: np.ndarray
    """``[K]`` validation MSE of the weights each member ends with (its best epoch)."""
    epochs: np.ndarray
    """``[K]`` epochs each member actually trained before it stopped (<= max_epochs)."""
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
    ensemble: DynamicsEnsemble, x_n: torch.Tensor, y_n: torch.Tensor, chunk: int
) -> torch.Tensor:
    """``[K]`` MSE of every member on the same rows ``x_n`` (``N x I``) -> ``y_n`` (``N x D``)."""
    k = ensemble.ensemble_size
    sse = x_n.new_zeros(k)
    for start in range(0, x_n.shape[0], chunk):
        xb = x_n[start : start + chunk]
        mean, _ = ensemble.forward_normalized(xb.unsqueeze(0).expand(k, -1, -1))
        sse += (mean - y_n[start : start + chunk]).square().sum(dim=(1, 2))
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
) -> tuple[FitResult, dict[str, Any]]:
    """Fit every member of ``ensemble`` in place on transitions ``(obs, act, next_obs)``.

    The ensemble is warm-started (training continues from its current weights); pass the
    returned optimiser state back as ``optimizer_state`` to warm-start Adam too.

    Procedure: a held-out split shared by all members (``holdout_ratio``, capped at
    ``max_holdout``; if empty, validation uses up to ``max_holdout`` training rows), random per
    call or, with ``row_ids``, a fixed function of each row's id; the
    normalisers are refitted on the training rows; each member gets its own bootstrap resample
    (or permutation) of the training rows, reshuffled per epoch; each step gathers a
    ``K x batch x I`` tensor and takes one Adam step for the whole ensemble. After every epoch
    each member's validation MSE is computed; a member keeps a copy of its best weights and
    stops after ``patience`` epochs without relative improvement ``improvement_threshold``. At
    the end every member is set to its best weights and the elites are selected from the
    best validation losses (:meth:`DynamicsEnsemble.select_elites`).

    Args:
        ensemble: Model to fit (modified in place).
        obs: Raw states ``N x D``.
        act: Raw actions ``N x A``.
        next_obs: Raw next states ``N x D``.
        config: Hyper-parameters; ``None`` means ``FitConfig()``.
        generator: CPU RNG for the split, bootstrap and shuffling (reproducible fits).
        optimizer_state: ``state_dict`` of the Adam optimiser returned by a previous call.
        log_fn: Called as ``log_fn(epoch, train_loss_K, val_loss_K)`` after every epoch.
        row_ids: Optional stable integer id per row (e.g. its lifetime index in a replay
            buffer). A row is then held out in every call or in none, so a warm-started fit
            validates on rows it has never trained on (a fresh random split per call would let
            rows trained on last time into the holdout and stop training too early). Beyond
            ``max_holdout``, the held-out rows with the largest ids (the newest) are used.

    Returns:
        ``(result, optimizer_state)``. If a loss became non-finite, the ensemble (weights,
        normalisers, elites) and the returned optimiser state are those from before the call,
        ``result.diverged`` is True and a ``RuntimeWarning`` is emitted.

    Raises:
        ValueError: On shape mismatches or non-finite input rows (before any state changes).
    """
    cfg = config if config is not None else FitConfig()
    ref = ensemble.input_normalizer.mean
    device, dtype = ref.device, ref.dtype
    data = _to_checked_tensors(
        {"obs": obs, "act": act, "next_obs": next_obs},
        {"obs": ensemble.obs_dim, "act": ensemble.act_dim, "next_obs": ensemble.obs_dim},
        dtype,
        device,
    )
    obs_t, act_t, next_t = data["obs"], data["act"], data["next_obs"]
    n, k = obs_t.shape[0], ensemble.ensemble_size

    # ---- shared held-out split
    if row_ids is None:
        perm = torch.randperm(n, generator=generator)
        n_val = min(int(n * cfg.holdout_ratio), cfg.max_holdout, n - 1)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
    else:
        val_idx, train_idx = _stable_split(row_ids, n, cfg.holdout_ratio, cfg.max_holdout)
        n_val = val_idx.numel()
    n_train = train_idx.numel()

    # ---- snapshots for the divergence guard (never modified afterwards)
    pre_state = {name: t.detach().clone() for name, t in ensemble.state_dict().items()}
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:  # the config wins over the saved hyper-parameters
            group["lr"] = cfg.lr
            group["weight_decay"] = cfg.weight_decay
    pre_opt_state = copy.deepcopy(optimizer.state_dict())

    # ---- normalise once; batches are gathered from these tensors
    tr_dev, val_dev = train_idx.to(device), val_idx.to(device)
    if cfg.update_normalizers:
        ensemble.update_normalizers(obs_t[tr_dev], act_t[tr_dev], next_t[tr_dev])
    with torch.no_grad():
        x_n = ensemble.input_normalizer.normalize(torch.cat((obs_t, act_t), dim=-1))
        y_n = ensemble.delta_normalizer.normalize(next_t - obs_t)
    x_tr, y_tr = x_n[tr_dev], y_n[tr_dev]
    if n_val > 0:
        x_val, y_val = x_n[val_dev], y_n[val_dev]
    else:
        x_val, y_val = x_tr[: max(cfg.max_holdout, 1)], y_tr[: max(cfg.max_holdout, 1)]

    # ---- per-member bookkeeping (all K-vectors; no Python loop over members)
    member_params = ensemble.member_parameters()
    best_params = [p.detach().clone() for p in member_params]
    val = _member_mse(ensemble, x_val, y_val, cfg.eval_batch_size)
    best_val = torch.where(torch.isfinite(val), val, torch.full_like(val, math.inf))
    best_epoch = torch.zeros(k, dtype=torch.long, device=device)
    stale = torch.zeros(k, dtype=torch.long, device=device)
    epochs = torch.zeros(k, dtype=torch.long, device=device)
    active = torch.ones(k, dtype=torch.bool, device=device)
    train_loss = torch.full((k,), math.nan, dtype=dtype, device=device)
    history = [float(val.mean())]
    boot = torch.randint(n_train, (k, n_train), generator=generator) if cfg.bootstrap else None

    diverged = False
    for epoch in range(1, cfg.max_epochs + 1):
        shuffle = torch.argsort(torch.rand(k, n_train, generator=generator), dim=1)
        order = (boot.gather(1, shuffle) if boot is not None else shuffle).to(device)
        loss_weight = active.to(dtype)
        any_frozen = not bool(active.all())
        loss_sum = torch.zeros(k, dtype=dtype, device=device)
        n_steps = 0
        for start in range(0, n_train, cfg.batch_size):
            rows = order[:, start : start + cfg.batch_size]  # K x b
            losses = ensemble.member_losses(x_tr[rows], y_tr[rows])  # K
            loss = (losses * loss_weight).sum() + ensemble.regularization_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if any_frozen:
                # Frozen members: their loss is masked (zero gradient), but Adam would still move
                # them with its momentum (and weight decay), so they are reset to their best
                # weights after every step. They therefore never change once stopped.
                _copy_members(member_params, best_params, ~active)
            loss_sum += losses.detach()
            n_steps += 1
        epoch_train = loss_sum / max(n_steps, 1)
        val = _member_mse(ensemble, x_val, y_val, cfg.eval_batch_size)

        # Divergence guard. NaN/inf weights after any step make every later loss non-finite,
        # so checking the summed epoch losses and the end-of-epoch validation covers each step.
        if not (bool(torch.isfinite(epoch_train).all()) and bool(torch.isfinite(val).all())):
            diverged = True
            break

        improved = active & (val < best_val)
        significant = active & (val < best_val * (1.0 - cfg.improvement_threshold))
        best_val = torch.where(improved, val, best_val)
        best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
        _copy_members(best_params, [p.detach() for p in member_params], improved)
        stale = torch.where(significant, torch.zeros_like(stale), stale + active.long())
        epochs += active.long()
        train_loss = torch.where(active, epoch_train, train_loss)
        stopping = active & (stale >= cfg.patience)
        if bool(stopping.any()):
            active &= ~stopping
            _copy_members(member_params, best_params, stopping)
        history.append(float(val.mean()))
        if log_fn is not None:
            log_fn(epoch, epoch_train.detach().cpu().numpy(), val.cpu().numpy())
        if not bool(active.any()):
            break

    holdout = val_idx.cpu().numpy()
    if diverged:
        # Roll everything back to the pre-fit snapshot (weights, normalisers, logvar bounds,
        # elites) and hand back the pre-fit optimiser state: a fit that diverged is not trusted
        # even for members whose best weights looked fine, and the caller can retry (e.g. with a
        # lower lr) from a known-good state.
        ensemble.load_state_dict(pre_state)
        msg = (
            f"fit_ensemble diverged at epoch {epoch} (non-finite loss); ensemble restored to its "
            "pre-fit state"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        result = FitResult(
            train_loss=np.full(k, np.nan),
            val_loss=np.full(k, np.nan),
            epochs=epochs.cpu().numpy(),
            best_epoch=np.zeros(k, dtype=np.int64),
            elites=ensemble.elite_indices.cpu().numpy(),
            history=np.asarray(history),
            holdout_indices=holdout,
            diverged=True,
            message=msg,
        )
        return result, pre_opt_state

    _copy_members(member_params, best_params, torch.ones_like(active))
    elites = ensemble.select_elites(best_val.cpu())
    result = FitResult(
        train_loss=train_loss.detach().cpu().numpy(),
        val_loss=best_val.cpu().numpy(),
        epochs=epochs.cpu().numpy(),
        best_epoch=best_epoch.cpu().numpy(),
        elites=elites.cpu().numpy(),
        history=np.asarray(history),
        holdout_indices=holdout,
    )
    return result, optimizer.state_dict()
