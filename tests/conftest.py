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
