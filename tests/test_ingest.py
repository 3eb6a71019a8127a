"""Ingestion's common checks: each bad input becomes a reject with its reason; good samples still flow;
the step fails only when nothing is usable or rejects pass max_reject_share."""

from __future__ import annotations

import json
import os

import pytest

import fixtures_datasets as fx
from vidtune.errors import DataError
from vidtune.ingest import ingest_dataset

GOOD = 20  # enough good records that one bad one stays under the default 5%


def dataset(tmp_path, bad_records, *, share=1.0, extra_files=None):
    """A jsonl dataset with GOOD good clips plus ``bad_records``; returns (name, cfg)."""
    root = tmp_path / "data"
    records = []
    for index in range(GOOD):
        fx.make_video(root / f"good_{index:02d}.mp4")
        records.append({"video": f"good_{index:02d}.mp4", "caption": f"good clip {index}", "duration": 1.0})
    fx.write_jsonl(root / "ann.jsonl", records + bad_records)
    return {"format": "jsonl", "root": str(root), "annotations": str(root / "ann.jsonl"),
            "max_reject_share": share}


def only_reject(result):
    assert len(result.samples) == GOOD, "good samples must still flow"
    (reject,) = result.rejects
    return reject


@pytest.mark.parametrize("record, code", [
    ({"video": "missing.mp4", "caption": "x"}, "missing_media"),
    ({"video": "../outside.mp4", "caption": "x"}, "path_escapes_root"),
    ({"video": "sub/../../outside.mp4", "caption": "x"}, "path_escapes_root"),
    ({"video": "/etc/passwd", "caption": "x"}, "path_escapes_root"),
    ({"video": "good_00.mp4", "id": "blank", "caption": "   \n\t"}, "empty_target"),
    ({"video": "good_01.mp4", "id": "empty", "caption": ""}, "empty_target"),
    ({"video": "good_02.mp4", "caption": "same id as an earlier record"}, "duplicate_id"),
    ({"video": "good_03.mp4", "id": "w1", "start": 0.8, "end": 0.2, "caption": "x"}, "bad_clip_window"),
    ({"video": "good_03.mp4", "id": "w2", "start": -1, "end": 0.5, "caption": "x"}, "bad_clip_window"),
    ({"video": "good_03.mp4", "id": "w3", "start": 1.0, "end": 3.0, "duration": 1.0, "caption": "x"},
     "clip_outside_duration"),
    ({"video": "good_03.mp4", "id": "w5", "start": 2.0, "end": 3.0, "caption": "x"},  # 1 s, from the header
     "clip_outside_duration"),
    ({"video": "good_03.mp4", "id": "w4", "start": 2.0, "end": 3.0, "duration": 1.0, "caption": "x"},
     "clip_outside_duration"),
    ({"video": "good_03.mp4", "id": "zero", "duration": 0, "caption": "x"}, "zero_length_media"),
    ({"caption": "no media"}, "missing_field"),
    ({"video": "good_04.mp4", "id": "nocap"}, "missing_field"),
    ({"video": "good_05.mp4", "id": "s", "caption": "x", "split": "holdout"}, "malformed_record"),
])
def test_bad_record_is_rejected_with_reason(tmp_path, record, code):
    cfg = dataset(tmp_path, [record])
    reject = only_reject(ingest_dataset("d", cfg))
    assert reject.reason.startswith(code + ":"), reject.reason
    assert reject.file == cfg["annotations"]
    assert reject.record == f"line {GOOD + 1}"


def test_malformed_line_is_rejected(tmp_path):
    cfg = dataset(tmp_path, [])
    with open(cfg["annotations"], "a") as handle:
        handle.write('{"video": "good_00.mp4", "caption": "trunc\n')
    reject = only_reject(ingest_dataset("d", cfg))
    assert reject.reason.startswith("malformed_record:") and reject.record == f"line {GOOD + 1}"


def test_empty_media_file_is_rejected(tmp_path):
    cfg = dataset(tmp_path, [{"video": "empty.mp4", "caption": "x"}])
    (tmp_path / "data" / "empty.mp4").write_bytes(b"")
    assert only_reject(ingest_dataset("d", cfg)).reason.startswith("empty_media:")


def test_symlink_leading_out_of_root_is_rejected(tmp_path):
    cfg = dataset(tmp_path, [{"video": "link.mp4", "caption": "x"}, {"video": "dirlink/a.mp4", "caption": "y"}])
    outside = tmp_path / "outside"
    fx.make_video(outside / "a.mp4")
    os.symlink(outside / "a.mp4", tmp_path / "data" / "link.mp4")
    os.symlink(outside, tmp_path / "data" / "dirlink")
    result = ingest_dataset("d", cfg)
    assert len(result.samples) == GOOD
    assert [r.reason.split(":")[0] for r in result.rejects] == ["symlink_escapes_root"] * 2


