"""Collect the frame cache: remove the cache folders that no frame index refers to (``snakemake clean_frames``).

The cache (``<results>/frames/cache/<key[:2]>/<key>/``, see :mod:`vidtune.frames.extract`) only grows: a
removed video, or a changed frame setting, leaves its folders behind. A folder is in use while a shard index
(``<results>/datasets/*/frames/index/shard_*.json``) lists its key; every other one can go.

An extraction that is running has published folders its index does not list yet, so collecting is refused
while a Snakemake run holds a lock on a frame index, and, should a run have been started with ``--nolock``,
folders changed after the newest index are kept. Hidden temporaries are never touched (extraction removes
its own stale ones). A folder is renamed to a hidden temporary before it is deleted, so no reader sees it
half removed.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vidtune.atomic import temp_sibling
from vidtune.errors import VidtuneError

INDEX_PATTERN = "datasets/*/frames/index/shard_*.json"  # under the results folder
CACHE = "frames/cache"  # under the results folder


@dataclass(frozen=True)
class Collected:
    """What a collection did."""

    removed: int
    freed_bytes: int
    kept: int
    kept_new: int  # unreferenced, but changed after the newest index: perhaps an extraction's

    def summary(self) -> str:
        return (f"removed {self.removed} frame cache folders that no frame index refers to, freeing "
                f"{human_bytes(self.freed_bytes)}; kept {self.kept} in use"
                + (f" and {self.kept_new} newer than the newest index" if self.kept_new else ""))


def human_bytes(size: float) -> str:
    if size < 1024:
        return f"{size} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            break
    return f"{size:.1f} {unit}"


def referenced_keys(index_paths: list[Path]) -> set[str]:
    """The cache keys the shard indexes list (every status: a reject's record is cached too)."""
    keys: set[str] = set()
    for path in index_paths:
        try:
            keys.update(json.loads(path.read_text(encoding="utf-8"))["items"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise VidtuneError(f"cannot read the frame index ({error})", file=path,
                               fix="rerun the workflow (it rewrites the index), then clean_frames") from None
    return keys


def locked_indexes(results: Path, lock_dir: Path) -> list[str]:
    """Frame indexes that a running Snakemake has locked as outputs: it may be extracting frames."""
    locked = []
    for lock in sorted(lock_dir.glob("*.output.lock")):
        try:
            lines = lock.read_text(encoding="utf-8").splitlines()
        except OSError:  # the run ended and removed it meanwhile
            continue
        for line in lines:
            try:
                relative = Path(os.path.abspath(line.strip())).relative_to(os.path.abspath(results))
            except ValueError:
                continue
            if fnmatch.fnmatch(str(relative), INDEX_PATTERN):
                locked.append(line.strip())
    return locked


def folder_bytes(folder: Path) -> int:
    return sum(os.lstat(os.path.join(parent, name)).st_size for parent, _, files in os.walk(folder) for name in files)


def collect(results: str | os.PathLike, lock_dir: str | os.PathLike = ".snakemake/locks",
            log: logging.Logger | None = None) -> Collected:
    """Remove the cache folders under ``results`` that no frame index refers to; see the module's notes."""
    log = log or logging.getLogger(__name__)
    results, lock_dir = Path(results), Path(lock_dir)
    locked = locked_indexes(results, lock_dir)
    if locked:
        raise VidtuneError(f"a running Snakemake is making frame indexes here ({locked[0]}...), so its new "
                           "cache folders are not listed yet", file=lock_dir,
                           fix="run clean_frames when it has finished (after a killed run, `snakemake --unlock`)")
    indexes = sorted(results.glob(INDEX_PATTERN))
    cache = results / CACHE
    if not indexes:
        log.info("no frame index under %s: nothing to compare the cache with, nothing removed", results)
        return Collected(0, 0, 0, 0)
    keys = referenced_keys(indexes)
    newest_index = max(path.stat().st_mtime_ns for path in indexes)
    removed = freed = kept = kept_new = 0
    for folder in sorted(cache.glob("*/*")):
        if folder.name.startswith(".") or not folder.is_dir():
            continue  # a temporary of a running or killed extraction
        if folder.name in keys:
            kept += 1
            continue
        if folder.stat().st_mtime_ns > newest_index:
            kept_new += 1
            continue
        size = folder_bytes(folder)
        doomed = temp_sibling(folder, directory=True)
        os.replace(folder, doomed)  # replaces the new empty temporary: no reader sees a half-removed folder
        shutil.rmtree(doomed)
        log.info("removed %s (%s)", folder, human_bytes(size))
        removed, freed = removed + 1, freed + size
        try:
            folder.parent.rmdir()  # the <key[:2]> folder, when this was its last entry
        except OSError:
            pass
    return Collected(removed, freed, kept, kept_new)
