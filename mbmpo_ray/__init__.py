"""mbmpo-ray: Model-Based Meta-Policy Optimization (Clavera et al. 2018) on Ray RLlib.

``from mbmpo_ray import MBMPO, MBMPOConfig`` (or ``MBPO, MBPOConfig``) loads the RLlib
algorithm. ``import mbmpo_ray`` alone does not import Ray (the maths in ``mbmpo_ray.meta``,
``.models``, ``.imagination``, ``.envs`` and ``.buffer`` stays fast to import and test); the
algorithms are registered with Tune ("MBMPO", "MBPO") as soon as RLlib is imported, before or
after this package (Tune imports RLlib itself when it looks up a trainable name it does not
know, so ``tune.Tuner("MBMPO")`` works after ``import mbmpo_ray``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"
__all__ = ["MBMPO", "MBMPOConfig", "MBPO", "MBPOConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("mbmpo_ray.algorithm"), name)
    raise AttributeError(f"module 'mbmpo_ray' has no attribute {name!r}")


class _RegisterWhenTuneLoads(importlib.abc.MetaPathFinder):
    """Registers the algorithms with Tune right after ``ray.rllib`` finishes importing."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "ray.rllib":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            importlib.import_module("mbmpo_ray.algorithm")

        spec.loader.exec_module = exec_then_register
        return spec


if "ray.rllib" in sys.modules:
    importlib.import_module("mbmpo_ray.algorithm")
elif not any(isinstance(f, _RegisterWhenTuneLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTuneLoads())
