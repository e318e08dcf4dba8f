"""Hopper-v5 with MBPO (horizon 1000).

PAPER: the reference code's settings (jannerm/mbpo, examples/config/hopper/0.py): G = 20,
k from 1 to 15 over epochs 20-150 (schedule (20, 150, 1, 15)), target entropy -1 (RLlib's
'auto' would be -3), 125 epochs; the rest are MBPOConfig's defaults (the reference's shared
values).
MBRL_LIB: mbrl-lib's: G = 40, k 1 -> 15 over epochs 20-150 (its fixed alpha 0.2 is not
reproduced: RLlib's SAC tunes alpha automatically).
"""

from tune_configs.mbpo_common import MBPO_SMOKE_SETTINGS

ENV = "Hopper-v5"

STOP_TIMESTEPS = dict(default=100_000, paper=125_000, mbrl_lib=125_000, smoke=150)

PAPER = dict(updates_per_step=20, rollout_schedule=(20, 150, 1, 15), target_entropy=-1.0)

MBRL_LIB = dict(updates_per_step=40, rollout_schedule=(20, 150, 1, 15))

DEFAULT = dict(PAPER)

SMOKE = dict(MBPO_SMOKE_SETTINGS)