def test_symlink_inside_root_and_absolute_path_inside_root_are_fine(tmp_path):
    root = tmp_path / "data"
    cfg = dataset(tmp_path, [{"video": "alias.mp4", "caption": "through a link"},
                             {"video": str((root / "good_01.mp4").resolve()), "id": "abs", "caption": "absolute"}])
    os.symlink(root / "good_00.mp4", root / "alias.mp4")
    result = ingest_dataset("d", cfg)
    assert not result.rejects
    by_id = {s.sample_id: s for s in result.samples}
    assert by_id["d/abs"].media_path == "good_01.mp4"  # stored relative to the root
    assert by_id["d/alias.mp4"].media_path == "alias.mp4"


def test_paths_are_normalised_and_targets_stripped(tmp_path):
    cfg = dataset(tmp_path, [{"id": "dot", "video": "./sub/../good_00.mp4", "caption": "  padded  "}])
    sample = {s.sample_id: s for s in ingest_dataset("d", cfg).samples}["d/dot"]
    assert sample.media_path == "good_00.mp4"
    assert sample.target == "padded" and sample.references == ("padded",)


def test_odd_file_names_pass_through(tmp_path):
    names = ["with space.mp4", "quote'\"s.mp4", "$(touch pwned).mp4", "naïve — ünïcode.mp4"]
    cfg = dataset(tmp_path, [{"video": n, "caption": f"odd {i}"} for i, n in enumerate(names)])
    for name in names:
        fx.make_video(tmp_path / "data" / name)
    result = ingest_dataset("d", cfg)
    assert not result.rejects
    assert {s.media_path for s in result.samples} >= set(names)
    assert not (tmp_path / "data" / "pwned").exists()


def test_clip_end_past_the_video_is_cut_to_it_everywhere(tmp_path):
    """A 2.0-6.0 clip of a 4 s video is the 2.0-4.0 clip: in the table, the id, the split and the frames."""
    from vidtune.frames import FrameSettings, build_manifests
    from vidtune.internvl_files import internvideo_record
    from vidtune.samples import read_split_table, write_split_table
    from vidtune.split import assign_splits

    root = tmp_path / "data"
    fx.make_video(root / "long.mp4", seconds=4.0)
    fx.write_jsonl(root / "ann.jsonl", [
        {"video": "long.mp4", "start": 2.0, "end": 6.0, "caption": "duration read from the header"},
        {"video": "long.mp4", "start": 1.0, "end": 6.0, "duration": 4.0, "caption": "annotated duration"},
        {"video": "long.mp4", "id": "named", "start": 3.0, "end": 9.0, "caption": "an id of its own"},
        {"video": "long.mp4", "start": 2.0, "end": 8.0, "caption": "the same clip as the first, cut"},
        {"video": "long.mp4", "start": 5.0, "end": 6.0, "caption": "starts after the end"},
    ])
    cfg = {"format": "jsonl", "root": str(root), "annotations": str(root / "ann.jsonl"), "max_reject_share": 1.0}
    result = ingest_dataset("d", cfg)
    windows = {s.sample_id: (s.clip_start, s.clip_end, s.duration) for s in result.samples}
    assert windows == {"d/long.mp4@2.0-4.0": (2.0, 4.0, 4.0), "d/long.mp4@1.0-4.0": (1.0, 4.0, 4.0),
                       "d/named": (3.0, 4.0, 4.0)}
    assert [r.reason.split(":")[0] for r in result.rejects] == ["duplicate_id", "clip_outside_duration"]
    assert "d/long.mp4@2.0-4.0" in result.rejects[0].reason

    splits = assign_splits(result.samples, {"train": 1.0, "val": 0.0, "test": 0.0, "seed": 0})
    write_split_table(tmp_path / "split.parquet", zip(result.samples, splits))
    assert {s.sample_id: (s.clip_start, s.clip_end, s.duration)
            for s, _ in read_split_table(tmp_path / "split.parquet")} == windows
    [manifest] = build_manifests(result.samples, root, FrameSettings(num_frames=2), 1)
    assert sorted(item["clip"] for item in manifest["items"]) == [[1.0, 4.0], [2.0, 4.0], [3.0, 4.0]]
    first = next(s for s in result.samples if s.sample_id == "d/long.mp4@2.0-4.0")
    assert (internvideo_record(first, root)["start"], internvideo_record(first, root)["end"]) == (2.0, 4.0)


