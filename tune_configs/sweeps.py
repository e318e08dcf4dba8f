"""Tune sweeps over the three knobs the MB-MPO paper studies, each across seeds.

A sweep is a dict: ``config`` (env config name), ``variant``, ``grid`` (setting -> values),
``seeds``, ``iterations`` (per trial), ``metric`` / ``mode`` for the results table and ASHA.
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
    tied={"num_tasks": {"ensemble_size": 4}},
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

# Two trials x two iterations of a tiny Pendulum run: for tests and trying the cluster path.
SMOKE = dict(
    config="pendulum",
    variant="smoke",
    grid={"inner_lr": [0.0, 0.001]},
    seeds=1,
    iterations=2,
)

SWEEPS = {"alpha": ALPHA, "ensemble_size": ENSEMBLE_SIZE, "horizon": HORIZON, "smoke": SMOKE}
