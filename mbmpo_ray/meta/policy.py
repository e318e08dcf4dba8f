"""Functional diagonal-Gaussian MLP policy with explicit, optionally task-batched parameters.

The policy object only describes the architecture. Parameters live in a plain ordered
``dict[str, Tensor]`` so that MAML-style inner updates (Clavera et al. 2018, Eq. 3/4;
Finn et al. 2017) can build ``theta'_t = theta + alpha * grad`` as ordinary differentiable
tensors without touching ``nn.Module`` state.

Task batching: with ``batched=True`` every parameter carries a leading task axis ``T`` and
observations are ``T x ... x D``. The forward pass then runs ``T`` different policies in one
tensor program via broadcast matmuls (``T x M x in @ T x in x out``), without a Python loop
over tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "elu": torch.nn.functional.elu,
}

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMLPPolicy:
    """Gaussian policy ``pi(a|s) = N(mu_theta(s), diag(exp(log_std)^2))``.

    ``mu_theta`` is an MLP with ``hidden_sizes`` hidden layers and a linear output layer; the
    log standard deviation is a learned, state-independent vector (as in rllab / the MB-MPO
    reference implementation).

    Args:
        obs_dim: observation size ``D`` (including any ignored leading entries).
        act_dim: action size ``A``.
        hidden_sizes: hidden layer widths, default ``(32, 32)``.
        activation: ``"tanh"`` (default), ``"relu"`` or ``"elu"``.
        init_log_std: initial value of every log-std entry, default ``0.0`` (std 1).
        obs_start: the policy ignores ``obs[..., :obs_start]`` (e.g. an unbounded x position
            that is kept in the observation only for the reward function). Default ``0``.
        output_scale: multiplier applied to the Xavier-initialised output layer so the initial
            mean action is close to zero; default ``0.01``.

    Parameter names, in order: ``w0, b0, ..., w{L}, b{L}, log_std`` where ``wi`` has shape
    ``in x out`` (so the forward pass is ``x @ w + b``).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "tanh",
        init_log_std: float = 0.0,
        obs_start: int = 0,
        output_scale: float = 0.01,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)}"
            )
        if not 0 <= obs_start < obs_dim:
            raise ValueError(f"obs_start must be in [0, obs_dim={obs_dim}), got {obs_start}")
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.activation = activation
        self.init_log_std = float(init_log_std)
        self.obs_start = int(obs_start)
        self.output_scale = float(output_scale)
        sizes = [self.obs_dim - self.obs_start, *self.hidden_sizes, self.act_dim]
        self.num_layers = len(sizes) - 1
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self.num_layers):
            shapes[f"w{i}"] = (sizes[i], sizes[i + 1])
            shapes[f"b{i}"] = (sizes[i + 1],)
        shapes["log_std"] = (self.act_dim,)
        self.param_shapes: dict[str, tuple[int, ...]] = shapes
        self.param_names: list[str] = list(shapes)
        self.num_params: int = sum(math.prod(s) for s in shapes.values())

    # ------------------------------------------------------------------ parameters
    def init_params(
        self,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, Tensor]:
        """Fresh parameters: Xavier-uniform weights, zero biases, ``log_std = init_log_std``.

        The output layer is additionally scaled by ``output_scale``. Returns an ordered dict of
        leaf tensors (``requires_grad=False``; callers decide what to differentiate).
        """
        params: dict[str, Tensor] = {}
        for i in range(self.num_layers):
            fan_in, fan_out = self.param_shapes[f"w{i}"]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = (torch.rand(fan_in, fan_out, generator=generator, dtype=dtype) * 2 - 1) * bound
            if i == self.num_layers - 1:
                w = w * self.output_scale
            params[f"w{i}"] = w
            params[f"b{i}"] = torch.zeros(fan_out, dtype=dtype)
        params["log_std"] = torch.full((self.act_dim,), self.init_log_std, dtype=dtype)
        return params

    def flatten(self, params: dict[str, Tensor], batched: bool = False) -> Tensor:
        """Concatenate params (in ``param_names`` order) into a vector.

        Returns a 1-D vector of length ``num_params``, or ``T x num_params`` when ``batched``.
        """
        if batched:
            num_tasks = params[self.param_names[0]].shape[0]
            return torch.cat([params[k].reshape(num_tasks, -1) for k in self.param_names], dim=1)
        return torch.cat([params[k].reshape(-1) for k in self.param_names])

    def unflatten(self, vec: Tensor, batched: bool = False) -> dict[str, Tensor]:
        """Inverse of :meth:`flatten`: split ``num_params`` (or ``T x num_params``) into a dict.

        The returned tensors are views of ``vec``, so gradients flow back to it.
        """
        expected_dim = 2 if batched else 1
        if vec.dim() != expected_dim or vec.shape[-1] != self.num_params:
            raise ValueError(
                f"expected a {expected_dim}-D tensor with last dim {self.num_params}, "
                f"got {tuple(vec.shape)}"
            )
        lead = tuple(vec.shape[:-1])
        out: dict[str, Tensor] = {}
        offset = 0
        for k in self.param_names:
            shape = self.param_shapes[k]
            n = math.prod(shape)
            out[k] = vec[..., offset : offset + n].reshape(*lead, *shape)
            offset += n
        return out

    def expand_params(self, params: dict[str, Tensor], num_tasks: int) -> dict[str, Tensor]:
        """Broadcast unbatched params to a leading task axis ``T = num_tasks``.

        Uses ``p.unsqueeze(0).expand(T, ...)``: a non-leaf view that shares storage with (and
        stays differentiable w.r.t.) ``params``.
        """
        return {k: p.unsqueeze(0).expand(num_tasks, *p.shape) for k, p in params.items()}

    # ------------------------------------------------------------------ forward
    def mean_and_log_std(
        self, params: dict[str, Tensor], obs: Tensor, batched: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Mean action and log standard deviation.

        Args:
            params: unbatched params, or with ``batched=True`` params with a leading task axis.
            obs: ``... x D`` (unbatched) or ``T x ... x D`` (batched).
            batched: whether params/obs carry a leading task axis ``T``.

        Returns:
            ``(mean, log_std)``, both of shape ``obs.shape[:-1] + (A,)`` (log_std is an expanded
            view of the state-independent vector).
        """
        act = _ACTIVATIONS[self.activation]
        x = obs[..., self.obs_start :] if self.obs_start else obs
        if batched:
            num_tasks = x.shape[0]
            if params["log_std"].dim() != 2 or params["log_std"].shape[0] != num_tasks:
                raise ValueError(
                    f"batched params must have a task axis of size {num_tasks} (obs.shape[0]), "
                    f"got log_std of shape {tuple(params['log_std'].shape)}"
                )
            middle = x.shape[1:-1]
            h = x.reshape(num_tasks, -1, x.shape[-1])  # T x M x D
            for i in range(self.num_layers):
                h = torch.baddbmm(params[f"b{i}"].unsqueeze(1), h, params[f"w{i}"])
                if i < self.num_layers - 1:
                    h = act(h)
            mean = h.reshape(num_tasks, *middle, self.act_dim)
            log_std = params["log_std"].reshape(num_tasks, *([1] * len(middle)), self.act_dim)
        else:
            h = x
            for i in range(self.num_layers):
                h = h @ params[f"w{i}"] + params[f"b{i}"]
                if i < self.num_layers - 1:
                    h = act(h)
            mean = h
            log_std = params["log_std"]
        return mean, log_std.expand_as(mean)

    def log_prob(
        self, params: dict[str, Tensor], obs: Tensor, act: Tensor, batched: bool = False
    ) -> Tensor:
        """Log-density of ``act`` (shape ``obs.shape[:-1] + (A,)``); returns ``obs.shape[:-1]``.

        ``log N(a; mu, sigma) = -1/2 sum_i [((a_i - mu_i)/sigma_i)^2 + 2 log sigma_i + log 2pi]``.
        """
        mean, log_std = self.mean_and_log_std(params, obs, batched)
        z = (act - mean) * torch.exp(-log_std)
        return -0.5 * (z.pow(2) + 2.0 * log_std + _LOG_2PI).sum(-1)

    def sample(
        self,
        params: dict[str, Tensor],
        obs: Tensor,
        generator: torch.Generator | None = None,
        batched: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``a = mu + sigma * eps`` (unclipped) and its log-prob.

        Returns ``(act, log_prob)`` with shapes ``obs.shape[:-1] + (A,)`` and ``obs.shape[:-1]``.
        """
        mean, log_std = self.mean_and_log_std(params, obs, batched)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        act = mean + torch.exp(log_std) * eps
        logp = -0.5 * (eps.pow(2) + 2.0 * log_std + _LOG_2PI).sum(-1)
        return act, logp

    def entropy(self, params: dict[str, Tensor], batched: bool = False) -> Tensor:
        """Differential entropy ``sum_i (log sigma_i + 1/2 log(2 pi e))``.

        State independent: a scalar, or a length-``T`` vector when ``batched``.
        """
        return (params["log_std"] + 0.5 * (_LOG_2PI + 1.0)).sum(-1)

    def kl(
        self,
        params_old: dict[str, Tensor],
        params_new: dict[str, Tensor],
        obs: Tensor,
        batched: bool = False,
    ) -> Tensor:
        """Analytic ``KL(pi_old(.|s) || pi_new(.|s))`` for diagonal Gaussians, per state.

        ``sum_i [log s_new/s_old + (s_old^2 + (mu_old - mu_new)^2) / (2 s_new^2) - 1/2]``.
        Returns ``obs.shape[:-1]``.
        """
        mu0, ls0 = self.mean_and_log_std(params_old, obs, batched)
        mu1, ls1 = self.mean_and_log_std(params_new, obs, batched)
        var_ratio = torch.exp(2.0 * (ls0 - ls1))
        mean_term = (mu0 - mu1).pow(2) * torch.exp(-2.0 * ls1)
        return (ls1 - ls0 + 0.5 * (var_ratio + mean_term) - 0.5).sum(-1)

    def deterministic_action(
        self, params: dict[str, Tensor], obs: Tensor, batched: bool = False
    ) -> Tensor:
        """Mean action ``mu_theta(obs)`` (for evaluation), shape ``obs.shape[:-1] + (A,)``."""
        return self.mean_and_log_std(params, obs, batched)[0]
