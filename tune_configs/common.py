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
