"""RLlib glue: the MBMPO Algorithm, its config, RLModule, Learner and model-trainer actors."""

from mbmpo_ray.algorithm.config import MBMPOConfig
from mbmpo_ray.algorithm.mbmpo import MBMPO

__all__ = ["MBMPO", "MBMPOConfig"]
