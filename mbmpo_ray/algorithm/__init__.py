"""RLlib glue shared by the algorithms (real sampling, ensemble fitting) and the algorithms
themselves. Importing it registers them with Tune ("MBMPO")."""

from ray.tune.registry import register_trainable

from mbmpo_ray.algorithm.mbmpo import MBMPO, MBMPOConfig

register_trainable("MBMPO", MBMPO)

__all__ = ["MBMPO", "MBMPOConfig"]
