"""RLlib glue shared by the algorithms (real sampling, ensemble fitting) and the algorithms
themselves. Importing it registers them with Tune ("MBMPO", "MBPO")."""

from ray.tune.registry import register_trainable

from mbmpo_ray.algorithm.mbmpo import MBMPO, MBMPOConfig
from mbmpo_ray.algorithm.mbpo import MBPO, MBPOConfig

register_trainable("MBMPO", MBMPO)
register_trainable("MBPO", MBPO)

__all__ = ["MBMPO", "MBMPOConfig", "MBPO", "MBPOConfig"]
