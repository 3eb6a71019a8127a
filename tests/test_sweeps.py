"""Sweeps expand one run entry into named runs (issue 16): names, derived datasets, checks."""

from __future__ import annotations

import copy

import pytest
from conftest import REPO, quick_config

from vidtune.errors import ConfigError
from vidtune.sweeps import expand_sweeps


def defaulted(config: dict) -> dict:
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    return config


def swept(sweep: dict) -> dict:
    config = quick_config()
    config["models"]["small"] = copy.deepcopy(config["models"]["tiny"])
    config["runs"]["demo"]["sweep"] = sweep
    return defaulted(config)


def test_training_sweep_expands_into_named_runs_with_the_values():
    config, values = expand_sweeps(swept({"training.lora.rank": [8, 16], "training.learning_rate": [1e-3, 2e-3]}))
    assert sorted(config["runs"]) == [
        "demo@training.learning_rate=0.001+training.lora.rank=16",
        "demo@training.learning_rate=0.001+training.lora.rank=8",
        "demo@training.learning_rate=0.002+training.lora.rank=16",
        "demo@training.learning_rate=0.002+training.lora.rank=8",
    ]
    run = config["runs"]["demo@training.learning_rate=0.002+training.lora.rank=8"]
    assert run["training"]["lora"]["rank"] == 8 and run["training"]["learning_rate"] == 0.002
    assert run["training"]["lora"]["alpha"] == 32 and "sweep" not in run
    assert values["demo@training.learning_rate=0.002+training.lora.rank=8"] == {
        "training.learning_rate": 0.002, "training.lora.rank": 8}
    assert list(config["datasets"]) == ["demo"]


def test_names_are_stable_whatever_the_key_order_and_number_form():
    one, _ = expand_sweeps(swept({"training.lora.rank": [8], "training.learning_rate": [1]}))
    two, _ = expand_sweeps(swept({"training.learning_rate": [1.0], "training.lora.rank": [8]}))
    assert list(one["runs"]) == list(two["runs"]) == ["demo@training.learning_rate=1.0+training.lora.rank=8"]


def test_dataset_setting_sweep_makes_derived_datasets():
    config, values = expand_sweeps(swept({"datasets.demo.frames.num_frames": [2, 4], "model": ["tiny", "small"]}))
    assert sorted(config["datasets"]) == ["demo", "demo@frames.num_frames=2", "demo@frames.num_frames=4"]
    assert config["datasets"]["demo@frames.num_frames=2"]["frames"]["num_frames"] == 2
    run = config["runs"]["demo@datasets.demo.frames.num_frames=2+model=small"]
    assert run["datasets"] == ["demo@frames.num_frames=2"] and run["model"] == "small"
    assert len(config["runs"]) == 4


def test_unswept_config_is_unchanged():
    config = defaulted(quick_config())
    expanded, values = expand_sweeps(config)
    assert expanded == config and values == {"demo": {}}


@pytest.mark.parametrize("sweep, words", [
    ({"training.lora.rank": [0, 8]}, "value 0"),
    ({"training.lora": [8]}, "not a setting that can be varied"),
    ({"training.no_such_key": [1]}, "not a setting that can be varied"),
    ({"datasets.other.frames.num_frames": [2]}, "does not use dataset 'other'"),
    ({"training.lora.rank": [8, 8]}, "values repeat"),
    ({"model": ["a/b"]}, "cannot be part of a run name"),
])
def test_bad_sweeps_fail_naming_the_key(sweep, words):
    with pytest.raises(ConfigError, match=words) as error:
        expand_sweeps(swept(sweep))
    assert "runs.demo.sweep." in str(error.value)
