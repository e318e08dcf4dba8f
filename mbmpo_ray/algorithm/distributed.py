"""The collectives of a multi-learner update (``.learners(num_learners=N > 1)``).

RLlib's LearnerGroup starts N learner actors in one ``torch.distributed`` process group (Ray
Train's torch backend: gloo on CPUs, NCCL on GPUs). Neither algorithm lets RLlib wrap its
module in DDP: MB-MPO's meta step reduces its own vectors (:mod:`mbmpo_ray.meta.hooks`) and
MBPO's SAC update takes ``torch.autograd.grad`` instead of ``loss.backward()``, so both reduce
explicitly with the helpers here. With one learner every helper is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world_size(num_learners: int) -> tuple[int, int]:
    """This learner's rank and the number of learners in its process group (``(0, 1)`` for a
    single learner or when no process group exists)."""
    if num_learners > 1 and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_(tensors: list[torch.Tensor], world_size: int) -> None:
    """Replace ``tensors`` (same dtype and device) in place by their mean over the learners:
    one flat buffer, one ``all_reduce``."""
    if world_size <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def all_gather_rows(rows: dict[str, torch.Tensor], world_size: int
                    ) -> dict[str, torch.Tensor]:
    """Every learner's ``rows`` (equal keys, trailing shapes and dtypes; any number of rows
    each), concatenated in rank order, on every learner."""
    if world_size <= 1:
        return rows
    some = next(iter(rows.values()))
    n = torch.tensor([some.shape[0]], dtype=torch.int64, device=some.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    most = max(sizes)
    out = {}
    for key, value in rows.items():
        pad = value.new_zeros((most, *value.shape[1:]))
        pad[: value.shape[0]] = value
        parts = [torch.empty_like(pad) for _ in range(world_size)]
        dist.all_gather(parts, pad.contiguous())
        out[key] = torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])
    return out


def all_sum(values: list[float], world_size: int) -> list[float]:
    """``values`` summed over the learners (a few host numbers, e.g. counts)."""
    if world_size <= 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()
