"""Ray's start-up noise, silenced for ``mbmpo-ray`` unless ``--verbose``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

#: (logger, message fragment): what Ray prints before the first iteration that a user of this
#: CLI can do nothing about. ``--verbose`` keeps them.
RAY_NOISE = (
    ("ray.rllib.algorithms.algorithm_config", "on the new API stack"),
    ("ray.rllib.algorithms.sac.sac", "running SAC on the new API stack"),  # MBPO's config
    ("ray._private.authentication.authentication_token_setup",
     "Token authentication is enabled for this Ray cluster"),
    ("ray._common.deprecation", "RLModuleConfig"),  # RLlib's own RLModule constructor
    ("ray.tune.utils.util", "Install gputil"),
    ("ray._private.worker", "Started a local Ray instance"),
)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: Sequence[str]):
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


def quiet_ray(verbose: bool = False) -> dict[str, Any]:
    """Silence Ray's start-up noise in this process (a filter on the loggers that emit it).

    Returns the extra ``ray.init`` keyword arguments: without ``verbose``, INFO lines and the
    workers' output stay out of the driver's output (errors still reach it as exceptions).
    """
    if verbose:
        return {}
    for name, fragment in RAY_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and fragment in f.fragments
                   for f in logger.filters):
            logger.addFilter(_DropMessages([fragment]))
    warnings.filterwarnings("ignore", message=r".*RLModuleConfig.*")
    return {"log_to_driver": False, "logging_level": logging.WARNING}
