"""MBPO's RLlib glue (Janner et al. 2019): its config, Algorithm, SAC Learner and RLModule."""

from mbmpo_ray.algorithm.mbpo.algorithm import MBPO
from mbmpo_ray.algorithm.mbpo.config import MBPOConfig

__all__ = ["MBPO", "MBPOConfig"]
