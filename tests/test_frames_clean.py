"""Collecting the frame cache: folders no frame index refers to go, folders in use stay, a running
extraction is never raced."""

from __future__ import annotations

import json
import os

import pytest

from vidtune.errors import VidtuneError
from vidtune.frames.clean import collect
from vidtune.frames.extract import FRAMES, RECORD, cache_folder


def cache_entry(results, key: str, frames: int = 2, mtime: float = 1_000_000) -> None:
    folder = cache_folder(results / "frames" / "cache", key)
    (folder / FRAMES).mkdir(parents=True)
    (folder / RECORD).write_text('{"status": "ok"}')
    for number in range(frames):
        (folder / FRAMES / f"frame_{number:06d}.jpg").write_bytes(b"x" * 100)
    os.utime(folder, (mtime, mtime))


def index(results, dataset: str, shard: str, keys: list[str], mtime: float = 2_000_000) -> None:
    path = results / "datasets" / dataset / "frames" / "index" / f"shard_{shard}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"items": {key: {"status": "ok"} for key in keys}}))
    os.utime(path, (mtime, mtime))


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where Snakemake keeps its locks (.snakemake/locks)
    results = tmp_path / "results"
    for key in ("aa01", "aa02", "bb01", "cc01"):
        cache_entry(results, key)
    index(results, "demo", "000", ["aa01"])
    index(results, "other", "001", ["bb01", "dd01"])  # dd01: a reject, or a key with no folder
    return results


def test_folders_of_removed_videos_go_folders_in_use_stay(results):
    collected = collect(results)
    cache = results / "frames" / "cache"
    assert sorted(p.name for p in cache.glob("*/*")) == ["aa01", "bb01"]
    assert not (cache / "cc").exists()  # its last folder went
    assert (collected.removed, collected.kept, collected.kept_new) == (2, 2, 0)
    assert collected.freed_bytes == 2 * (200 + len('{"status": "ok"}'))
    assert "removed 2 frame cache folders" in collected.summary() and "432 bytes" in collected.summary()
    assert collect(results).removed == 0  # nothing left to collect


def test_newer_folders_and_temporaries_are_kept(results):
    cache_entry(results, "ee01", mtime=3_000_000)  # published after the newest index: an extraction's
    temporary = results / "frames" / "cache" / "ff" / ".ff01.tmp-host-1-x"
    temporary.mkdir(parents=True)
    collected = collect(results)
    assert collected.kept_new == 1 and (results / "frames" / "cache" / "ee" / "ee01").is_dir()
    assert temporary.is_dir()


def test_refuses_while_a_run_locks_a_frame_index(results):
    locks = results.parent / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/logs/clean_frames.log\n")  # its own run: no index
    (locks / "0.input.lock").write_text("results/datasets/demo/frames/index/shard_000.json\n")  # read only
    assert collect(results).removed == 2
    cache_entry(results, "cc01")
    (locks / "1.output.lock").write_text("results/demo/data/annotations.jsonl\n"
                                         "results/datasets/demo/frames/index/shard_000.json\n")
    with pytest.raises(VidtuneError, match="running Snakemake.*shard_000.json.*What to do: run clean_frames when"):
        collect(results)
    assert (results / "frames" / "cache" / "cc" / "cc01").is_dir()


def test_without_any_index_nothing_is_removed(tmp_path):
    cache_entry(tmp_path / "results", "aa01")
    assert collect(tmp_path / "results", lock_dir=tmp_path / "locks").removed == 0
    assert (tmp_path / "results" / "frames" / "cache" / "aa" / "aa01").is_dir()
