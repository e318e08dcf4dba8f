"""The algorithms' EnsembleFitter without model-trainer actors (no Ray instance needed)."""

import pytest

from mbmpo_ray.algorithm.fitting import EnsembleFitter
from mbmpo_ray.models import FitConfig, training

KWARGS = dict(obs_dim=3, act_dim=1, ensemble_size=4, hidden_sizes=(16,), probabilistic=True)


@pytest.mark.parametrize("fast, timed", [(False, None), (True, "bfloat16"), (True, "float32")])
def test_auto_model_precision_is_decided_once_on_the_driver(monkeypatch, fast, timed):
    """``model_precision='auto'`` becomes a concrete dtype before any fit, so every member
    group (on whichever trainer) fits in the same one: float32 without bf16 units, else the
    timed choice for one group's shapes."""
    monkeypatch.setattr(training, "bf16_is_fast", lambda device_type="cpu": fast)
    monkeypatch.setattr(training, "_PRECISION_OF", {})
    seen = []
    monkeypatch.setattr(training, "_faster_precision",
                        lambda ens, batch: seen.append((ens.ensemble_size, batch)) or timed)
    cfg = FitConfig(model_batch_size=32, model_precision="auto")
    fitter = EnsembleFitter(KWARGS, cfg)
    assert fitter.fit_config.model_precision == (timed if fast else "float32")
    assert seen == ([(4, 32)] if fast else [])
    assert cfg.model_precision == "auto"  # the caller's config is not changed
    fixed = EnsembleFitter(KWARGS, FitConfig(model_precision="bfloat16"))
    assert fixed.fit_config.model_precision == "bfloat16"
