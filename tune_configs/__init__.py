"""Per-env MB-MPO configurations and Tune sweeps.

Every env module (``pendulum``, ``halfcheetah``, ...) defines ``ENV`` and variants, dicts of
``MBMPOConfig.training`` settings: ``PAPER`` (the paper's settings, horizon 200), ``SMOKE`` (tiny,
seconds per iteration) and optionally ``DEFAULT`` (what ``mbmpo-ray train`` uses). Load one from
Python or the CLI the same way::

    from tune_configs import load_config
    config = load_config("pendulum")             # DEFAULT, else PAPER
    config = load_config("halfcheetah", "smoke")
    config = load_config("tune_configs/hopper.py")

Sweeps (``sweeps.py``) describe Tune param spaces over alpha, ensemble size and horizon.

MBPO (``algo="mbpo"``) has its own per-env modules ``mbpo_<name>.py`` (``DEFAULT``, ``PAPER``
where the reference code covers the env, ``MBRL_LIB`` where mbrl-lib does, ``SMOKE``), loaded
the same way: ``load_config("hopper", "paper", algo="mbpo")`` gives an ``MBPOConfig``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

ENV_CONFIGS = {
    "pendulum": "Pendulum-v1",
    "inverted_pendulum": "InvertedPendulum-v5",
    "swimmer": "Swimmer-v5",
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}


ALGOS = ("mbmpo", "mbpo")


def _module(name_or_path: str, algo: str = "mbmpo") -> ModuleType:
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"tune_configs._file_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    name = name_or_path.lower().replace("-", "_")
    by_env = {v.lower(): k for k, v in ENV_CONFIGS.items()}
    name = by_env.get(name.replace("_", "-"), by_env.get(name, name))
    if name not in ENV_CONFIGS:
        raise ValueError(
            f"unknown config {name_or_path!r}; choose one of {sorted(ENV_CONFIGS)} "
            "(or their env ids) or a path to a .py file defining ENV and PAPER"
        )
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {list(ALGOS)}")
    prefix = "mbpo_" if algo == "mbpo" else ""
    return importlib.import_module(f"tune_configs.{prefix}{name}")


def training_settings(name_or_path: str, variant: str = "default",
                      algo: str = "mbmpo") -> tuple[str, dict[str, Any]]:
    """``(env_id, training kwargs)`` of a config module's variant."""
    module = _module(name_or_path, algo)
    variant = variant.upper()
    if variant == "DEFAULT" and not hasattr(module, "DEFAULT"):
        variant = "PAPER"
    if not hasattr(module, variant):
        options = [v.lower() for v in ("DEFAULT", "PAPER", "MBRL_LIB", "SMOKE")
                   if hasattr(module, v)]
        raise ValueError(f"config {name_or_path!r} has no variant {variant.lower()!r}; "
                         f"choose one of {options}")
    return module.ENV, dict(getattr(module, variant))


def stop_timesteps(name_or_path: str, variant: str = "default",
                   algo: str = "mbmpo") -> int | None:
    """Real env steps after which a run of this config variant stops (None: no default)."""
    stops = getattr(_module(name_or_path, algo), "STOP_TIMESTEPS", {})
    return stops.get(variant.lower(), stops.get("paper"))


def load_config(name_or_path: str, variant: str = "default", *, algo: str = "mbmpo",
                **overrides: Any):
    """An :class:`~mbmpo_ray.MBMPOConfig` (``algo="mbpo"``: an :class:`~mbmpo_ray.MBPOConfig`)
    for a config module, variant and overrides."""
    from mbmpo_ray import MBMPOConfig, MBPOConfig

    env_id, settings = training_settings(name_or_path, variant, algo)
    settings.update(overrides)
    seed = settings.pop("seed", 0)
    num_env_runners = settings.pop("num_env_runners", 0)
    return (
        (MBPOConfig() if algo == "mbpo" else MBMPOConfig())
        .environment(env_id)
        .env_runners(num_env_runners=num_env_runners)
        .training(**settings)
        .debugging(seed=seed)
    )
