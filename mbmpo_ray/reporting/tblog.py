"""TensorBoard events of every numeric ``train()`` result, as Tune writes them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mbmpo_ray.reporting.columns import finite


class TensorBoardWriter:
    """Every numeric result as a TensorBoard scalar, with Tune's tags (``ray/tune/<key>``) and
    step (the iteration), so ``tensorboard --logdir runs`` shows ``train`` and ``tune`` runs
    alike. Does nothing without tensorboardX (installed with ``ray[tune]``)."""

    SKIP = ("config", "pid", "timestamp", "time_total_s", "training_iteration", "date",
            "hostname", "node_ip", "trial_id", "done")

    def __init__(self, logdir: str | Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            self._writer = None
            return
        self._writer = SummaryWriter(str(logdir), flush_secs=30)

    @property
    def active(self) -> bool:
        """Whether events are written (tensorboardX is installed)."""
        return self._writer is not None

    def write(self, result: dict[str, Any]) -> None:
        if self._writer is None:
            return
        step = int(result.get("training_iteration") or 0)
        for key, value in flatten({k: v for k, v in result.items() if k not in self.SKIP}):
            f = finite(value) if not isinstance(value, bool) else None
            if f is not None:
                self._writer.add_scalar(f"ray/tune/{key}", f, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def flatten(d: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``(a/b/c, value)`` pairs of a nested dict, as Tune flattens results."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v
