"""HalfCheetah-v5: the paper's settings (horizon 200) and a tiny smoke variant."""

from tune_configs.common import SMOKE_SETTINGS, TWO_CORE_SPLIT

ENV = "HalfCheetah-v5"

# real env steps after which a run stops, per variant
STOP_TIMESTEPS = dict(paper=100_000, smoke=200)

# MBMPOConfig defaults are the paper's: K=5 (512, 512) models, 20 tasks x 50 rollouts,
# 30 meta steps per iteration, alpha 0.001, TRPO delta 0.01, 5,000 random then 4,000 real steps.
PAPER = dict(horizon=200, **TWO_CORE_SPLIT)

SMOKE = dict(SMOKE_SETTINGS)
