"""Settings shared by the per-env MBPO configs (``mbpo_*.py``)."""

# Tiny settings for smoke tests: seconds per iteration on one core.
MBPO_SMOKE_SETTINGS = dict(
    horizon=20,
    initial_random_steps=100,
    model_train_freq=50,
    env_steps_per_block=25,
    epoch_length=100,
    ensemble_size=3,
    num_elites=2,
    model_hidden_sizes=(32, 32),
    model_max_epochs=3,
    rollouts_per_step=4,
    updates_per_step=1,
    sac_hidden_sizes=(32, 32),
    eval_episodes_per_iter=1,
)
