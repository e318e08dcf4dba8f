"""Swimmer-v5 with MBPO (horizon 1000). Not in the reference code or mbrl-lib: their shared
settings (MBPOConfig's defaults: G = 20, k = 1)."""

from tune_configs.mbpo_common import MBPO_SMOKE_SETTINGS

ENV = "Swimmer-v5"

STOP_TIMESTEPS = dict(default=100_000, paper=100_000, smoke=150)

PAPER = dict(updates_per_step=20, rollout_schedule=(20, 100, 1, 1))

DEFAULT = dict(PAPER)

SMOKE = dict(MBPO_SMOKE_SETTINGS)
