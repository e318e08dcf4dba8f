"""mbmpo-ray: Model-Based Meta-Policy Optimization (Clavera et al. 2018) on Ray RLlib.

``import mbmpo_ray`` registers the algorithm with Tune as ``"MBMPO"``.
"""

from mbmpo_ray.algorithm import MBMPO, MBMPOConfig

__version__ = "0.1.0"
__all__ = ["MBMPO", "MBMPOConfig"]


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("MBMPO", MBMPO)


_register()
