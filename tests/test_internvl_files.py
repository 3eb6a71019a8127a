"""InternVL JSONL/meta.json and InternVideo2.5 export: exact format, rejects, summary, byte determinism.
(tests/test_internvl_contract.py loads the files the way InternVL's own data code does.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fixtures_datasets as fx
from vidtune.errors import DataError
from vidtune.internvl_files import write_internvideo_export, write_internvl_dataset
from vidtune.internvl_format import meta_entry, portable_path, write_meta
from vidtune.rejects import REASONS
from vidtune.samples import Sample, write_split_table


def sample(local_id, media_type="video", **fields):
    defaults = dict(media_path=f"{local_id}.mp4" if media_type == "video" else f"{local_id}.jpg",
                    prompt="Describe the video.", target=f"caption of {local_id}",
                    references=(f"caption of {local_id}",), group_key=local_id, source=f"ann.jsonl:{local_id}")
    return Sample(sample_id=f"d/{local_id}", dataset="d", media_type=media_type, **{**defaults, **fields})


CFG = {"root": "data", "internvl_video_form": "images"}
BASE = Path("results")  # what the frame index's paths start with, as in the workflow


def video_item(key, *ids):
    return {"status": "ok", "media_type": "video", "frames_dir": f"results/frames/cache/{key[:2]}/{key}/frames/",
            "frames": ["frame_000001.jpg", "frame_000002.jpg"], "timestamps": [0.25, 0.75],
            "width": 64, "height": 64, "sample_ids": list(ids)}


@pytest.fixture
def inputs(tmp_path):
    samples = [
        (sample("a"), "train"),
        (sample("b", clip_start=0.0, clip_end=1.0, duration=2.0), "train"),
        (sample("c", media_type="image"), "test"),
        (sample("broken"), "train"),
    ]
    table = tmp_path / "split.parquet"
    write_split_table(table, samples)
    shard0 = tmp_path / "shard0.json"
    shard1 = tmp_path / "shard1.json"
    shard0.write_text(json.dumps({"items": {
        "aa11": video_item("aa11", "d/a"),
        "bb22": {"status": "rejected", "reason": "unreadable_media: cannot open as a video: moov atom not found",
                 "file": "data/broken.mp4",
                 "sample_ids": ["d/broken"]},
    }, "summary": {}}))
    shard1.write_text(json.dumps({"items": {
        "cc33": {**video_item("cc33", "d/b"), "frames_dir": "results/frames/cache/cc/cc33/frames"},  # no "/"
        "dd44": {"status": "ok", "media_type": "image", "image": "data/c.jpg",
                 "width": 64, "height": 48, "sample_ids": ["d/c"]},
    }, "summary": {}}))
    return table, [shard0, shard1]


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_internvl_records_follow_the_documented_format(tmp_path, inputs):
    table, shards = inputs
    out = tmp_path / "out"
    write_internvl_dataset(table, shards, out, "d", CFG, base=BASE)
    train = (out / "train.jsonl").read_text().splitlines()
    assert train[0] == json.dumps({  # the default form: InternVL's multi-image record, paths from BASE
        "id": "d/a", "image": ["frames/cache/aa/aa11/frames/frame_000001.jpg",
                               "frames/cache/aa/aa11/frames/frame_000002.jpg"],
        "conversations": [{"from": "human", "value": "Frame-1: <image>\nFrame-2: <image>\nDescribe the video."},
                          {"from": "gpt", "value": "caption of a"}]})
    assert json.loads(train[1])["image"][0] == "frames/cache/cc/cc33/frames/frame_000001.jpg"
    assert len(train) == 2  # the rejected sample is not trained on
    (image,) = lines(out / "test.jsonl")
    assert list(image) == ["id", "image", "width", "height", "conversations"]
    assert (image["image"], image["width"], image["height"]) == ("../data/c.jpg", 64, 48)
    assert image["conversations"][0]["value"] == "<image>\nDescribe the video."
    assert (out / "val.jsonl").read_text() == ""  # always written, maybe empty


def test_video_form_names_the_frame_folder(tmp_path, inputs):
    table, shards = inputs
    write_internvl_dataset(table, shards, tmp_path / "out", "d", {**CFG, "internvl_video_form": "video"},
                           base=BASE)
    first, second = lines(tmp_path / "out" / "train.jsonl")
    assert first == {"id": "d/a", "video": "frames/cache/aa/aa11/frames/",
                     "conversations": [{"from": "human", "value": "<video>\nDescribe the video."},
                                       {"from": "gpt", "value": "caption of a"}]}
    assert second["video"] == "frames/cache/cc/cc33/frames/"  # always a folder ending in /


def test_paths_are_relative_unless_absolute_and_outside(tmp_path):
    assert portable_path("results/frames/x", "results") == "frames/x"
    assert portable_path("data/a.jpg", "results") == os.path.join("..", "data", "a.jpg")
    assert portable_path(tmp_path / "results" / "frames", tmp_path / "results") == "frames"
    assert portable_path("/elsewhere/coco/a.jpg", "results") == "/elsewhere/coco/a.jpg"
    assert portable_path(tmp_path / "data", tmp_path / "results") == str(tmp_path / "data")


def test_rejects_and_summary(tmp_path, inputs):
    table, shards = inputs
    ingest_rejects = fx.write_jsonl(tmp_path / "ingest_rejects.jsonl", [
        {"file": "ann.jsonl", "record": "line 9", "reason": "missing_media: x.mp4 does not exist"}])
    summary = write_internvl_dataset(table, shards, tmp_path / "out", "d", CFG, base=BASE,
                                     ingest_rejects=ingest_rejects)
    assert lines(tmp_path / "out" / "rejects.jsonl") == [{
        "file": "data/broken.mp4", "record": "d/broken",
        "reason": "unreadable_media: cannot open as a video: moov atom not found",
        "source": "ann.jsonl:broken", "stage": "frames"}]
    assert summary == {"dataset": "d", "samples": {"train": 2, "val": 0, "test": 1}, "total": 3,
                       "rejects": {"ingest": {"missing_media": 1}, "frames": {"unreadable_media": 1}},
                       "rejects_by_reason": {"missing_media": 1, "unreadable_media": 1}, "rejected": 2}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_rejects_of_both_stages_are_counted_by_one_set_of_classes(tmp_path, inputs):
    """Counts add up by class across stages and records, whatever numbers each record's text holds."""
    table, shards = inputs
    ingest_rejects = fx.write_jsonl(tmp_path / "ingest_rejects.jsonl", [
        {"file": "ann.jsonl", "record": f"line {n}", "reason": f"unreadable_media: cannot read {n}.mp4"}
        for n in (3, 4)])
    summary = write_internvl_dataset(table, shards, tmp_path / "out", "d", CFG, base=BASE,
                                     ingest_rejects=ingest_rejects)
    assert summary["rejects_by_reason"] == {"unreadable_media": 3}
    assert summary["rejected"] == sum(summary["rejects_by_reason"].values())
    assert set(summary["rejects_by_reason"]) <= set(REASONS)


