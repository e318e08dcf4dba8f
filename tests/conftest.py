import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray per test session (each start costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests share two cores with Ray workers; one intra-op thread avoids oversubscription."""
    import torch

    torch.set_num_threads(1)


ALGOS = ("mbmpo", "mbpo")


def smoke_config(algo: str, env: str = "pendulum", **overrides):
    """The tiny smoke config of ``env`` for ``algo`` ('mbmpo' or 'mbpo'): seconds per
    iteration on one core; ``overrides`` are ``.training()`` settings."""
    import tune_configs

    return tune_configs.load_config(env, "smoke", algo=algo, **overrides)


@pytest.fixture(params=ALGOS)
def algo_name(request) -> str:
    """Each reliability test runs for both algorithms."""
    return request.param


def pytest_collection_modifyitems(config, items):
    """Learning tests (``slow``) run for minutes: an hour each before pytest-timeout stops one
    (setup.cfg's 15 minutes are for the fast tiers)."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(3600))
