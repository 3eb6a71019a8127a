"""A bad configuration fails when the workflow is parsed, before any job starts, naming the key."""

from __future__ import annotations

import copy

import pytest

from conftest import Workflow, load_default_config


def dry_run_error(tmp_path, mutate) -> str:
    config = copy.deepcopy(load_default_config())
    mutate(config)
    workflow = Workflow(tmp_path / "work", config)
    result = workflow.snakemake("-n", "train_all", check=False)
    assert result.returncode != 0, "the dry run should have failed"
    assert not (tmp_path / "work" / "results").exists(), "no job may run"
    return result.stdout + result.stderr


def test_default_config_parses(tmp_path):
    workflow = Workflow(tmp_path / "work", load_default_config())
    result = workflow.snakemake("-n", "train_all")
    assert "train" in result.stdout + result.stderr


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["datasets"]["demo"].update(framez={}), "'framez' was unexpected"),
    (lambda c: c["runs"]["demo"]["training"].update(learning_rate="fast"), "'fast' is not of type 'number'"),
    (lambda c: c["runs"]["demo"]["training"].update(method="dora"), "'dora' is not one of"),
    (lambda c: c.update(extra=1), "'extra' was unexpected"),
    # InternVL and xtuner assert that a repeat_time above 1 is an integer
    (lambda c: c["datasets"]["demo"].update(repeat_time=1.5), "1.5 is not valid under any of the given schemas"),
    (lambda c: c["datasets"]["demo"].update(internvl_video_form="frames"), "'frames' is not one of"),
    # each format's options are in the schema: a wrong one fails at parse time, naming the key
    (lambda c: c["datasets"]["demo"].update(options={"caption_feld": "text"}), "'caption_feld' was unexpected"),
    (lambda c: c["datasets"]["demo"].update(options={"caption_field": 3}),
     "On instance['datasets']['demo']['options']['caption_field']"),
])
def test_schema_errors_name_the_key(tmp_path, mutate, expected):
    assert expected in dry_run_error(tmp_path, mutate)


@pytest.mark.parametrize("training, expected", [
    ({"lora": {"vision": True}}, ["runs.demo.training", "lora.vision: true", "freeze_vision is true"]),
    ({"lora": {"train_projector": True}, "freeze_projector": True},
     ["runs.demo.training", "lora.train_projector: true and freeze_projector: true"]),
    ({"freeze_language": True}, ["runs.demo.training", "freeze_language: true and lora.vision: false"]),
])
def test_contradicting_freeze_and_lora_settings_fail_at_parse_time(tmp_path, training, expected):
    def mutate(config):
        run = config["runs"]["demo"]["training"]
        run.update({key: value for key, value in training.items() if key != "lora"})
        run["lora"] = {**run.get("lora", {}), **training.get("lora", {})}
    message = dry_run_error(tmp_path, mutate)
    assert all(part in message for part in expected), message


def test_missing_dataset_root(tmp_path):
    def mutate(config):
        config["datasets"]["mine"] = {"format": "jsonl", "root": str(tmp_path / "nowhere"),
                                      "annotations": str(tmp_path / "nowhere" / "a.jsonl")}
    message = dry_run_error(tmp_path, mutate)
    assert "datasets.mine.root" in message and "nowhere" in message and "What to do" in message


def test_run_names_undefined_dataset(tmp_path):
    message = dry_run_error(tmp_path, lambda c: c["runs"]["demo"].update(datasets=["demo", "ego"]))
    assert "runs.demo.datasets names 'ego'" in message


def test_run_names_undefined_model(tmp_path):
    message = dry_run_error(tmp_path, lambda c: c["runs"]["demo"].update(model="big"))
    assert "runs.demo.model names 'big'" in message


def test_model_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "README.txt").write_text("weights went elsewhere")
    message = dry_run_error(tmp_path, lambda c: c["models"].update(real={"path": str(folder)}))
    assert "models.real.path" in message and "not a model folder" in message


def test_model_folder_with_pickled_weights_only(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "internvl"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    message = dry_run_error(tmp_path, lambda c: c["models"].update(real={"path": str(folder)}))
    assert "no .safetensors weights" in message


def test_format_options_get_the_schema_defaults(tmp_path):
    """Parsing fills each format's options from the schema, the one home of their defaults."""
    from snakemake.utils import validate

    from vidtune.config import SCHEMA_PATH, schema_defaults

    config = copy.deepcopy(load_default_config())
    config["datasets"]["ego"] = {"format": "ego4d", "root": "ego", "options": {"target": "narrations"}}
    validate(config, str(SCHEMA_PATH), set_default=True)
    assert config["datasets"]["demo"]["options"] == schema_defaults("table_options")
    assert config["datasets"]["ego"]["options"] == {**schema_defaults("ego4d_options"), "target": "narrations"}


def test_a_config_of_datasets_only_prepares_the_data(tmp_path):
    """No models, no runs (issue 24): prepare_all prepares every dataset, and nothing that needs a model or
    a run is planned, by any target."""
    config = {"datasets": {"demo": {"format": "demo", "root": "results/demo/data", "shards": 1,
                                    "frames": {"num_frames": 2, "short_side": 32}}},
              "demo": {"num_videos": 4, "seconds": 1, "size": 32}}
    workflow = Workflow(tmp_path / "work", config)
    data_rules = {"make_demo_dataset", "ingest", "split", "frame_manifest", "extract_frames", "internvl_files"}
    for target in ("prepare_all", "train_all", "evaluate_all"):
        assert set(workflow.planned_jobs(target)) == data_rules, target
    workflow.snakemake("prepare_all")
    assert len(workflow.path("results/datasets/demo/internvl/train.jsonl").read_text().splitlines()) > 0
    assert not workflow.path("results/models").exists() and not workflow.path("results/runs").exists()
