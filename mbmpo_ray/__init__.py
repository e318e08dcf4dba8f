"""mbmpo-ray: Model-Based Meta-Policy Optimization (Clavera et al. 2018) on Ray RLlib.

``from mbmpo_ray import MBMPO, MBMPOConfig`` loads the RLlib algorithm. ``import mbmpo_ray``
alone does not import Ray (the maths in ``mbmpo_ray.meta``, ``.models``, ``.imagination``,
``.envs`` and ``.buffer`` stays fast to import and test); the algorithms are registered with
Tune ("MBMPO") as soon as Ray Tune is imported, before or after this package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"
__all__ = ["MBMPO", "MBMPOConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("mbmpo_ray.algorithm"), name)
    raise AttributeError(f"module 'mbmpo_ray' has no attribute {name!r}")


class _RegisterWhenTuneLoads(importlib.abc.MetaPathFinder):
    """Registers the algorithms with Tune right after ``ray.tune`` finishes importing."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "ray.tune":
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


if "ray.tune" in sys.modules:
    importlib.import_module("mbmpo_ray.algorithm")
elif not any(isinstance(f, _RegisterWhenTuneLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTuneLoads())
