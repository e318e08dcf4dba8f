"""Config modules and sweeps load the same way from Python as from the CLI, and validate."""

import pytest
from ray._private.dict import unflattened_lookup

import tune_configs
from mbmpo_ray.tuning import get_sweep, param_space, sweep_seeds, swept_columns
from tune_configs.sweeps import SWEEPS


@pytest.mark.parametrize("name", sorted(tune_configs.ENV_CONFIGS))
@pytest.mark.parametrize("variant", ["paper", "smoke"])
def test_every_env_config_validates(name, variant):
    config = tune_configs.load_config(name, variant)
    config.validate()
    assert config.model_env_id == tune_configs.ENV_CONFIGS[name]
    if variant == "paper":
        assert config.horizon == 200 and config.ensemble_size == 5 and config.num_tasks == 20


def test_config_by_env_id_and_by_path_match_by_name():
    by_name = tune_configs.load_config("hopper", "smoke")
    by_id = tune_configs.load_config("Hopper-v5", "smoke")
    by_path = tune_configs.load_config("tune_configs/hopper.py", "smoke")
    for c in (by_name, by_id, by_path):
        c.validate()
        assert c.model_env_id == "Hopper-v5"
        assert c.num_tasks == by_name.num_tasks and c.horizon == by_name.horizon == 20


def test_unknown_config_and_variant_are_clear_errors():
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        tune_configs.load_config("nope")
    with pytest.raises(ValueError, match=r"no variant 'bogus'; choose one of \['paper', 'smoke'\]"):
        tune_configs.training_settings("hopper", "bogus")


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_sweep_point_is_a_valid_config(name):
    sweep = get_sweep(name)
    config, space = param_space(sweep)
    points = space.get("mbmpo_point", next(v for k, v in space.items() if k != "seed"))
    values = points["grid_search"]
    assert len(values) >= 2 and space["seed"]["grid_search"] == sweep_seeds(sweep)
    key = next(iter(sweep["grid"]))
    for value in values:
        # as Tune builds a trial: the base config plus the grid value under its key
        trial_config = {**config.to_dict(), ("mbmpo_point" if "mbmpo_point" in space else key):
                        value}
        trial = type(config)().update_from_dict(trial_config)
        trial.validate()  # e.g. num_tasks stays a multiple of ensemble_size
        # Tune's progress reporter looks the swept columns up in the trial's config and in
        # its results' config (the built algorithm's): both show this point's values
        point = value if isinstance(value, dict) else {key: value}
        for path, column in swept_columns(sweep).items():
            for source in (trial_config, trial.to_dict()):
                assert unflattened_lookup(path, source) == point[column], (name, path)


def test_paper_knobs_are_swept():
    assert get_sweep("alpha")["grid"]["inner_lr"] == [0.0, 0.0005, 0.001, 0.005]
    assert get_sweep("ensemble_size")["grid"]["ensemble_size"] == [1, 5, 10]
    assert get_sweep("horizon")["grid"]["horizon"] == [100, 200, 1000]
