"""Shard manifests: which media items a frame-extraction job handles, and the cache key of each.

A media item is one (media file, clip window) pair; samples that share it are listed together. Videos are
put in shards by a stable hash of their group key, so every clip of one source video lands in the same
shard and adding a video changes only its own shard's manifest. Manifests hold no timestamps and are
sorted, so the same inputs give the same bytes: Snakemake then sees that editing a caption changes no
manifest, and re-extracts nothing.

The cache key of an item is a digest of everything that determines its output: a content signature of the
file (its size and a hash of its first and last 64 KiB: cheap to compute for 300k files, and unchanged by a
``touch`` or a fresh checkout), the clip window, the frame settings that change pixels, and
:data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from vidtune.frames.settings import FrameSettings
from vidtune.samples import Sample

FORMAT_VERSION = 2  # bump when the extraction changes its output for the same inputs
SIGNATURE_BYTES = 64 * 1024


def content_signature(path: str | os.PathLike) -> str | None:
    """``<size>:<hash of first and last 64 KiB>``, or None when the file cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest.update(handle.read(SIGNATURE_BYTES))
            if size > SIGNATURE_BYTES:
                handle.seek(max(SIGNATURE_BYTES, size - SIGNATURE_BYTES))
                digest.update(handle.read(SIGNATURE_BYTES))
    except OSError:
        return None
    return f"{size}:{digest.hexdigest()}"


def item_key(media_type: str, signature: str | None, path: str, clip: list | None,
             settings: FrameSettings) -> str:
    what = {"format": FORMAT_VERSION, "media_type": media_type, "signature": signature}
    if signature is None:
        what["missing"] = path  # never cached; a file that appears later gets a real signature
    if media_type == "video":
        what.update(clip=clip, settings=settings.output_fields())
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def shard_of(group_key: str, num_shards: int) -> int:
    return int.from_bytes(hashlib.sha256(group_key.encode()).digest()[:8], "big") % num_shards


def _clip(sample: Sample) -> list | None:
    if sample.media_type != "video" or (sample.clip_start is None and sample.clip_end is None):
        return None
    start = 0.0 if sample.clip_start is None else float(sample.clip_start)
    return [start, None if sample.clip_end is None else float(sample.clip_end)]


def build_manifests(samples: Iterable[Sample], dataset_root: str | os.PathLike, settings: FrameSettings,
                    num_shards: int, signature_threads: int = 8) -> list[dict]:
    """One JSON-able manifest per shard (list index = shard number); see the module docstring."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    groups: dict[tuple, list[Sample]] = collections.defaultdict(list)
    for sample in samples:
        path = str(Path(dataset_root) / sample.media_path)
        groups[(sample.media_type, path, json.dumps(_clip(sample)))].append(sample)
    paths = sorted({path for _, path, _ in groups})
    with ThreadPoolExecutor(signature_threads) as pool:  # reads are I/O bound
        signatures = dict(zip(paths, pool.map(content_signature, paths)))

    shards: list[dict[str, dict]] = [{} for _ in range(num_shards)]
    for (media_type, path, clip_json), members in sorted(groups.items()):
        clip = json.loads(clip_json)
        key = item_key(media_type, signatures[path], path, clip, settings)
        members.sort(key=lambda s: s.sample_id)
        shard = shards[shard_of(min(s.group_key for s in members), num_shards)]
        # Identical content at two paths is one item: it is extracted once, under the first path.
        item = shard.setdefault(key, {
            "key": key, "media_type": media_type, "path": path, "clip": clip,
            "duration": next((s.duration for s in members if s.duration is not None), None),
            "sample_ids": [],
        })
        item["sample_ids"] = sorted(set(item["sample_ids"]) | {s.sample_id for s in members})
    return [{"format": FORMAT_VERSION, "shard": number, "num_shards": num_shards,
             "settings": settings.manifest_fields(), "items": [items[key] for key in sorted(items)]}
            for number, items in enumerate(shards)]