def test_summary_counts_rejects_by_reason(tmp_path):
    cfg = dataset(tmp_path, [{"video": "missing.mp4", "caption": "x"}, {"video": "gone.mp4", "caption": "y"},
                             {"video": "good_00.mp4", "id": "e", "caption": " "}])
    result = ingest_dataset("d", cfg)
    assert result.summary == {
        "dataset": "d", "format": "jsonl", "records": GOOD + 3, "samples": GOOD, "rejected": 3,
        "reject_share": round(3 / (GOOD + 3), 6), "max_reject_share": 1.0,
        "rejects_by_reason": {"empty_target": 1, "missing_media": 2}}
    assert [s.sample_id for s in result.samples] == sorted(s.sample_id for s in result.samples)


def test_reject_share_over_threshold_fails_and_writes_rejects(tmp_path):
    cfg = dataset(tmp_path, [{"video": "missing.mp4", "caption": "x"}, {"video": "gone.mp4", "caption": "y"}],
                  share=0.05)  # 2 of 22 = 9%
    rejects_path = tmp_path / "out" / "rejects.jsonl"
    with pytest.raises(DataError) as error:
        ingest_dataset("mine", cfg, rejects_path=rejects_path)
    message = str(error.value)
    assert "'mine'" in message and "max_reject_share" in message and str(rejects_path) in message
    assert "missing_media 2" in message
    assert [r.reason.split(":")[0] for r in error.value.rejects] == ["missing_media"] * 2
    lines = [json.loads(line) for line in rejects_path.read_text().splitlines()]
    assert [line["reason"].split(":")[0] for line in lines] == ["missing_media"] * 2
    assert set(lines[0]) == {"file", "record", "reason"}


def test_reject_share_at_threshold_passes(tmp_path):
    cfg = dataset(tmp_path, [{"video": "missing.mp4", "caption": "x"}], share=1 / (GOOD + 1))
    assert len(ingest_dataset("d", cfg).rejects) == 1


def test_no_usable_sample_fails(tmp_path):
    root = tmp_path / "data"
    fx.write_jsonl(root / "ann.jsonl", [{"video": "missing.mp4", "caption": "x"}])
    cfg = {"format": "jsonl", "root": str(root), "annotations": str(root / "ann.jsonl"), "max_reject_share": 1.0}
    with pytest.raises(DataError, match=r"dataset 'd' has no usable sample .*missing_media 1"):
        ingest_dataset("d", cfg)


def test_missing_root_fails(tmp_path):
    with pytest.raises(DataError, match=r"datasets\.d\.root"):
        ingest_dataset("d", {"format": "jsonl", "root": str(tmp_path / "nope"), "annotations": "x"})


@pytest.mark.parametrize("fmt", sorted(fx.MAKERS))
def test_every_format_fixture_ingests_cleanly(tmp_path, fmt):
    result = ingest_dataset(fmt, fx.MAKERS[fmt](tmp_path))
    assert result.samples and not result.rejects
    assert all(not os.path.isabs(s.media_path) and ".." not in s.media_path.split("/") for s in result.samples)


def test_format_rejects_flow_through_ingest(tmp_path):
    cfg = fx.make_coco_dataset(tmp_path)
    path = tmp_path / "annotations" / "coco_karpathy_test.json"
    entries = json.loads(path.read_text())
    entries.append({"image": "val2014/COCO_val2014_000000000042.jpg"})  # no ground-truth caption
    path.write_text(json.dumps(entries))
    cfg["max_reject_share"] = 0.5
    result = ingest_dataset("coco", cfg)
    assert [r.reason.split(":")[0] for r in result.rejects] == ["empty_target"]
    assert len(result.samples) == 5


def test_same_inputs_give_byte_identical_tables(tmp_path):
    from vidtune.samples import write_split_table, write_table
    from vidtune.split import assign_splits

    cfg = fx.make_ego4d_dataset(tmp_path / "data", target="narrations")
    outputs = []
    for attempt in range(2):
        result = ingest_dataset("ego", cfg)
        write_table(tmp_path / f"samples{attempt}.parquet", result.samples)
        splits = assign_splits(result.samples, cfg["split"])
        write_split_table(tmp_path / f"split{attempt}.parquet", zip(result.samples, splits))
        outputs.append([(tmp_path / f"{kind}{attempt}.parquet").read_bytes() for kind in ("samples", "split")])
    assert outputs[0] == outputs[1]
