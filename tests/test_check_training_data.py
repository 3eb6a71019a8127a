"""The check_training_data step on the tiny model: what is left out and why, truncation, and the files
training reads (the step's place in the DAG and its reruns: test_reach, test_demo)."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from vidtune.atomic import read_jsonl
from vidtune.check_training_data import check_dataset, combine_summaries, write_training_meta
from vidtune.errors import DataError
from vidtune.internvl_format import read_meta, record_media_paths, record_text
from vidtune.families import Media
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.modeling import load_images, load_processor, media_shape
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.training.data import training_items


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), 8, num_frames=2, size=32, images=2)


@pytest.fixture(scope="module")
def processor(tiny):
    return load_processor(tiny)


def _check(meta, processor, out, annotation="train.jsonl", max_seq_length=4096, over_length="drop"):
    return check_dataset(meta.parent / annotation, meta.parent, processor, out, family=INTERNVL, dataset="synthetic",
                         max_dynamic_patch=6, max_seq_length=max_seq_length, over_length=over_length)


def test_good_records_pass_unchanged_into_files_training_reads(meta, processor, tmp_path, monkeypatch):
    summary = _check(meta, processor, tmp_path / "synthetic")
    assert summary["records"] == summary["accepted"] == 8 and summary["rejected"] == summary["truncated"] == 0
    assert read_jsonl(tmp_path / "synthetic" / "train.jsonl") == read_jsonl(meta.parent / "train.jsonl")
    assert read_jsonl(tmp_path / "synthetic" / "rejects.jsonl") == []

    written = write_training_meta(meta, {"synthetic": tmp_path / "synthetic" / "train.jsonl"},
                                  tmp_path / "meta.json")
    entry = written["synthetic"]
    assert entry["annotation"] == "synthetic/train.jsonl" and entry["length"] == 8
    assert not os.path.isabs(entry["root"])  # relative to the checked meta.json, so the project can move
    assert entry["data_settings"] == json.loads(meta.read_text())["synthetic"]["data_settings"]
    assert json.loads((tmp_path / "meta.json").read_text()) == written
    monkeypatch.chdir("/")
    items, _ = training_items(tmp_path / "meta.json", 0, logging.getLogger("test"))
    original, _ = training_items(meta, 0, logging.getLogger("test"))
    assert [(i.id, [p.resolve() for p in i.paths]) for i in items] == \
           [(i.id, [p.resolve() for p in i.paths]) for i in original]


def test_bad_records_are_left_out_with_their_reason(meta, processor, tmp_path):
    records = read_jsonl(meta.parent / "train.jsonl")
    no_answer = {**records[0], "conversations": records[0]["conversations"][:1]}
    mismatch = {**records[1], "conversations": [{"from": "human", "value": "<video>\n<video>\nTwice?"},
                                                records[1]["conversations"][1]]}
    missing = {**records[2], "video": "frames/gone/"}
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                for r in [no_answer, mismatch, missing, *records[3:]]))
    summary = check_dataset(tmp_path / "bad.jsonl", meta.parent, processor, tmp_path / "out", family=INTERNVL,
                            dataset="synthetic",
                            max_dynamic_patch=6, max_seq_length=4096, over_length="drop")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["record"], r["reason"].split(":")[0], r["stage"]) for r in rejects] == [
        (records[0]["id"], "no_answer", "check"), (records[1]["id"], "placeholder_mismatch", "check"),
        (records[2]["id"], "missing_media", "check")]
    assert all(r["file"].endswith("bad.jsonl") and r["dataset"] == "synthetic" for r in rejects)
    assert summary["rejects_by_reason"] == {"missing_media": 1, "no_answer": 1, "placeholder_mismatch": 1}
    assert summary["accepted"] == 5 and summary["rejected"] == 3
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")] == [r["id"] for r in records[3:]]


def test_over_long_videos_are_truncated_to_what_fits_or_left_out(meta, processor, tmp_path):
    limit = 50  # one 32-pixel frame is 4 visual tokens + 2; two frames and the text don't fit
    summary = _check(meta, processor, tmp_path / "truncated", max_seq_length=limit, over_length="truncate_frames")
    videos = [r for r in read_jsonl(meta.parent / "train.jsonl") if "video" in r]
    assert summary["truncated"] == len(videos) and summary["rejected"] == 0
    assert all("truncated from 2 to 1 frames" in t["reason"] for t in summary["truncated_samples"])
    for record in read_jsonl(tmp_path / "truncated" / "train.jsonl"):
        text, paths = record_text(record), record_media_paths(record, meta.parent)
        assert text.placeholders == text.media_count == len(paths)
        encoded = INTERNVL.encode(processor, Media(load_images(paths), text.media_type), text.prompt, text.target)
        assert len(encoded["input_ids"]) <= limit  # what training encodes fits
    assert summary["tokens"]["longest"] <= limit

    dropped = _check(meta, processor, tmp_path / "dropped", max_seq_length=limit)
    assert dropped["rejects_by_reason"] == {"over_length": len(videos)} and dropped["truncated"] == 0
    assert "over max_seq_length 50" in read_jsonl(tmp_path / "dropped" / "rejects.jsonl")[0]["reason"]

    both = combine_summaries([summary, dropped])
    assert both["records"] == 16 and both["rejected"] == len(videos) and both["truncated"] == len(videos)
    assert both["rejects_by_reason"] == {"over_length": len(videos)} and both["tokens"]["longest"] <= limit


def test_a_run_with_no_record_left_fails_before_training(meta, processor, tmp_path):
    _check(meta, processor, tmp_path / "none", max_seq_length=20)
    assert read_jsonl(tmp_path / "none" / "train.jsonl") == []
    with pytest.raises(DataError, match="no training record is left in synthetic"):
        write_training_meta(meta, {"synthetic": tmp_path / "none" / "train.jsonl"}, tmp_path / "meta.json")
    assert not (tmp_path / "meta.json").exists()


def test_length_is_what_training_encodes(meta, processor):
    dataset = read_meta(meta)[0]
    for record in dataset.records():
        text, paths = record_text(record), record_media_paths(record, dataset.root)
        media = Media(load_images(paths), text.media_type, None, dataset.max_dynamic_patch)
        encoded = INTERNVL.encode(processor, media, text.prompt, text.target)
        # From the files' sizes (no pixel decoded), and from the decoded media: the same count.
        shape = media_shape(paths, record, text.media_type, dataset.max_dynamic_patch)
        assert shape.sizes == media.shape.sizes
        assert INTERNVL.sample_length(processor, shape, text.prompt, text.target) == len(encoded["input_ids"])
