"""Rerun only what is stale (issue 7): each kind of change reaches exactly the steps that depend on it.

Every test works on its own copy of one finished reduced-demo run and checks both what Snakemake plans or
runs and what was really done on disk (which frame folders were written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import executed_jobs

from vidtune.demo import _render
from vidtune.samples import read_split_table

pytestmark = pytest.mark.integration

# The steps after scoring that compare, tabulate and report a run's metrics.
REPORTING = {"compare_runs": 1, "runs_table": 1, "report_run": 1, "report_overview": 1}


def frame_folders(workflow) -> dict[str, int]:
    """Every complete frame folder in the cache, with its modification time in ns."""
    cache = workflow.path("results/frames/cache")
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.glob("*/*")
            if p.is_dir() and not p.name.startswith(".")}


def predictions_of(workflow, which: str) -> Path:
    if which == "base":  # shared by the runs with the same base model, data and prediction settings
        (path,) = workflow.path("results/predictions/base/tiny").glob("*.jsonl")
        return path
    return workflow.path(f"results/runs/demo/predictions/{which}.jsonl")


@pytest.fixture
def run_copy(quick_run, tmp_path):
    return quick_run.copy(tmp_path / "work")


def annotations(workflow) -> Path:
    return workflow.path("results/demo/data/annotations.jsonl")


def rewrite_annotations(workflow, edit) -> None:
    path = annotations(workflow)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(records)))


def test_noop_after_complete_run(quick_run):
    result = quick_run.snakemake("-n", "train_all")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_touching_annotations_without_change_runs_nothing(run_copy):
    path = annotations(run_copy)
    os.utime(path)  # a git checkout or a copy: new mtime, same bytes
    result = run_copy.snakemake("-n", "train_all")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_caption_edit_extracts_no_frame(run_copy):
    before = frame_folders(run_copy)
    base_shard = next(predictions_of(run_copy, "base").with_suffix("").glob("*.jsonl"))
    base_before = base_shard.stat().st_mtime_ns
    split_table = run_copy.path("results/datasets/demo/split.parquet")
    edited = next(s.media_path for s, split in read_split_table(split_table) if split == "train")

    def edit(records):
        for record in records:
            if record["video"] == edited:
                record["caption"] += " slowly"
        return records

    rewrite_annotations(run_copy, edit)
    result = run_copy.snakemake("train_all")
    ran = executed_jobs(result)
    assert "extract_frames" not in ran
    assert frame_folders(run_copy) == before  # not one frame folder written again
    assert {"ingest", "split", "internvl_files", "train", "merge", "score"} <= set(ran)
    # A training caption changed: test.jsonl kept its bytes, so only the finetuned model predicts again.
    assert ran["predict_finetuned"] == 1 and "predict_base" not in ran
    # (the join of its shards may rerun, a few milliseconds, when the test split's checkpoint reruns)
    assert base_shard.stat().st_mtime_ns == base_before
    targets = [s.target for s, _ in read_split_table(split_table)]
    assert sum(target.endswith(" slowly") for target in targets) == 1


def test_added_video_extracts_only_its_frames(run_copy):
    before = frame_folders(run_copy)
    data = run_copy.path("results/demo/data")
    _render(data / "clip_new.mp4", "green", "bar", "right", size=64, seconds=1, fps=10, track=0.3, speed=0.8)
    rewrite_annotations(run_copy, lambda r: r + [{"video": "clip_new.mp4", "caption": "a green bar moves to the right"}])
    result = run_copy.snakemake("train_all")
    after = frame_folders(run_copy)
    assert set(before) < set(after) and len(set(after) - set(before)) == 1
    assert {k: after[k] for k in before} == before  # old folders untouched
    assert executed_jobs(result).get("extract_frames") == 1  # only the new video's shard


def test_removed_video_leaves_training_data(run_copy):
    before = frame_folders(run_copy)
    removed = json.loads(annotations(run_copy).read_text().splitlines()[0])["video"]
    rewrite_annotations(run_copy, lambda r: r[1:])
    result = run_copy.snakemake("train_all")
    assert frame_folders(run_copy) == before
    jsonl = "".join(run_copy.path(f"results/datasets/demo/internvl/{s}.jsonl").read_text()
                    for s in ("train", "val", "test"))
    assert removed not in jsonl
    # at most the removed video's shard lists its media again, and it finds all of them in the cache
    assert executed_jobs(result).get("extract_frames", 0) <= 1

    # Collecting the cache removes the removed video's folder alone, and makes nothing stale.
    cleaned = run_copy.snakemake("clean_frames")
    after = frame_folders(run_copy)
    assert set(after) < set(before) and len(before) - len(after) == 1
    assert {key: before[key] for key in after} == after  # the folders in use are untouched
    assert "removed 1 frame cache folders" in cleaned.stdout + cleaned.stderr
    dry_run = run_copy.snakemake("-n", "train_all")
    assert "Nothing to be done" in dry_run.stdout + dry_run.stderr


def test_training_setting_change_reruns_training_steps_only(run_copy):
    config = run_copy.config
    config["runs"]["demo"]["training"]["learning_rate"] = 0.001
    run_copy.write_config(config)
    planned = run_copy.planned_jobs("train_all")
    assert planned == {"train": 1, "merge": 1, "predict_finetuned": 1, "join_predictions": 1, "score": 1,
                       **REPORTING}


def test_check_setting_that_changes_no_record_reruns_only_the_check(run_copy):
    # max_seq_length reaches the training-data check only; every demo record still fits, so the checked records
    # keep their bytes and training, merge and both predictions stay (what follows the predictions reruns: cheap).
    config = run_copy.config
    config["runs"]["demo"]["training"]["max_seq_length"] = 4000
    run_copy.write_config(config)
    ran = executed_jobs(run_copy.snakemake("train_all"))
    assert ran.get("check_training_data") == 1
    assert not {"training_meta", "train", "merge", "predict_finetuned", "predict_base"} & set(ran), ran
    dry_run = run_copy.snakemake("-n", "train_all")
    assert "Nothing to be done" in dry_run.stdout + dry_run.stderr


def test_check_that_leaves_no_record_stops_before_training(run_copy):
    config = run_copy.config
    config["runs"]["demo"]["training"]["max_seq_length"] = 16  # shorter than any record's text alone
    run_copy.write_config(config)
    result = run_copy.snakemake("train_all", check=False)
    assert result.returncode != 0
    assert "Error in rule training_meta" in result.stdout + result.stderr
    log = run_copy.path("results/logs/training_meta/demo.log").read_text()
    assert "no training record is left in demo" in log
    ran = executed_jobs(result)
    assert ran.get("check_training_data") == 1 and "train" not in ran
    train_records = len(run_copy.path("results/datasets/demo/internvl/train.jsonl").read_text().splitlines())
    rejects = [json.loads(line) for line in
               run_copy.path("results/runs/demo/training_data/demo/rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == train_records and all(r["reason"].startswith("over_length: ") for r in rejects)


def test_evaluation_setting_change_reruns_prediction_and_scoring(run_copy):
    config = run_copy.config
    config["runs"]["demo"]["evaluation"]["max_new_tokens"] = 5
    run_copy.write_config(config)
    planned = run_copy.planned_jobs("train_all")
    assert planned == {"predict_base": 1, "predict_finetuned": 1, "join_predictions": 2, "score": 1,
                       **REPORTING}


def test_frame_setting_change_reextracts_every_video(run_copy):
    before = frame_folders(run_copy)
    config = run_copy.config
    config["datasets"]["demo"]["frames"]["num_frames"] = 3
    run_copy.write_config(config)
    run_copy.snakemake("prepare_all")
    after = frame_folders(run_copy)
    videos = len(annotations(run_copy).read_text().splitlines())
    assert len(set(after) - set(before)) == videos