def test_output_is_byte_deterministic(tmp_path, inputs):
    table, shards = inputs
    write_internvl_dataset(table, shards, tmp_path / "one", "d", CFG, base=BASE)
    write_internvl_dataset(table, list(reversed(shards)), tmp_path / "two", "d", CFG, base=BASE)
    for name in ["train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl", "summary.json"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert not [p for p in (tmp_path / "one").iterdir() if ".tmp-" in p.name]


def test_sample_missing_from_every_index_stops_the_step(tmp_path, inputs):
    table, shards = inputs
    with pytest.raises(DataError, match="d/b is in no frame-extraction index"):
        write_internvl_dataset(table, shards[:1], tmp_path / "out", "d", CFG, base=BASE)


def test_meta_json_entries(tmp_path):
    cfg_a = {"repeat_time": 2.0, "max_dynamic_patch": 12, "prompt": "Describe.",
             "frames": {"num_frames": 4, "timeout_s": 9.0}}  # the timeout does not reach the model
    cfg_b = {"repeat_time": 0.5, "max_dynamic_patch": 6}
    results = tmp_path / "results"
    meta = write_meta([("b", results / "datasets/b/internvl/train.jsonl", 7, cfg_b),
                       ("a", results / "datasets/a/internvl/train.jsonl", 3, cfg_a)],
                      results / "runs/r/meta.json", root=results)
    # root and annotation relative to meta.json's folder: moving the results folder keeps them right
    assert meta["a"] == {"root": "../../", "annotation": "../../datasets/a/internvl/train.jsonl",
                         "data_augment": False, "max_dynamic_patch": 12, "repeat_time": 2, "length": 3,
                         "data_settings": {"prompt": "Describe.", "frames": {"num_frames": 4}}}
    assert type(meta["a"]["repeat_time"]) is int  # InternVL asserts an int above 1
    assert meta["b"]["repeat_time"] == 0.5 and meta["b"]["max_dynamic_patch"] == 6
    written = (results / "runs/r/meta.json").read_text()
    assert json.loads(written) == meta and list(json.loads(written)) == ["a", "b"]
    # an absolute results folder gives the same entry
    entry = meta_entry(results / "datasets/a/internvl/train.jsonl", 3, cfg_a, root=results.resolve(),
                       meta_dir=results / "runs/r")
    assert entry == meta["a"]


def test_internvideo_export(tmp_path, inputs, monkeypatch):
    table, shards = inputs
    monkeypatch.chdir(tmp_path)
    fx.make_video(tmp_path / "data" / "a.mp4", seconds=2.0)  # no duration in the table: read from the container
    summary = write_internvideo_export(table, shards, Path("iv"), "d", {"root": "data", "repeat_time": 3})
    first, second = lines(tmp_path / "iv" / "train.jsonl")
    assert first["video"] == "a.mp4" and first["duration"] == pytest.approx(2.0, abs=0.05)
    assert "start" not in first
    assert first["conversations"][0] == {"from": "human", "value": "<image>\nDescribe the video."}
    assert second["id"] == "d/b" and (second["start"], second["end"]) == (0.0, 1.0)
    assert (tmp_path / "iv" / "test.jsonl").read_text() == ""  # images are left out
    assert summary["images_left_out"] == 1
    meta = json.loads((tmp_path / "iv" / "diy_ft_data.json").read_text())
    assert meta == {"d": {"root": "../data/", "annotation": "train.jsonl",  # relative to diy_ft_data.json
                          "data_augment": False, "repeat_time": 3, "video_read_type": "decord",
                          "sampling_strategy": "all", "length": 2}}


def test_internvideo_duration_is_the_clips(tmp_path):
    """xtuner's prompt says "The video lasts for <duration> seconds": for a clip that is the clip's length."""
    samples = [(sample("whole", duration=10.0), "train"),
               (sample("mid", clip_start=2.5, clip_end=4.0, duration=10.0), "train"),
               (sample("tail", clip_start=7.0, duration=10.0), "train")]  # to the end of the video
    table = tmp_path / "split.parquet"
    write_split_table(table, samples)
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"items": {
        s.sample_id: video_item("ee55", s.sample_id) for s, _ in samples}, "summary": {}}))
    write_internvideo_export(table, [index], tmp_path / "iv", "d", {"root": "/data/d", "repeat_time": 1})
    by_id = {r["id"]: r for r in lines(tmp_path / "iv" / "train.jsonl")}
    assert by_id["d/whole"]["duration"] == 10.0 and "start" not in by_id["d/whole"]
    assert (by_id["d/mid"]["start"], by_id["d/mid"]["end"], by_id["d/mid"]["duration"]) == (2.5, 4.0, 1.5)
    assert (by_id["d/tail"]["start"], by_id["d/tail"]["end"], by_id["d/tail"]["duration"]) == (7.0, 10.0, 3.0)
    meta = json.loads((tmp_path / "iv" / "diy_ft_data.json").read_text())
    assert meta["d"]["root"] == "/data/d/"  # an absolute dataset root stays absolute
from vidtune.rejects import REASONS
