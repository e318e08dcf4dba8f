"""Batched ensemble of MLP dynamics models (MB-MPO, Clavera et al. 2018; PETS/MBPO heads).

Shape conventions used throughout: ``K`` ensemble members, ``B`` rows per member, ``D`` state
dimension, ``A`` action dimension, ``I = D + A`` network input dimension, ``H`` hidden width.
Every member is evaluated in the same batched matmul (``torch.baddbmm``); nothing loops over
members in Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mbmpo_ray.models.normalizer import Normalizer

__all__ = ["DynamicsEnsemble", "EnsembleLinear"]

IndexLike = Sequence[int] | np.ndarray | torch.Tensor

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


class EnsembleLinear(nn.Module):
    """``K`` independent affine layers applied in one batched matmul.

    Member ``k`` computes ``y[k] = x[k] @ weight[k] + bias[k]``.

    Args:
        ensemble_size: Number of members ``K``.
        in_features: Input width ``in``.
        out_features: Output width ``out``.

    Attributes:
        weight: ``K x in x out`` parameter.
        bias: ``K x 1 x out`` parameter (broadcast over rows).
    """

    def __init__(self, ensemble_size: int, in_features: int, out_features: int) -> None:
        super().__init__()
        if min(ensemble_size, in_features, out_features) <= 0:
            raise ValueError(
                "EnsembleLinear sizes must be positive, got "
                f"K={ensemble_size}, in={in_features}, out={out_features}"
            )
        self.ensemble_size = int(ensemble_size)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every member independently like ``nn.Linear``: ``U(-1/sqrt(in), 1/sqrt(in))``
        for both weight and bias (what ``kaiming_uniform_(a=sqrt(5))`` reduces to)."""
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight.uniform_(-bound, bound)
        self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply member ``k`` to ``x[k]``: ``K x B x in`` -> ``K x B x out``."""
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"ensemble_size={self.ensemble_size}, in={self.in_features}, out={self.out_features}"


class DynamicsEnsemble(nn.Module):
    """Ensemble of MLPs predicting the normalised state change ``delta = next_obs - obs``.

    The network input is the concatenation ``[obs, act]`` (``I = D + A``) standardised by
    ``input_normalizer``; the output is ``delta`` standardised by ``delta_normalizer``. Both
    normalisers are buffers, so they are part of ``state_dict``.

    Two heads:

    * deterministic (``probabilistic=False``, MB-MPO paper): the MLP outputs the mean delta and is
      trained with L2 loss in normalised delta space.
    * probabilistic (PETS/MBPO): the MLP outputs a mean and a log-variance per dimension. The
      log-variance is softly bounded by learned ``max_logvar``/``min_logvar`` (shape ``D``, shared
      by all members) via softplus; the loss is the Gaussian NLL plus
      ``logvar_bound_coef * (sum(max_logvar) - sum(min_logvar))``.

    Args:
        obs_dim: State dimension ``D``.
        act_dim: Action dimension ``A``.
        ensemble_size: Number of members ``K``.
        hidden_sizes: Widths of the hidden layers.
        activation: One of ``relu, tanh, silu/swish, elu, gelu, leaky_relu``.
        probabilistic: Use the Gaussian (mean, log-variance) head.
        num_elites: How many members :meth:`select_elites` keeps (default: all ``K``); the
            MBPO step :meth:`sample_elite_next_obs` draws from them (MB-MPO's imagination uses
            every member whatever the elites).
        init_max_logvar: Initial value of the (learned) upper log-variance bound.
        init_min_logvar: Initial value of the (learned) lower log-variance bound.
        logvar_bound_coef: Weight of the bound regulariser in :meth:`regularization_loss`.
    """

    elite_mask: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble_size: int = 5,
        hidden_sizes: Sequence[int] = (512, 512),
        activation: str = "relu",
        probabilistic: bool = False,
        num_elites: int | None = None,
        *,
        init_max_logvar: float = 0.5,
        init_min_logvar: float = -10.0,
        logvar_bound_coef: float = 0.01,
    ) -> None:
        super().__init__()
        if obs_dim <= 0 or act_dim < 0 or ensemble_size <= 0:
            raise ValueError(
                f"invalid sizes obs_dim={obs_dim}, act_dim={act_dim}, ensemble_size={ensemble_size}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}"
            )
        num_elites = ensemble_size if num_elites is None else int(num_elites)
        if not 1 <= num_elites <= ensemble_size:
            raise ValueError(f"num_elites must be in [1, {ensemble_size}], got {num_elites}")
        # what :meth:`subset` needs to build an ensemble of the same architecture
        self._arch = dict(
            obs_dim=int(obs_dim), act_dim=int(act_dim), hidden_sizes=tuple(hidden_sizes),
            activation=activation, probabilistic=bool(probabilistic),
            init_max_logvar=init_max_logvar, init_min_logvar=init_min_logvar,
            logvar_bound_coef=logvar_bound_coef)
        self._obs_dim = int(obs_dim)
        self._act_dim = int(act_dim)
        self._ensemble_size = int(ensemble_size)
        self._probabilistic = bool(probabilistic)
        self._num_elites = num_elites
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.activation = activation
        self.logvar_bound_coef = float(logvar_bound_coef)

        in_dim = self._obs_dim + self._act_dim
        out_dim = 2 * self._obs_dim if self._probabilistic else self._obs_dim
        widths = (in_dim, *self.hidden_sizes)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [EnsembleLinear(ensemble_size, w_in, w_out), ACTIVATIONS[activation]()]
        layers.append(EnsembleLinear(ensemble_size, widths[-1], out_dim))
        self.net = nn.Sequential(*layers)

        self.input_normalizer = Normalizer(in_dim)
        self.delta_normalizer = Normalizer(self._obs_dim)
        if self._probabilistic:
            self.max_logvar = nn.Parameter(torch.full((self._obs_dim,), float(init_max_logvar)))
            self.min_logvar = nn.Parameter(torch.full((self._obs_dim,), float(init_min_logvar)))
        else:
            self.register_parameter("max_logvar", None)
            self.register_parameter("min_logvar", None)
        self.register_buffer("elite_mask", torch.ones(ensemble_size, dtype=torch.bool))
        # Names (as in state_dict) of tensors whose leading axis is the member axis.
        self._member_keys = tuple(
            f"{name}.{p}"
            for name, mod in self.named_modules()
            if isinstance(mod, EnsembleLinear)
            for p in ("weight", "bias")
        )

    # ------------------------------------------------------------------ properties
    @property
    def ensemble_size(self) -> int:
        """Number of members ``K``."""
        return self._ensemble_size

    @property
    def obs_dim(self) -> int:
        """State dimension ``D``."""
        return self._obs_dim

    @property
    def act_dim(self) -> int:
        """Action dimension ``A``."""
        return self._act_dim

    @property
    def probabilistic(self) -> bool:
        """Whether the Gaussian (mean, log-variance) head is used."""
        return self._probabilistic

    @property
    def num_elites(self) -> int:
        """How many members :meth:`select_elites` keeps."""
        return self._num_elites

    @property
    def elite_indices(self) -> torch.Tensor:
        """Sorted member indices (LongTensor ``[num_selected]``) currently marked elite.

        All ``K`` members until :meth:`select_elites` (called by ``fit_ensemble``) or the setter
        changes it. Stored as the boolean buffer ``elite_mask`` (``[K]``) so it is checkpointed.
        """
        return torch.nonzero(self.elite_mask).flatten()

    @elite_indices.setter
    def elite_indices(self, indices: IndexLike) -> None:
        idx = self._as_member_index(indices)
        mask = torch.zeros_like(self.elite_mask)
        mask[idx] = True
        self.elite_mask.copy_(mask)

    def member_keys(self) -> tuple[str, ...]:
        """``state_dict`` keys of tensors whose first axis is the member axis ``K``."""
        return self._member_keys

    def member_parameters(self) -> list[nn.Parameter]:
        """Parameters whose first axis is the member axis (``K x in x out`` / ``K x 1 x out``)."""
        params = dict(self.named_parameters())
        return [params[k] for k in self._member_keys]

    # ------------------------------------------------------------------ forward passes
    def forward_normalized(self, x_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the MLP on already-normalised inputs.

        Args:
            x_n: Normalised ``[obs, act]``, shape ``K x B x I``; member ``k`` sees ``x_n[k]``.

        Returns:
            ``(mean, logvar)``, each ``K x B x D`` in normalised delta space; ``logvar`` is
            ``None`` for the deterministic head.
        """
        out = self.net(x_n)
        if not self._probabilistic:
            return out, None
        mean, raw_logvar = out.split(self._obs_dim, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def forward_members(
        self, obs: torch.Tensor, act: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-member prediction from raw inputs; member ``k`` gets its own rows.

        Args:
            obs: Raw states ``K x B x D``.
            act: Raw actions ``K x B x A``.

        Returns:
            ``(mean_delta, logvar)``, each ``K x B x D`` in normalised delta space (``logvar`` is
            ``None`` for the deterministic head). Raw delta is
            ``delta_normalizer.denormalize(mean_delta)``.
        """
        x_n = self.input_normalizer.normalize(torch.cat((obs, act), dim=-1))
        return self.forward_normalized(x_n)

    def forward(
        self, obs: torch.Tensor, act: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Alias of :meth:`forward_members` (``K x B x D``, ``K x B x A`` -> ``K x B x D``)."""
        return self.forward_members(obs, act)

    @torch.no_grad()
    def sample_next_obs(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        *,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Imagination step: raw ``K x B x D`` states and ``K x B x A`` actions -> raw next states.

        Hot path: no validation, no numpy, no autograd. Inputs must already be tensors with the
        model's dtype/device. For the probabilistic head the normalised delta is sampled from
        ``N(mean, exp(logvar))`` unless ``deterministic``; the deterministic head ignores
        ``deterministic``.

        Returns:
            ``next_obs = obs + denormalize(delta)``, shape ``K x B x D``.
        """
        mean, logvar = self.forward_members(obs, act)
        if logvar is not None and not deterministic:
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            mean = torch.addcmul(mean, noise, torch.exp(0.5 * logvar))
        return obs + self.delta_normalizer.denormalize(mean)

    @torch.no_grad()
    def sample_elite_next_obs(
        self,
        obs_B_D: torch.Tensor,
        act_B_A: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        deterministic: bool = False,
        return_members: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """MBPO model step: each row is predicted by an elite member drawn uniformly at random
        (independently per row), which samples its next state from its own Gaussian.

        Each member computes only its own rows: the rows are grouped by member into a padded
        ``K x m x (D + A)`` batch (``m`` = the largest group, about ``B / num_elites``) for one
        batched forward, then scattered back, so a step costs about ``K / num_elites`` member
        forwards of ``B`` rows instead of ``K`` (as mbrl-lib's ``random_model`` propagation).
        ``generator`` is used for one ``torch.randint`` (the members) and, for the
        probabilistic head unless ``deterministic``, one ``torch.randn`` of ``B x D``
        (normalised delta ``mean + std * noise`` with the member's predicted
        ``std = exp(logvar / 2)``). The deterministic head returns the member's mean.

        Hot path like :meth:`sample_next_obs`: inputs must be tensors of the model's
        dtype/device.

        Args:
            obs_B_D: Raw states ``B x D``.
            act_B_A: Raw actions ``B x A``.
            generator: RNG on the model's device (None: torch's global RNG).
            deterministic: use each chosen member's mean prediction.
            return_members: also return the ``[B]`` member index used for each row.

        Returns:
            Raw next states ``B x D`` (and the ``[B]`` members if ``return_members``).
        """
        k, b = self._ensemble_size, obs_B_D.shape[0]
        dev = obs_B_D.device
        elites = self.elite_indices.to(dev)
        pick = torch.randint(len(elites), (b,), generator=generator, device=dev)
        members = elites[pick]
        # group the rows by member: row order[i] goes to slot[i] of member grouped[i]
        order = torch.argsort(members, stable=True)
        grouped = members[order]
        counts = torch.bincount(members, minlength=k)
        slot = torch.arange(b, device=dev) - (torch.cumsum(counts, 0) - counts)[grouped]
        m = int(counts.max()) if b else 0
        x = torch.cat((obs_B_D, act_B_A), dim=-1)[order]
        x_pad = x.new_zeros(k, m, x.shape[-1])
        x_pad[grouped, slot] = x
        mean_K, logvar_K = self.forward_normalized(self.input_normalizer.normalize(x_pad))
        mean = torch.empty_like(obs_B_D)
        mean[order] = mean_K[grouped, slot]  # B x D, normalised delta of each row's member
        if logvar_K is not None and not deterministic:
            logvar = torch.empty_like(obs_B_D)
            logvar[order] = logvar_K[grouped, slot]
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            mean = torch.addcmul(mean, noise, torch.exp(0.5 * logvar))
        next_obs = obs_B_D + self.delta_normalizer.denormalize(mean)
        return (next_obs, members) if return_members else next_obs

    @torch.no_grad()
    def predict(
        self,
        obs: torch.Tensor | np.ndarray,
        act: torch.Tensor | np.ndarray,
        *,
        member_idx: IndexLike | None = None,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | np.ndarray:
        """Convenience prediction of raw next states from one batch shared by all members.

        Args:
            obs: Raw states ``B x D`` (numpy or torch).
            act: Raw actions ``B x A``.
            member_idx: ``None`` or integer indices ``[B]``; row ``b`` is predicted by member
                ``member_idx[b]``. (All ``K`` members are evaluated and the rows gathered, so the
                cost is that of the ``K x B x D`` call.)
            deterministic: See :meth:`sample_next_obs`.
            generator: RNG for the probabilistic head's sampling.

        Returns:
            ``K x B x D`` next states if ``member_idx`` is ``None`` else ``B x D``; a numpy array
            if ``obs`` was a numpy array, else a tensor.
        """
        as_numpy = isinstance(obs, np.ndarray)
        ref = self.input_normalizer.mean
        obs_t = torch.as_tensor(obs, dtype=ref.dtype, device=ref.device)
        act_t = torch.as_tensor(act, dtype=ref.dtype, device=ref.device)
        if obs_t.ndim != 2 or obs_t.shape[1] != self._obs_dim:
            raise ValueError(f"obs must be B x {self._obs_dim}, got {tuple(obs_t.shape)}")
        if act_t.shape != (obs_t.shape[0], self._act_dim):
            raise ValueError(
                f"act must be {obs_t.shape[0]} x {self._act_dim}, got {tuple(act_t.shape)}"
            )
        k, b = self._ensemble_size, obs_t.shape[0]
        out = self.sample_next_obs(
            obs_t.expand(k, b, -1),
            act_t.expand(k, b, -1),
            deterministic=deterministic,
            generator=generator,
        )
        if member_idx is not None:
            idx = torch.as_tensor(member_idx, dtype=torch.long, device=out.device)
            if idx.shape != (b,):
                raise ValueError(f"member_idx must have shape [{b}], got {tuple(idx.shape)}")
            if b and (int(idx.min()) < 0 or int(idx.max()) >= k):
                raise ValueError(f"member_idx values must be in [0, {k})")
            out = out[idx, torch.arange(b, device=out.device)]
        return out.cpu().numpy() if as_numpy else out

    # ------------------------------------------------------------------ losses
    def member_losses(self, x_n: torch.Tensor, y_n: torch.Tensor) -> torch.Tensor:
        """Training objective of each member on its own rows.

        Args:
            x_n: Normalised inputs ``K x B x I``.
            y_n: Normalised target deltas ``K x B x D``.

        Returns:
            ``[K]`` losses, each averaged over rows and dims: squared error (deterministic head)
            or Gaussian NLL without constants, ``(mean - y)^2 * exp(-logvar) + logvar``
            (probabilistic head). Excludes :meth:`regularization_loss`.
        """
        mean, logvar = self.forward_normalized(x_n)
        sq_err = (mean - y_n).square()
        if logvar is None:
            return sq_err.mean(dim=(1, 2))
        return (sq_err * torch.exp(-logvar) + logvar).mean(dim=(1, 2))

    def regularization_loss(self) -> torch.Tensor:
        """Scalar bound regulariser ``coef * (sum(max_logvar) - sum(min_logvar))`` (0 if
        deterministic); keeps the learned log-variance bounds tight."""
        if not self._probabilistic:
            return self.net[0].weight.new_zeros(())
        return self.logvar_bound_coef * (self.max_logvar.sum() - self.min_logvar.sum())

    # ------------------------------------------------------------------ data / elites
    @torch.no_grad()
    def update_normalizers(
        self,
        obs: torch.Tensor | np.ndarray,
        act: torch.Tensor | np.ndarray,
        next_obs: torch.Tensor | np.ndarray,
    ) -> None:
        """Refit the input normaliser on ``[obs, act]`` (``N x I``) and the delta normaliser on
        ``next_obs - obs`` (``N x D``). Inputs: ``N x D``, ``N x A``, ``N x D``."""
        obs_t = torch.as_tensor(obs, dtype=torch.float64)
        act_t = torch.as_tensor(act, dtype=torch.float64)
        next_t = torch.as_tensor(next_obs, dtype=torch.float64)
        self.input_normalizer.update(torch.cat((obs_t, act_t), dim=-1))
        self.delta_normalizer.update(next_t - obs_t)

    @torch.no_grad()
    def select_elites(self, val_loss: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mark the ``num_elites`` members with the lowest ``val_loss`` (``[K]``; non-finite counts
        as worst) as elites and return their sorted indices (LongTensor ``[num_elites]``)."""
        loss = torch.as_tensor(np.asarray(val_loss, dtype=np.float64))
        if loss.shape != (self._ensemble_size,):
            raise ValueError(f"val_loss must have shape [{self._ensemble_size}]")
        loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf))
        best = torch.argsort(loss, stable=True)[: self._num_elites]
        self.elite_indices = best
        return self.elite_indices

    # ------------------------------------------------------------------ member subsets
    def _as_member_index(self, indices: IndexLike) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).flatten()
        if idx.numel() == 0:
            raise ValueError("member indices must not be empty")
        if int(idx.min()) < 0 or int(idx.max()) >= self._ensemble_size:
            raise ValueError(f"member indices must be in [0, {self._ensemble_size}), got {idx}")
        if idx.unique().numel() != idx.numel():
            raise ValueError(f"member indices must be distinct, got {idx.tolist()}")
        return idx

    @torch.no_grad()
    def member_state(self, indices: IndexLike) -> dict[str, torch.Tensor]:
        """State of a subset of members, e.g. to fit them in another process.

        Args:
            indices: ``M`` distinct member indices.

        Returns:
            ``state_dict``-style dict of copies: member-axis tensors (see :meth:`member_keys`)
            sliced to ``M x ...`` in the order of ``indices``; shared tensors (normalisers,
            log-variance bounds) copied whole. ``elite_mask`` is omitted (elites are chosen by
            the owner of the whole ensemble, see :meth:`select_elites`). Loading it into a
            ``DynamicsEnsemble`` of size ``M`` with ``load_member_state(range(M), state)`` gives a
            stand-alone copy of those members.
        """
        idx = self._as_member_index(indices)
        member_keys = set(self._member_keys)
        state: dict[str, torch.Tensor] = {}
        for name, tensor in self.state_dict().items():
            if name == "elite_mask":
                continue
            if name in member_keys:
                state[name] = tensor[idx.to(tensor.device)].clone()
            else:
                state[name] = tensor.clone()
        return state

    @torch.no_grad()
    def subset(self, indices: IndexLike) -> DynamicsEnsemble:
        """A stand-alone copy of members ``indices`` (``M`` distinct indices, in that order):
        an ensemble of ``M`` members of the same architecture, dtype and device, with copies of
        their weights and of the shared tensors (normalisers, log-variance bounds); all ``M``
        are elite. Changes to it do not touch ``self`` (write back with
        :meth:`load_member_state`)."""
        idx = self._as_member_index(indices)
        ref = self.input_normalizer.mean
        with torch.random.fork_rng(devices=[]):  # its throw-away initial weights draw from
            sub = DynamicsEnsemble(**self._arch, ensemble_size=idx.numel())  # a copy of the RNG
        sub.to(ref.device, ref.dtype).load_member_state(range(idx.numel()), self.member_state(idx))
        return sub

    @torch.no_grad()
    def load_member_state(
        self, indices: IndexLike, state: dict[str, torch.Tensor], *, load_shared: bool = True
    ) -> None:
        """Write a :meth:`member_state` dict into members ``indices`` (``M`` distinct indices).

        Member-axis tensors ``M x ...`` go to the given members (``state`` row ``i`` -> member
        ``indices[i]``); other members are untouched. If ``load_shared``, shared tensors
        (normalisers, log-variance bounds) are overwritten by the ones in ``state``: they affect
        every member, so the caller should make sure all members were fitted against the same
        normaliser statistics.
        """
        idx = self._as_member_index(indices)
        member_keys = set(self._member_keys)
        targets = dict(self.named_parameters()) | dict(self.named_buffers())
        expected = {name for name in targets if name != "elite_mask"}
        missing = expected - state.keys()
        unexpected = state.keys() - expected
        if missing or unexpected:
            raise KeyError(
                f"member state mismatch: missing={sorted(missing)}, unexpected={sorted(unexpected)}"
            )
        for name in sorted(expected):
            target, src = targets[name], state[name]
            if name in member_keys:
                want = (idx.numel(), *target.shape[1:])
                if tuple(src.shape) != want:
                    raise ValueError(f"{name}: expected shape {want}, got {tuple(src.shape)}")
            elif tuple(src.shape) != tuple(target.shape):
                raise ValueError(
                    f"{name}: expected shape {tuple(target.shape)}, got {tuple(src.shape)}"
                )
        for name in expected:
            target, src = targets[name], state[name]
            src = src.to(device=target.device, dtype=target.dtype)
            if name in member_keys:
                target[idx.to(target.device)] = src
            elif load_shared:
                target.copy_(src)

    def extra_repr(self) -> str:
        return (
            f"obs_dim={self._obs_dim}, act_dim={self._act_dim}, K={self._ensemble_size}, "
            f"probabilistic={self._probabilistic}, num_elites={self._num_elites}"
        )
