"""Import structure: the core maths never loads Ray; the algorithms register with Tune however
RLlib gets imported (each case in a fresh interpreter)."""

import subprocess
import sys

import pytest


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_core_imports_without_ray():
    assert run(
        "import mbmpo_ray, mbmpo_ray.meta, mbmpo_ray.models, mbmpo_ray.imagination, "
        "mbmpo_ray.envs, mbmpo_ray.buffer, mbmpo_ray.settings, sys; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    ) == "[]"


@pytest.mark.parametrize("then", [
    "from ray.rllib.algorithms.ppo import PPOConfig",  # RLlib imported after (mid-import)
    "from ray.tune.registry import get_trainable_cls; get_trainable_cls('MBMPO')",  # Tune only
    "import ray.rllib.utils.test_utils",
])
def test_registered_with_tune_after_import(then):
    assert run(
        f"import mbmpo_ray\n{then}\n"
        "from ray.tune.registry import _global_registry, TRAINABLE_CLASS\n"
        "print(_global_registry.contains(TRAINABLE_CLASS, 'MBMPO'))"
    ) == "True"


def test_registered_when_rllib_was_imported_first():
    assert run(
        "import ray.rllib\nimport mbmpo_ray\n"
        "from ray.tune.registry import _global_registry, TRAINABLE_CLASS\n"
        "print(_global_registry.contains(TRAINABLE_CLASS, 'MBMPO'))"
    ) == "True"
