"""Tune sweeps over the three knobs the MB-MPO paper studies, each across seeds, and over MBPO's
(rollout length, real ratio, updates per step, ensemble size).

A sweep is a dict: ``config`` (env config name), ``variant``, ``grid`` (setting -> values),
``seeds`` (a count N for seeds 0 .. N-1, or a list of seeds), ``iterations`` (per trial),
``metric`` / ``mode`` for the results table and ASHA, ``algo`` ("mbmpo" if absent, or "mbpo").
``mbmpo-ray tune <name>`` runs one; :func:`mbmpo_ray.tuning.param_space` builds its Tune space.
"""

ALPHA = dict(
    config="halfcheetah",
    variant="paper",
    grid={"inner_lr": [0.0, 0.0005, 0.001, 0.005]},  # 0.0 is the ME-TRPO ablation
    seeds=3,
    iterations=25,
)

ENSEMBLE_SIZE = dict(
    config="halfcheetah",
    variant="paper",
    # num_tasks must stay a multiple of K: 4 tasks per model as in the paper
    grid={"ensemble_size": [1, 5, 10]},
    # (PAPER runs one model trainer per member)
    tied={"num_tasks": {"ensemble_size": 4}, "num_model_trainers": {"ensemble_size": 1}},
    seeds=3,
    iterations=25,
)

HORIZON = dict(
    config="halfcheetah",
    variant="paper",
    grid={"horizon": [100, 200, 1000]},
    seeds=3,
    iterations=25,
)

# The same three knobs on Pendulum-v1 (DEFAULT variant: minutes per trial on two cores), for the
# science runs of issue 13 (benchmarks/exp_sweeps.py reports them): 1,000 random + 5 x 1,000
# real steps per trial (MB-MPO passes -300 at ~2,000 here). Pendulum's DEFAULT has 2 tasks
# per model.
PENDULUM_ALPHA = dict(
    config="pendulum",
    variant="default",
    grid={"inner_lr": [0.0, 0.0005, 0.001, 0.005]},
    seeds=3,
    iterations=6,
)

PENDULUM_ENSEMBLE_SIZE = dict(
    config="pendulum",
    variant="default",
    grid={"ensemble_size": [1, 5, 10]},
    tied={"num_tasks": {"ensemble_size": 2}},
    seeds=3,
    iterations=6,
)

PENDULUM_HORIZON = dict(
    config="pendulum",
    variant="default",
    grid={"horizon": [100, 200, 1000]},
    seeds=3,
    iterations=6,
)

# The paper's other two claims (issue 13), as joint points of settings:
# robustness to model bias: member k's imagined next states + N(b_k, 0.1^2), b_k ~ U[0, b_max];
# MB-MPO (alpha 0.001) against its alpha = 0 ablation (ME-TRPO-like) at the same real steps
def _bias_grid(b_maxes: tuple[float, ...]) -> dict:
    return {"mbmpo_point": [dict(inner_lr=alpha, model_bias_max=b_max)
                            for b_max in b_maxes for alpha in (0.0, 0.001)]}


# (12 trials: FAST halves PAPER's ~300 s per iteration here; 8 iterations = 37k real steps, where
# the v4 run with these settings was at 275, ~4 h on two cores)
MODEL_BIAS = dict(
    config="halfcheetah",
    variant="fast",
    grid=_bias_grid((0.0, 0.5, 1.0)),
    seeds=2,
    iterations=8,
)

# ... and the same 12 trials in parts that each fit in a session on a machine that keeps no
# Tune state between sessions: each part writes its CSVs beside the others' (``report_as``),
# and ``exp_sweeps.py`` reports them together as ``model_bias``. b_max = 0 ran as one part of
# 4 trials (one at a time, ~12 min each on an idle AVX512-BF16 EPYC; ~20 min expected on the
# AVX2 one, from FAST's ~150 s per iteration there);
# the others run one seed per part (2 trials)
MODEL_BIAS_PARTS = {
    "model_bias_b0": dict(MODEL_BIAS, grid=_bias_grid((0.0,)), report_as="model_bias"),
    **{f"model_bias_b{b_max:g}_seed{seed}": dict(MODEL_BIAS, grid=_bias_grid((b_max,)),
                                                 seeds=[seed], report_as="model_bias")
       for b_max in (0.5, 1.0) for seed in (0, 1)},
}

# adaptation on long horizons: 1000-step real episodes, 500-step imagined rollouts (as the
# original code), MB-MPO against alpha = 0
LONG_HORIZON = dict(
    config="halfcheetah",
    variant="paper",
    grid={"mbmpo_point": [dict(inner_lr=alpha, horizon=1000, imagined_horizon=500)
                          for alpha in (0.0, 0.001)]},
    seeds=2,
    iterations=12,
)

