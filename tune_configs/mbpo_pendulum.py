"""Pendulum-v1 (horizon 200) with MBPO: not in the reference code; settings that solve it within
4,000 real steps on two cores (the learning test, tests/learning/test_mbpo_learning.py)."""

from tune_configs.mbpo_common import MBPO_SMOKE_SETTINGS

ENV = "Pendulum-v1"

# real env steps after which a run stops, per variant
STOP_TIMESTEPS = dict(default=4000, smoke=150)

DEFAULT = dict(
    horizon=200,
    initial_random_steps=1000,   # 5 random episodes (the reference's 5,000 is 25 episodes)
    model_train_freq=250,        # reference
    env_steps_per_block=10,
    rollouts_per_step=100,       # 25k start states per refit (reference: 400 -> 100k)
    rollout_schedule=(20, 100, 1, 1),
    updates_per_step=10,         # G; mbrl-lib's InvertedPendulum/HalfCheetah value
    sac_hidden_sizes=(128, 128),  # smaller than the reference's 256 (a 3-dim task)
    eval_episodes_per_iter=3,
)

SMOKE = dict(MBPO_SMOKE_SETTINGS)
