"""Walker2d-v5 with MBPO (horizon 1000).

PAPER: the reference code's settings (jannerm/mbpo, examples/config/walker2d/0.py): G = 20,
k = 1 (schedule (20, 150, 1, 1)), target entropy -3 (RLlib's 'auto' would be -6), 300 epochs;
the rest are MBPOConfig's defaults.
MBRL_LIB: mbrl-lib's: G = 20, SAC hidden 1024.
"""

from tune_configs.mbpo_common import MBPO_SMOKE_SETTINGS

ENV = "Walker2d-v5"

STOP_TIMESTEPS = dict(default=100_000, paper=300_000, mbrl_lib=300_000, smoke=150)

PAPER = dict(updates_per_step=20, rollout_schedule=(20, 150, 1, 1), target_entropy=-3.0)

MBRL_LIB = dict(updates_per_step=20, rollout_schedule=(20, 100, 1, 1),
                sac_hidden_sizes=(1024, 1024))

DEFAULT = dict(PAPER)

SMOKE = dict(MBPO_SMOKE_SETTINGS)
