"""Ant-v5 with MBPO (horizon 1000).

PAPER: the reference code's settings (jannerm/mbpo, examples/config/ant/0.py): G = 20, k from 1
to 25 over epochs 20-100 (schedule (20, 100, 1, 25)), target entropy -4 (RLlib's 'auto' would
be -8), 300 epochs; the rest are MBPOConfig's defaults. The model buffer grows with k (one
epoch of rollouts: up to 10M rows at k = 25).
"""

from tune_configs.mbpo_common import MBPO_SMOKE_SETTINGS

ENV = "Ant-v5"

STOP_TIMESTEPS = dict(default=100_000, paper=300_000, smoke=150)

PAPER = dict(updates_per_step=20, rollout_schedule=(20, 100, 1, 25), target_entropy=-4.0)

DEFAULT = dict(PAPER)

SMOKE = dict(MBPO_SMOKE_SETTINGS)
