"""HalfCheetah-v5 with MBPO (horizon 1000).

PAPER: the reference code's settings (jannerm/mbpo, examples/config/halfcheetah/0.py): G = 40,
k = 1 (schedule (20, 150, 1, 1)), target entropy -3 (= -|A| / 2; RLlib's 'auto' would be -6),
400 rollouts per real step (100k per refit), 1 epoch of model data, 7 members / 5 elites,
real_ratio 0.05, SAC 256 x 256, 400 epochs. MBPOConfig's defaults are these except G (20: the
reference's value for the other envs) and the target entropy.
MBRL_LIB: mbrl-lib's (after its 2022 SAC switch): G = 10, SAC hidden 512, target entropy -1,
early stopping on the raw-delta validation MSE of a fresh holdout split per refit.
"""

from tune_configs.mbpo_common import MBPO_SMOKE_SETTINGS

ENV = "HalfCheetah-v5"

STOP_TIMESTEPS = dict(default=100_000, paper=400_000, mbrl_lib=400_000, smoke=150)

PAPER = dict(updates_per_step=40, rollout_schedule=(20, 150, 1, 1), target_entropy=-3.0)

MBRL_LIB = dict(updates_per_step=10, rollout_schedule=(20, 100, 1, 1),
                sac_hidden_sizes=(512, 512), target_entropy=-1.0, model_val_space="raw",
                model_holdout_split="per_fit")

DEFAULT = dict(PAPER)

SMOKE = dict(MBPO_SMOKE_SETTINGS)
