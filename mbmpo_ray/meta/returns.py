"""Discounted returns, GAE and the rllab linear feature baseline, all task-batched.

Tensors follow the imagination layout ``T x N x H`` (tasks, rollouts per task, horizon).
``mask`` is 1.0 for steps that happened (up to and including a terminal step) and 0.0 after.
Rollouts are treated as ending at the horizon with value 0 (rllab convention).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def discount_cumsum(x: Tensor, gamma: float) -> Tensor:
    """Reverse discounted cumulative sum along the last axis.

    ``y[..., h] = sum_{k >= h} gamma^(k - h) x[..., k]``. Works for any leading shape.
    Implemented as a backward recursion ``y_h = x_h + gamma * y_{h+1}`` over the horizon,
    vectorised over all leading axes.
    """
    out = torch.empty_like(x)
    running = torch.zeros_like(x[..., 0])
    for h in range(x.shape[-1] - 1, -1, -1):
        running = x[..., h] + gamma * running
        out[..., h] = running
    return out


def compute_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted reward-to-go ``R_h = sum_{k>=h} gamma^(k-h) r_k`` over valid steps.

    Args:
        rewards: ``T x N x H`` (any leading shape works).
        mask: same shape, 1.0 for valid steps.
        gamma: discount factor (paper: 0.99).

    Returns:
        ``T x N x H`` returns, zero at invalid steps.
    """
    mask = mask.to(rewards.dtype)
    return discount_cumsum(rewards * mask, gamma) * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016), masked.

    ``delta_h = r_h + gamma * V_{h+1} * m_{h+1} - V_h`` (``V_H = 0``; ``m_{h+1} = 0`` after a
    terminal step so nothing is bootstrapped past termination) and
    ``A_h = sum_{k>=h} (gamma * lam)^(k-h) delta_k``. With ``lam = 1`` (paper) this is the
    discounted return minus the baseline.

    Args:
        rewards, values, mask: ``T x N x H``.
        gamma: discount (paper 0.99). lam: GAE lambda (paper 1.0).

    Returns:
        ``T x N x H`` advantages, zero at invalid steps.
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    next_values = torch.zeros_like(values)
    next_values[..., :-1] = values[..., 1:]
    deltas = (rewards + gamma * next_values - values) * mask
    return discount_cumsum(deltas, gamma * lam) * mask


def masked_mean(x: Tensor, mask: Tensor, dims: tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over entries with ``mask == 1`` (over ``dims``, default all)."""
    mask = mask.to(x.dtype)
    if dims is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dims) / mask.sum(dims).clamp_min(1.0)


def normalize_advantages(adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise advantages PER TASK (leading axis) over valid steps.

    ``(A - mean_t) / (std_t + eps)`` with mean/std taken over the valid entries of task ``t``;
    invalid entries are returned as 0. Input ``T x N x H``.
    """
    mask = mask.to(adv.dtype)
    dims = tuple(range(1, adv.dim()))
    count = mask.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (adv * mask).sum(dims, keepdim=True) / count
    var = ((adv - mean).pow(2) * mask).sum(dims, keepdim=True) / count
    return (adv - mean) / (var.sqrt() + eps) * mask


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """``1 - Var[target - pred] / Var[target]`` over valid entries (all tasks pooled).

    Returns ``nan`` if the target has zero variance (rllab convention). 1 = perfect fit,
    0 = no better than a constant, negative = worse than a constant.
    """
    m = mask.to(target.dtype)
    n = m.sum().clamp_min(1.0)

    def _var(x: Tensor) -> Tensor:
        mu = (x * m).sum() / n
        return ((x - mu).pow(2) * m).sum() / n

    var_y = _var(target)
    if float(var_y) == 0.0:
        return math.nan
    return float(1.0 - _var(target - pred) / var_y)


class LinearFeatureBaseline:
    """rllab's linear feature baseline, fitted independently per task in one batched solve.

    Features per step: ``[o, o^2, t, t^2, t^3, 1]`` with ``o = clip(obs, -10, 10)`` and
    ``t = step_index / 100`` (rllab scaling), i.e. ``2 D + 4`` features. Coefficients solve the
    ridge normal equations ``(X^T X + c I) beta = X^T y`` restricted to valid (mask) steps, per
    task, in float64. ``c`` starts at ``reg_coeff`` (1e-5) and is multiplied by 10 (up to 5
    tries) for the tasks whose solution is not finite.

    Attributes:
        coeffs: ``T x F`` fitted coefficients (``None`` before :meth:`fit`).
    """

    def __init__(self, reg_coeff: float = 1e-5, max_tries: int = 5) -> None:
        self.reg_coeff = float(reg_coeff)
        self.max_tries = int(max_tries)
        self.coeffs: Tensor | None = None

    @staticmethod
    def features(obs: Tensor) -> Tensor:
        """``T x N x H x D`` observations -> ``T x N x H x (2D + 4)`` float64 features."""
        o = obs.to(torch.float64).clamp(-10.0, 10.0)
        horizon = obs.shape[-2]
        t = torch.arange(horizon, dtype=torch.float64, device=obs.device) / 100.0
        t = t.view(*([1] * (obs.dim() - 2)), horizon, 1).expand(*obs.shape[:-1], 1)
        ones = torch.ones_like(t)
        return torch.cat([o, o * o, t, t * t, t * t * t, ones], dim=-1)

    def fit(self, obs: Tensor, returns: Tensor, mask: Tensor) -> LinearFeatureBaseline:
        """Fit per-task coefficients on valid steps.

        Args:
            obs: ``T x N x H x D``. returns: ``T x N x H`` regression targets. mask: ``T x N x H``.

        Returns:
            ``self`` (coefficients stored in :attr:`coeffs`, ``T x F`` float64).
        """
        feats = self.features(obs)
        num_tasks, num_feat = feats.shape[0], feats.shape[-1]
        m = mask.to(torch.float64).reshape(num_tasks, -1, 1)
        x = feats.reshape(num_tasks, -1, num_feat) * m
        y = returns.to(torch.float64).reshape(num_tasks, -1, 1) * m
        xtx = x.transpose(1, 2) @ x  # T x F x F
        xty = x.transpose(1, 2) @ y  # T x F x 1
        eye = torch.eye(num_feat, dtype=torch.float64, device=obs.device)
        coeffs = torch.full((num_tasks, num_feat), math.nan, dtype=torch.float64, device=obs.device)
        reg = self.reg_coeff
        todo = torch.ones(num_tasks, dtype=torch.bool, device=obs.device)
        for _ in range(self.max_tries):
            sol = torch.linalg.lstsq(xtx[todo] + reg * eye, xty[todo]).solution.squeeze(-1)
            coeffs[todo] = sol
            todo = ~torch.isfinite(coeffs).all(-1)
            if not bool(todo.any()):
                break
            reg *= 10.0
        self.coeffs = torch.nan_to_num(coeffs, nan=0.0, posinf=0.0, neginf=0.0)
        return self

    def predict(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """Baseline values ``T x N x H`` (in ``obs.dtype``; zeroed where ``mask == 0``)."""
        if self.coeffs is None:
            raise RuntimeError("LinearFeatureBaseline.predict called before fit")
        feats = self.features(obs)
        num_tasks = feats.shape[0]
        flat = feats.reshape(num_tasks, -1, feats.shape[-1])
        vals = (flat @ self.coeffs.unsqueeze(-1)).reshape(obs.shape[:-1]).to(obs.dtype)
        if mask is not None:
            vals = vals * mask.to(vals.dtype)
        return vals
