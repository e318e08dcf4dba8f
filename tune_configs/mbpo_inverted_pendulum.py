"""InvertedPendulum-v5 with MBPO (horizon 1000, the env's default).

Follows mbrl-lib's MBPO InvertedPendulum settings where it has them (250-step epochs,
G = 10, k = 1 throughout: schedule (1, 15, 1, 1)); fewer random steps (500 instead of
mbrl-lib's 5,000, which alone would use the learning test's whole budget of 5,000 steps) and
SAC nets of 128 units (a 4-dim task) keep a run within minutes on two cores.
"""

from tune_configs.mbpo_common import MBPO_SMOKE_SETTINGS

ENV = "InvertedPendulum-v5"

STOP_TIMESTEPS = dict(default=5000, paper=15_000, smoke=150)

PAPER = dict(  # mbrl-lib's mbpo/inverted_pendulum values
    epoch_length=250,
    model_train_freq=250,
    rollout_schedule=(1, 15, 1, 1),
    updates_per_step=10,
)

DEFAULT = dict(
    PAPER,
    initial_random_steps=500,
    env_steps_per_block=10,
    rollouts_per_step=100,
    sac_hidden_sizes=(128, 128),
    eval_episodes_per_iter=3,
)

SMOKE = dict(MBPO_SMOKE_SETTINGS)
