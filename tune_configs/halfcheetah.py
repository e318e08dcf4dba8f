"""HalfCheetah-v5: the paper's settings (horizon 200), a cheaper fit of them and a tiny smoke
variant."""

from tune_configs.common import SMOKE_SETTINGS, TWO_CORE_SPLIT

ENV = "HalfCheetah-v5"

# real env steps after which a run stops, per variant
STOP_TIMESTEPS = dict(paper=100_000, fast=100_000, smoke=200)

# MBMPOConfig defaults are the paper's: K=5 (512, 512) models, 20 tasks x 50 rollouts,
# 30 meta steps per iteration, alpha 0.001, TRPO delta 0.01, 5,000 random then 4,000 real steps.
PAPER = dict(horizon=200, **TWO_CORE_SPLIT)

# PAPER with the model fit of BENCHMARKS.md's v4 run: a budget of 400 gradient steps per refit
# (a quarter of each batch from the newest data) instead of full epochs, and the first-order
# Hessian-vector product in TRPO. About half the time per iteration on two cores (v4: 144 s,
# flat; the full fit: 230-330 s, growing with the data) for a weaker model late in the run
# (v4: 372 at 101k real steps against 522 with the full fit, one seed each). For the long
# Tune sweeps (model bias), where both arms of a comparison run it alike.
FAST = dict(PAPER, model_fit_steps=400, model_check_steps=40, model_new_data_fraction=0.25,
            hvp_method="first_order")

SMOKE = dict(SMOKE_SETTINGS)
