"""InvertedPendulum-v5: the paper's settings (horizon 200), a DEFAULT for minutes-long runs on
two cores (real episodes of 1,000 steps as in the MBPO/SAC benchmarks, 100-step imagined
rollouts), and a tiny smoke variant."""

from tune_configs.common import SMOKE_SETTINGS

ENV = "InvertedPendulum-v5"

# real env steps after which a run stops, per variant
STOP_TIMESTEPS = dict(default=30_000, paper=20_000, smoke=200)

# MBMPOConfig defaults are the paper's: K=5 (512, 512) models, 20 tasks x 50 rollouts,
# 30 meta steps per iteration, alpha 0.001, TRPO delta 0.01, 5,000 random then 4,000 real steps.
PAPER = dict(horizon=200)

# Pendulum's DEFAULT sizes; the pole falls within tens of steps of a bad policy, so 100 imagined
# steps (imagined_horizon) carry the whole learning signal at a tenth of a 1,000-step rollout.
DEFAULT = dict(
    horizon=1000,
    imagined_horizon=100,
    initial_random_steps=1000,
    real_steps_per_iter=1000,
    ensemble_size=5,
    model_hidden_sizes=(128, 128),
    num_tasks=10,
    rollouts_per_task=20,
    meta_steps_per_iter=15,
    inner_lr=0.001,
    max_kl=0.02,
    eval_episodes_per_iter=5,
)

SMOKE = dict(SMOKE_SETTINGS)
