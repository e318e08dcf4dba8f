"""Pendulum-v1: learns in minutes on two cores (the README's first command)."""

from tune_configs.common import SMOKE_SETTINGS

ENV = "Pendulum-v1"

# real env steps after which a run stops, per variant
STOP_TIMESTEPS = dict(default=10_000, paper=100_000, smoke=200)

PAPER = dict(horizon=200)

DEFAULT = dict(
    horizon=200,
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
