"""Split assignment: deterministic, stable as data grows, groups never straddle, official splits win."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import pytest

from vidtune.errors import ConfigError
from vidtune.samples import Sample
from vidtune.split import assign_splits

RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0}


def clips(videos, clips_per_video=3, official=None):
    return [Sample(sample_id=f"d/{video}/{k}", dataset="d", media_type="video", media_path=f"{video}.mp4",
                   prompt="p", target="t", references=("t",), group_key=video, clip_start=float(k),
                   clip_end=k + 1.0, official_split=(official or {}).get(video))
            for video in videos for k in range(clips_per_video)]


def by_id(samples, cfg):
    return dict(zip((s.sample_id for s in samples), assign_splits(samples, cfg)))


def test_adding_ten_percent_more_videos_moves_no_existing_sample():
    before = clips([f"video{i:04d}" for i in range(500)])
    grown = before + clips([f"new{i:04d}" for i in range(50)])
    old, new = by_id(before, RATIOS), by_id(grown, RATIOS)
    assert all(new[key] == split for key, split in old.items())


def test_order_of_samples_does_not_matter():
    samples = clips([f"video{i}" for i in range(100)])
    assert by_id(samples, RATIOS) == by_id(list(reversed(samples)), RATIOS)


def test_clips_of_one_video_never_straddle_splits():
    samples = clips([f"video{i}" for i in range(300)], clips_per_video=5)
    groups = defaultdict(set)
    for sample, split in zip(samples, assign_splits(samples, RATIOS)):
        groups[sample.group_key].add(split)
    assert all(len(splits) == 1 for splits in groups.values())


def test_ratios_are_respected_roughly():
    samples = clips([f"video{i}" for i in range(4000)], clips_per_video=1)
    counts = Counter(assign_splits(samples, RATIOS))
    assert counts["train"] == pytest.approx(3200, abs=150)
    assert counts["val"] == pytest.approx(400, abs=80) and counts["test"] == pytest.approx(400, abs=80)
    only_train = assign_splits(samples, {"train": 1, "val": 0, "test": 0})
    assert set(only_train) == {"train"}


def test_seed_changes_the_assignment():
    samples = clips([f"video{i}" for i in range(200)], clips_per_video=1)
    assert assign_splits(samples, RATIOS) != assign_splits(samples, {**RATIOS, "seed": 1})


def test_official_split_wins_and_group_follows_it():
    samples = clips(["a", "b"], official={"a": "test"})
    # One clip of "b" has an official split: its group-mates follow it rather than straddle.
    samples[3] = dataclasses.replace(samples[3], official_split="val")
    splits = by_id(samples, {"train": 1.0, "val": 0.0, "test": 0.0})
    assert {splits[f"d/a/{k}"] for k in range(3)} == {"test"}
    assert {splits[f"d/b/{k}"] for k in range(3)} == {"val"}
    ignored = by_id(samples, {"train": 1.0, "val": 0.0, "test": 0.0, "use_official": False})
    assert set(ignored.values()) == {"train"}


def test_zero_ratios_are_a_config_error():
    with pytest.raises(ConfigError, match="add up to 0"):
        assign_splits(clips(["a"]), {"train": 0, "val": 0, "test": 0})
