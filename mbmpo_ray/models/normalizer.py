"""Per-feature affine normaliser whose statistics travel with the model's ``state_dict``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Normalizer"]


class Normalizer(nn.Module):
    """Standardises features as ``(x - mean) / std`` over the last axis.

    ``mean`` and ``std`` (both shape ``D``) are registered buffers, so they are saved and loaded
    with ``state_dict`` and move with ``.to(device)``. Before the first :meth:`update` the
    normaliser is the identity (``mean = 0``, ``std = 1``).

    Args:
        dim: Feature dimension ``D``.
        min_std: Floor applied to the fitted standard deviation. A constant feature (std 0)
            would otherwise divide by zero; with the floor its normalised value is ~0 and the
            reconstruction error after :meth:`denormalize` is scaled by ``min_std``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int, min_std: float = 1e-6) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"Normalizer dim must be positive, got {dim}")
        if min_std <= 0:
            raise ValueError(f"min_std must be positive, got {min_std}")
        self.dim = int(dim)
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))

    @torch.no_grad()
    def update(self, x: torch.Tensor | np.ndarray) -> None:
        """Refit ``mean`` and ``std`` to data (replaces the old statistics, no running average).

        Args:
            x: Data of shape ``N x D`` (any leading dims ``... x D`` are flattened), ``N >= 1``.
                Statistics are computed in float64 and stored in the buffers' dtype.
        """
        data = torch.as_tensor(x).detach().to(device=self.mean.device, dtype=torch.float64)
        if data.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got shape {tuple(data.shape)}")
        data = data.reshape(-1, self.dim)
        if data.shape[0] == 0:
            raise ValueError("cannot fit a Normalizer on zero rows")
        if not torch.isfinite(data).all():
            raise ValueError("cannot fit a Normalizer on non-finite data")
        mean = data.mean(dim=0)
        std = data.std(dim=0, unbiased=False).clamp_min(self.min_std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw ``... x D`` values to normalised ``... x D`` values ``(x - mean) / std``."""
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised ``... x D`` values back to raw ``... x D`` values ``x * std + mean``."""
        return torch.addcmul(self.mean, x, self.std)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, min_std={self.min_std:g}"
