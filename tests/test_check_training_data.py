"""The check_training_data step on the tiny model: what is left out and why, truncation, and files training reads."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import logging

import pytest

from vidtune.atomic import read_jsonl
from vidtune.check_training_data import check_training_data, sample_length
from vidtune.errors import DataError
from vidtune.internvl_format import read_meta, record_media_paths, record_text
from vidtune.modeling import encode_sample, load_images, load_processor
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.training.data import training_items


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), 8, num_frames=2, size=32, images=2)


@pytest.fixture(scope="module")
def processor(tiny):
    return load_processor(tiny)


def _records(out):
    return read_jsonl(out / "records" / "synthetic.jsonl")


def test_good_records_pass_unchanged_into_files_training_reads(meta, processor, tmp_path, monkeypatch):
    out = tmp_path / "checked"
    summary = check_training_data(meta, processor, out, max_seq_length=4096, over_length="drop")
    assert summary["records"] == summary["accepted"] == 8 and summary["rejected"] == summary["truncated"] == 0
    assert _records(out) == read_jsonl(meta.parent / "train.jsonl")  # byte-for-byte the same records
    entry = json.loads((out / "meta.json").read_text())["synthetic"]
    assert entry["annotation"] == "records/synthetic.jsonl" and entry["length"] == 8
    assert not os.path.isabs(entry["root"])  # relative to the checked meta.json, so the project can move
    assert entry["data_settings"] == json.loads(meta.read_text())["synthetic"]["data_settings"]
    monkeypatch.chdir("/")
    items, _ = training_items(out / "meta.json", 0, logging.getLogger("test"))
    original, _ = training_items(meta, 0, logging.getLogger("test"))
    assert [(i.id, [p.resolve() for p in i.paths]) for i in items] == \
           [(i.id, [p.resolve() for p in i.paths]) for i in original]
    assert read_jsonl(out / "rejects.jsonl") == []


def test_bad_records_are_left_out_with_their_reason(meta, processor, tmp_path):
    records = read_jsonl(meta.parent / "train.jsonl")
    no_answer = {**records[0], "conversations": records[0]["conversations"][:1]}
    mismatch = {**records[1], "conversations": [{"from": "human", "value": "<video>\n<video>\nTwice?"},
                                                records[1]["conversations"][1]]}
    missing = {**records[2], "video": "frames/gone/"}
    bad = [no_answer, mismatch, missing]
    (meta.parent / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad + records[3:]))
    entry = {**json.loads(meta.read_text())["synthetic"], "annotation": "bad.jsonl"}
    (meta.parent / "bad_meta.json").write_text(json.dumps({"synthetic": entry}))

    out = tmp_path / "checked"
    summary = check_training_data(meta.parent / "bad_meta.json", processor, out, max_seq_length=4096,
                                  over_length="drop")
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(r["record"], r["reason"].split(":")[0], r["stage"]) for r in rejects] == [
        (records[0]["id"], "no_answer", "check"), (records[1]["id"], "placeholder_mismatch", "check"),
        (records[2]["id"], "missing_media", "check")]
    assert all(r["file"].endswith("bad.jsonl") and r["dataset"] == "synthetic" for r in rejects)
    assert summary["rejects_by_reason"] == {"missing_media": 1, "no_answer": 1, "placeholder_mismatch": 1}
    assert summary["accepted"] == 5 and summary["datasets"]["synthetic"]["rejected"] == 3
    assert [r["id"] for r in _records(out)] == [r["id"] for r in records[3:]]
    assert json.loads((out / "meta.json").read_text())["synthetic"]["length"] == 5


def test_over_long_videos_are_truncated_to_what_fits_or_left_out(meta, processor, tmp_path):
    limit = 50  # one 32-pixel frame is 4 visual tokens + 2; two frames and the text don't fit
    out = tmp_path / "truncated"
    summary = check_training_data(meta, processor, out, max_seq_length=limit, over_length="truncate_frames")
    videos = [r for r in read_jsonl(meta.parent / "train.jsonl") if "video" in r]
    assert summary["truncated"] == len(videos) and summary["rejected"] == 0
    assert all("truncated from 2 to 1 frames" in t["reason"] for t in summary["truncated_samples"])
    for record in _records(out):
        text, paths = record_text(record), record_media_paths(record, meta.parent)
        assert text.placeholders == text.media_count == len(paths)
        encoded = encode_sample(processor, load_images(paths), text.prompt, text.target, media_type=text.media_type)
        assert len(encoded["input_ids"]) <= limit  # what training encodes fits
    assert summary["tokens"]["longest"] <= limit

    dropped = check_training_data(meta, processor, tmp_path / "dropped", max_seq_length=limit, over_length="drop")
    assert dropped["rejects_by_reason"] == {"over_length": len(videos)} and dropped["truncated"] == 0
    assert "over max_seq_length 50" in read_jsonl(tmp_path / "dropped" / "rejects.jsonl")[0]["reason"]

    with pytest.raises(DataError, match="no training record is left.*over_length"):
        check_training_data(meta, processor, tmp_path / "none", max_seq_length=20, over_length="drop")


def test_length_is_what_training_encodes(meta, processor):
    dataset = read_meta(meta)[0]
    for record in dataset.records():
        text, paths = record_text(record), record_media_paths(record, dataset.root)
        tiles = [1] * len(paths) if text.media_type == "video" else \
            [len(encode_sample(processor, load_images(paths), text.prompt, media_type="image",
                               max_dynamic_patch=dataset.max_dynamic_patch)["pixel_values"])]
        encoded = encode_sample(processor, load_images(paths), text.prompt, text.target, media_type=text.media_type,
                                max_dynamic_patch=dataset.max_dynamic_patch)
        assert sample_length(processor, text.prompt, text.target, text.media_type, tiles) == len(encoded["input_ids"])
