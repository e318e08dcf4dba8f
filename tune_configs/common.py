"""Settings shared by the per-env configs."""

# Tiny settings for smoke tests: seconds per iteration on one core.
SMOKE_SETTINGS = dict(
    horizon=20,
    initial_random_steps=100,
    real_steps_per_iter=100,
    ensemble_size=2,
    model_hidden_sizes=(32, 32),
    model_max_epochs=3,
    num_tasks=2,
    rollouts_per_task=4,
    meta_steps_per_iter=1,
    eval_episodes_per_iter=1,
)

# How a paper-size run splits two cores (benchmarks/bench_iteration.py, BENCHMARKS.md): one
# model-trainer actor per member (a member that stops early frees its share of the cores) and,
# since the trainers and the meta step run one after the other, a meta-learner that uses both
# cores (MBMPOConfig.learner_threads: the 1 + 5 x 0.4 reserved CPUs, capped at the cores).
TWO_CORE_SPLIT = dict(num_model_trainers=5, num_cpus_per_model_trainer=0.4)