# the same comparison on Pendulum-v1 (minutes per trial)
PENDULUM_LONG_HORIZON = dict(
    config="pendulum",
    variant="default",
    grid={"mbmpo_point": [dict(inner_lr=alpha, horizon=1000, imagined_horizon=500)
                          for alpha in (0.0, 0.001)]},
    seeds=3,
    iterations=6,
)

# the model-bias comparison on Pendulum-v1 (minutes per trial). Its states (cos, sin in
# [-1, 1], angular velocity in [-8, 8]) move by a few hundredths per step, so HalfCheetah's
# biases of 0.5-1.0 per step sank both alphas at once (a first try at 0.5: -1,076 / -1,104);
# 0.1 and 0.25 sink them too (BENCHMARKS.md).
PENDULUM_MODEL_BIAS = dict(
    config="pendulum",
    variant="default",
    grid=_bias_grid((0.0, 0.1, 0.25)),
    seeds=3,
    iterations=6,
)

# ... and with biases small enough that the models stay usable (0.01-0.03 per step, about the
# size of a step's change of cos and sin): where adaptation could make a difference
PENDULUM_MODEL_BIAS_SMALL = dict(
    config="pendulum",
    variant="default",
    grid=_bias_grid((0.01, 0.03)),
    seeds=3,
    iterations=6,
)

# Two trials x two iterations of a tiny Pendulum run: for tests and trying the cluster path.
SMOKE = dict(
    config="pendulum",
    variant="smoke",
    grid={"inner_lr": [0.0, 0.001]},
    seeds=1,
    iterations=2,
)

# ----------------------------------------------------------------------------- MBPO
# ``algo="mbpo"``: the config is ``tune_configs/mbpo_<config>.py``; one iteration is
# model_train_freq (250) real steps, so 400 iterations are 100k real steps.

MBPO_ROLLOUT_LENGTH = dict(
    algo="mbpo",
    config="hopper",
    variant="paper",
    # fixed k = 1, 5, 15 and the reference's schedule (k 1 -> 15 over epochs 20-100)
    grid={"rollout_schedule": [(0, 0, 1, 1), (0, 0, 5, 5), (0, 0, 15, 15), (20, 100, 1, 15)]},
    seeds=3,
    iterations=400,
)

MBPO_REAL_RATIO = dict(
    algo="mbpo",
    config="halfcheetah",
    variant="paper",
    grid={"real_ratio": [0.0, 0.05, 0.2, 0.5, 1.0]},  # 1.0: SAC at G updates per step
    seeds=3,
    iterations=400,
)

MBPO_UPDATES_PER_STEP = dict(
    algo="mbpo",
    config="halfcheetah",
    variant="paper",
    grid={"updates_per_step": [1, 10, 20, 40]},
    seeds=3,
    iterations=400,
)

MBPO_ENSEMBLE_SIZE = dict(
    algo="mbpo",
    config="halfcheetah",
    variant="paper",
    # joint points: num_elites <= ensemble_size (the reference: 7 members, 5 elites)
    grid={"mbmpo_point": [dict(ensemble_size=1, num_elites=1),
                          dict(ensemble_size=3, num_elites=2),
                          dict(ensemble_size=7, num_elites=5),
                          dict(ensemble_size=10, num_elites=7)]},
    seeds=3,
    iterations=400,
)

# Two trials x two iterations of a tiny Pendulum MBPO run: for tests.
MBPO_SMOKE = dict(
    algo="mbpo",
    config="pendulum",
    variant="smoke",
    grid={"real_ratio": [0.05, 0.5]},
    seeds=1,
    iterations=2,
)

SWEEPS = {"alpha": ALPHA, "ensemble_size": ENSEMBLE_SIZE, "horizon": HORIZON, "smoke": SMOKE,
          "pendulum_alpha": PENDULUM_ALPHA, "pendulum_ensemble_size": PENDULUM_ENSEMBLE_SIZE,
          "pendulum_horizon": PENDULUM_HORIZON, "model_bias": MODEL_BIAS,
          "long_horizon": LONG_HORIZON, "pendulum_long_horizon": PENDULUM_LONG_HORIZON,
          "pendulum_model_bias": PENDULUM_MODEL_BIAS,
          "pendulum_model_bias_small": PENDULUM_MODEL_BIAS_SMALL,
          "mbpo_rollout_length": MBPO_ROLLOUT_LENGTH, "mbpo_real_ratio": MBPO_REAL_RATIO,
          "mbpo_updates_per_step": MBPO_UPDATES_PER_STEP,
          "mbpo_ensemble_size": MBPO_ENSEMBLE_SIZE, "mbpo_smoke": MBPO_SMOKE,
          **MODEL_BIAS_PARTS}
