"""Shard manifests: byte-stable, sharded by group key, keyed by content and pixel settings."""

from __future__ import annotations

import os

from vidtune.atomic import dumps_json
from vidtune.frames import FrameSettings, build_manifests
from vidtune.frames.manifest import content_signature
from vidtune.samples import Sample


def sample(number, path, group, clip=(None, None), prompt="p", media_type="video"):
    return Sample(f"d/{number}", "d", media_type, path, prompt, "t", ("t",), group, *clip)


def write(root, name, data: bytes):
    (root / name).write_bytes(data)
    return name


def dumped(manifests):
    return [dumps_json(m) for m in manifests]


def test_manifests_are_byte_stable_and_ignore_captions(tmp_path):
    names = [write(tmp_path, f"v{i}.mp4", os.urandom(200_000) + bytes([i])) for i in range(12)]
    samples = [sample(i, name, f"video{i}") for i, name in enumerate(names)]
    settings = FrameSettings()
    first = build_manifests(samples, tmp_path, settings, 4)
    assert len(first) == 4 and sum(len(m["items"]) for m in first) == 12
    recaptioned = [sample(i, name, f"video{i}", prompt="a new caption") for i, name in enumerate(names)]
    assert dumped(build_manifests(list(reversed(recaptioned)), tmp_path, settings, 4)) == dumped(first)
    os.utime(tmp_path / names[0], (1, 1))  # touch / fresh checkout: same content, same key
    assert dumped(build_manifests(samples, tmp_path, settings, 4)) == dumped(first)


def test_adding_a_video_changes_only_its_own_shard(tmp_path):
    names = [write(tmp_path, f"v{i}.mp4", bytes([i]) * 1000) for i in range(10)]
    samples = [sample(i, name, f"video{i}") for i, name in enumerate(names)]
    before = dumped(build_manifests(samples, tmp_path, FrameSettings(), 3))
    extra = write(tmp_path, "new.mp4", b"new" * 1000)
    after = dumped(build_manifests(samples + [sample(99, extra, "new video")], tmp_path, FrameSettings(), 3))
    assert sum(a != b for a, b in zip(before, after)) == 1


def test_items_group_samples_and_clips_share_a_shard(tmp_path):
    name = write(tmp_path, "long.mp4", b"x" * 5000)
    samples = [sample(1, name, "long"), sample(2, name, "long", prompt="q"),
               sample(3, name, "long", clip=(1.0, 2.0)), sample(4, name, "long", clip=(2.0, None))]
    manifests = build_manifests(samples, tmp_path, FrameSettings(), 5)
    [shard] = [m for m in manifests if m["items"]]
    items = {tuple(i["sample_ids"]): i for i in shard["items"]}
    assert set(items) == {("d/1", "d/2"), ("d/3",), ("d/4",)}
    assert items[("d/3",)]["clip"] == [1.0, 2.0] and items[("d/4",)]["clip"] == [2.0, None]
    assert items[("d/1", "d/2")]["clip"] is None
    assert items[("d/1", "d/2")]["path"] == str(tmp_path / name)
    assert len({i["key"] for i in shard["items"]}) == 3
    assert shard["settings"] == FrameSettings().manifest_fields()  # the decode timeout is a job limit


def test_keys_follow_content_and_pixel_settings_only(tmp_path):
    name = write(tmp_path, "a.mp4", os.urandom(300_000))
    samples = [sample(1, name, "a")]

    def key(settings, root=tmp_path):
        [manifest] = build_manifests(samples, root, settings, 1)
        return manifest["items"][0]["key"]

    base = key(FrameSettings())
    assert key(FrameSettings(timeout_s=5)) == base
    assert key(FrameSettings(fps=3.0)) == base  # unused by the uniform policy
    assert key(FrameSettings(short_side=224)) != base
    assert key(FrameSettings(num_frames=4)) != base
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / name).write_bytes((tmp_path / name).read_bytes())
    assert key(FrameSettings(), moved) == base  # same content elsewhere: same cached frames
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 1
    (tmp_path / name).write_bytes(bytes(data))
    assert key(FrameSettings()) != base  # the tail is part of the signature


def test_content_signature_reads_only_head_and_tail(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as handle:
        handle.truncate(50_000_000)
    assert content_signature(path).startswith("50000000:")
    assert content_signature(tmp_path / "missing") is None
