"""Prediction shards: the same predictions for any shard count; base predictions computed once per
(base model, test records, prediction settings)."""

from __future__ import annotations

import copy

import pytest

from vidtune.prediction_shards import evaluation_key, join_predictions, prediction_settings, shard_records


def _records(count):
    return [{"id": f"clip{index:02d}"} for index in reversed(range(count))]


@pytest.mark.parametrize("count, batch_size", [(10, 4), (7, 1), (2, 8), (0, 4)])
def test_shards_are_whole_batches_and_cover_every_record_once(count, batch_size):
    records = _records(count)
    one = shard_records(records, batch_size, 1, 0)
    assert [r["id"] for r in one] == sorted(r["id"] for r in records)
    for shards in (2, 3, 5):
        parts = [shard_records(records, batch_size, shards, shard) for shard in range(shards)]
        assert [r for part in parts for r in part] == one
        starts = [sum(len(part) for part in parts[:index]) for index in range(shards)]
        assert all(start % batch_size == 0 for start in starts)  # each shard starts a 1-shard batch
    with pytest.raises(ValueError):
        shard_records(records, batch_size, 3, 3)


def test_join_sorts_and_refuses_a_sample_twice():
    assert join_predictions([[{"id": "b", "prediction": "x"}], [], [{"id": "a", "prediction": "y"}]]) == \
        [{"id": "a", "prediction": "y"}, {"id": "b", "prediction": "x"}]
    with pytest.raises(ValueError, match="two prediction shards"):
        join_predictions([[{"id": "a", "prediction": "x"}], [{"id": "a", "prediction": "x"}]])


def test_evaluation_key_changes_only_with_what_changes_predictions():
    key = evaluation_key(["b", "a"], {"max_new_tokens": 16, "gpus": 1})
    assert key.startswith("test-") and key == evaluation_key(["a", "b"], {"max_new_tokens": 16, "gpus": 4,
                                                                         "gallery_size": 0})
    assert key != evaluation_key(["a", "b"], {"max_new_tokens": 8, "gpus": 1})
    assert key != evaluation_key(["a"], {"max_new_tokens": 16, "gpus": 1})
    assert key != evaluation_key(["a", "b"], {"max_new_tokens": 16, "gpus": 0})  # CPU answers differ
    settings = prediction_settings({"gpus": 2})
    assert settings["shards"] == 1 and settings["gpus"] is True and "gallery_size" not in settings


def test_shard_counts_give_identical_files_and_runs_share_base_predictions(quick_run, tmp_path):
    """Three shards give byte-identical predictions to one; a second run with the same base model, data and
    evaluation settings adds no base prediction job, and reads the same file."""
    workflow = quick_run.copy(tmp_path / "work")
    config = copy.deepcopy(workflow.config)
    evaluation = config["runs"]["demo"]["evaluation"]

    def base_predictions():
        return workflow.path(f"results/predictions/base/tiny/{evaluation_key(['demo'], evaluation)}.jsonl")

    evaluation["batch_size"] = 2  # the demo's 5 test clips: 3 batches
    workflow.write_config(config)
    workflow.snakemake("train_all")
    base_one = base_predictions().read_bytes()
    finetuned_one = workflow.path("results/runs/demo/predictions/finetuned.jsonl").read_bytes()

    evaluation["shards"] = 3
    workflow.write_config(config)
    workflow.snakemake("train_all")
    shards = sorted(workflow.path("results/runs/demo/predictions/finetuned").glob("*.jsonl"))
    assert [len(path.read_text().splitlines()) for path in shards] == [2, 2, 1]
    assert workflow.path("results/runs/demo/predictions/finetuned.jsonl").read_bytes() == finetuned_one
    assert base_predictions().read_bytes() == base_one
    logs = [path.read_text() for path in workflow.path("results/logs/predict/finetuned/demo").glob("*.log")]
    assert len(logs) == 3 and all("samples/s" in log for log in logs)

    config["runs"]["demo_lr"] = copy.deepcopy(config["runs"]["demo"])
    config["runs"]["demo_lr"]["training"]["learning_rate"] *= 2
    config["runs"]["demo_lr"]["evaluation"]["gallery_size"] = 2  # not a prediction setting
    workflow.write_config(config)
    jobs = workflow.planned_jobs("train_all")
    assert "predict_base" not in jobs and jobs["predict_finetuned"] == 3 and jobs["train"] == 1
