"""MB-MPO's RLlib glue: its config, Algorithm, meta Learner and RLModule."""

from mbmpo_ray.algorithm.mbmpo.algorithm import MBMPO
from mbmpo_ray.algorithm.mbmpo.config import MBMPOConfig

__all__ = ["MBMPO", "MBMPOConfig"]
