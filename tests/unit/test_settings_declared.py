"""Every setting of both algorithm configs is declared once: the shared ones are the same
declaration (default, rule, doc) in both, each config's defaults come from it (a documented
``DEFAULTS`` entry where the algorithm's reference differs), and ``training()`` takes each
one as an explicit keyword."""

import pytest

from mbmpo_ray import MBMPOConfig, MBPOConfig
from mbmpo_ray.algorithm.base_config import FIT_DECLARED, SHARED
from mbmpo_ray.meta import MetaConfig
from mbmpo_ray.settings import Rule

CONFIGS = (MBMPOConfig, MBPOConfig)
SHARED_NAMES = sorted({*SHARED, *FIT_DECLARED})


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_shared_settings_are_one_declaration(name):
    a, b = (cls.declarations()[name] for cls in CONFIGS)
    assert a is b  # same default, rule and doc: they cannot drift
    assert MBMPOConfig.setting_docs()[name] == MBPOConfig.setting_docs()[name]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_come_from_the_declarations(cls):
    cfg = cls()
    for name, d in cls.declarations().items():
        expected = cls.DEFAULTS.get(name, d.default)
        assert getattr(cfg, name) == expected, name
        assert d.rule.accepts(expected), name
    assert set(cls.DEFAULTS) <= set(SHARED_NAMES)  # overrides only of shared settings
    assert set(cls.declarations()) <= set(cls.setting_docs())


def test_mbmpo_meta_defaults_are_metaconfigs():
    cfg, meta = MBMPOConfig(), MetaConfig()
    assert cfg.num_tasks == meta.num_tasks == 20
    assert cfg.meta_config == MetaConfig(gamma=cfg.gamma)


def _other_value(value, rule: Rule):
    if rule.kind is bool:
        return not value
    if rule.choices:
        return next(c for c in rule.choices if c != value) if len(rule.choices) > 1 else value
    if rule.kind is tuple:
        return (3, 4)
    if rule.kind is str:
        return value + "x"
    if value is None:
        return 7 if rule.kind is int else 0.5
    if rule.kind is int:
        return value + 1
    return value * 0.5 if value else 0.25


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_training_takes_every_declared_setting(cls):
    for name, d in cls.declarations().items():
        cfg = cls()
        value = _other_value(getattr(cfg, name), d.rule)
        cfg.training(**{name: value})
        assert getattr(cfg, name) == value, name
        # and reaches the maths configs built from the attributes
        if name in FIT_DECLARED:
            assert getattr(cfg.fit_config, name) == value, name
        if cls is MBMPOConfig and hasattr(MetaConfig, name):
            assert getattr(cfg.meta_config, name) == value, name


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_declared_rule_is_checked(cls):
    for name in cls.declarations():
        cfg = cls().environment("Pendulum-v1")
        cfg.__dict__[name] = object()  # no rule accepts it
        assert any(p.startswith(f"{name} ") for p in cfg.problems()), name


def test_learners_beyond_what_the_algorithm_splits_are_refused_at_validation():
    mbmpo = MBMPOConfig().environment("Pendulum-v1")
    assert mbmpo.learners(num_learners=2).problems() == []  # tasks split over learners
    assert any("num_learners=30 > num_tasks=20" in p
               for p in mbmpo.learners(num_learners=30).problems())
    mbpo = MBPOConfig().environment("Pendulum-v1").learners(num_learners=2)
    assert mbpo.problems() == []  # each learner a share of an N times larger SAC batch
    assert any("sac_cuda_graph captures one learner" in p
               for p in mbpo.training(sac_cuda_graph=True).problems())
