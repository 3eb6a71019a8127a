"""Extract one shard's frames into the cache, in parallel, with a timeout per item.

Each item's output lives in ``<cache_root>/<key[:2]>/<key>/``: ``frames.json`` (timestamps, size, or the
reject reason) and, for a video, ``frames/`` holding only ``frame_000001.jpg``... in time order (the names
InternVL's frame-folder loader sorts by; it opens every file of that folder as an image). A folder is
built as a hidden ``.<key>.tmp-<host>-<pid>-<random>`` sibling and renamed into place when complete, so a
folder under its key is always complete; a killed extraction leaves only a temporary folder, which no
reader trusts and the next attempt at that key removes.

Work runs in ``workers`` processes (one single-threaded decoder each). The parent kills a worker whose item
runs past ``timeout_s`` (with the ffmpeg processes it started) and rejects that item: a hanging decode is a
reject, never a hang, and a crashing decoder costs one item, not the shard.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import time
from pathlib import Path

from PIL import Image

from vidtune.atomic import dumps_json, remove_stale_temporaries, temp_sibling
from vidtune.errors import MediaError
from vidtune.frames.decode import read_frames
from vidtune.frames.manifest import FORMAT_VERSION
from vidtune.frames.settings import FrameSettings
from vidtune.rejects import reason

RECORD = "frames.json"
FRAMES = "frames"  # the subfolder that holds a video's frames and nothing else
PROGRESS_EVERY_S = 10.0
# Errors of the disk the cache is on, never of a video: they fail the shard instead of rejecting its items,
# since a reject would be written into the shard index and outlive the fault.
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def cache_folder(cache_root: str | os.PathLike, key: str) -> Path:
    return Path(cache_root) / key[:2] / key


def frames_folder(cache_root: str | os.PathLike, key: str) -> Path:
    return cache_folder(cache_root, key) / FRAMES


def frame_name(number: int) -> str:
    return f"frame_{number:06d}.jpg"


# --- one item (runs in a worker) --------------------------------------------------------------------------

def load_record(folder: Path) -> dict | None:
    """The record of a complete cache folder, or None when there is none to trust."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("format") != FORMAT_VERSION:
        return None
    if not all((folder / FRAMES / name).is_file() for name in record.get("frames", [])):
        return None
    return record


def extract_item(item: dict, cache_root: str | os.PathLike, settings: FrameSettings) -> dict:
    """Extract (or reuse) one item; returns its record (what ``frames.json`` holds)."""
    folder = cache_folder(cache_root, item["key"])
    record = load_record(folder)
    if record is not None:
        return record
    temp = temp_sibling(folder, directory=True)  # removes stale temporaries of this key first
    try:
        record = _extract_into(item, temp, settings)
        (temp / RECORD).write_text(dumps_json(record), encoding="utf-8")
        _publish(temp, folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return record


def _extract_into(item: dict, temp: Path, settings: FrameSettings) -> dict:
    record: dict = {"format": FORMAT_VERSION, "media_type": item["media_type"]}
    if item["media_type"] == "image":
        try:
            with Image.open(item["path"]) as image:
                image.load()  # decodes every pixel: a truncated file fails here
                return {**record, "status": "ok", "width": image.width, "height": image.height}
        except (FileNotFoundError, PermissionError):
            raise  # about the file system, not the file's content: a reject that is not cached
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            return {**record, "status": "rejected", "reason": _reason(error)}  # PIL's "damaged image"
    try:
        images, times = read_frames(item["path"], settings, item["clip"])
    except MediaError as error:
        return {**record, "status": "rejected", "reason": _reason(error)}
    names = [frame_name(n) for n in range(1, len(images) + 1)]
    (temp / FRAMES).mkdir()
    for name, image in zip(names, images):
        image.save(temp / FRAMES / name, quality=settings.jpeg_quality)
    return {**record, "status": "ok", "frames": names, "timestamps": times, "width": images[0].width,
            "height": images[0].height}


def _publish(temp: Path, folder: Path) -> None:
    try:
        os.rename(temp, folder)
    except OSError:
        # Another job finished the same key first; keep a complete folder, replace anything else.
        if load_record(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(temp, folder)


def _reason(error: Exception) -> str:
    """The reject reason (``<class>: <detail>``, see :mod:`vidtune.rejects`) for a decoding error."""
    if isinstance(error, MediaError):
        return reason(error.code, error.problem + (f". What to do: {error.fix}" if error.fix else ""))
    if isinstance(error, Image.UnidentifiedImageError):
        return reason("unreadable_media", "cannot open as an image (unknown or corrupt format)")
    return reason("unreadable_media", f"cannot decode: {error}")


# --- the shard --------------------------------------------------------------------------------------------

def item_result(item: dict, record: dict, cache_root: str | os.PathLike) -> dict:
    """An item's entry in the shard index; built from the record, so the same whether reused or not."""
    result = {"status": record["status"], "sample_ids": item["sample_ids"]}
    if record["status"] != "ok":
        return {**result, "reason": record["reason"], "file": item["path"]}
    result.update(media_type=record["media_type"], width=record["width"], height=record["height"])
    if record["media_type"] == "image":
        return {**result, "image": item["path"]}
    return {**result, "frames_dir": f"{frames_folder(cache_root, item['key'])}/", "frames": record["frames"],
            "timestamps": record["timestamps"]}


def extract_shard(manifest: dict, cache_root: str | os.PathLike = Path("results/frames/cache"),
                  workers: int = 2, timeout_s: float | None = None, log: logging.Logger | None = None) -> dict:
    """Extract every item of a shard manifest; returns the shard index.

    ``{"items": {key: result}, "summary": {"extracted", "reused", "rejected", "frames_written"}}``: the
    items part depends only on the manifest and the files; the summary says what this run did.
    ``timeout_s`` (a job limit, not in the manifest) defaults to the schema's.
    """
    log = log or logging.getLogger(__name__)
    settings = FrameSettings(**manifest["settings"])
    if timeout_s is not None:
        settings = dataclasses.replace(settings, timeout_s=float(timeout_s))
    items = {item["key"]: item for item in manifest["items"]}
    records, todo = {}, []
    for key, item in items.items():
        if not os.path.exists(item["path"]):
            records[key] = {"status": "rejected",
                            "reason": reason("missing_media", f"{item['path']} does not exist")}
            continue
        record = load_record(cache_folder(cache_root, key))
        if record is None:
            todo.append(item)
        else:
            records[key] = record
    reused = len(records)
    log.info("frames: shard %s: %d items, %d cached, %d to extract with %d worker(s)",
             manifest.get("shard"), len(items), reused, len(todo), workers)
    fresh = _run_pool(todo, cache_root, settings, workers, log)
    records.update(fresh)
    results = {key: item_result(items[key], records[key], cache_root) for key in sorted(items)}
    summary = {
        "extracted": sum(r["status"] == "ok" for r in fresh.values()),
        "reused": sum(r["status"] == "ok" for k, r in records.items() if k not in fresh),
        "rejected": sum(r["status"] != "ok" for r in records.values()),
        "frames_written": sum(len(r.get("frames", [])) for r in fresh.values()),
    }
    log.info("frames: shard %s done: %s", manifest.get("shard"), summary)
    return {"items": results, "summary": summary}


# --- worker processes -------------------------------------------------------------------------------------

def _worker_main(connection, cache_root: str, settings: FrameSettings) -> None:
    os.setpgrp()  # so the parent can kill this worker together with any ffmpeg it started
    os.environ["OMP_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        item = connection.recv()
        if item is None:
            return
        try:
            connection.send(extract_item(item, cache_root, settings))
        except Exception as error:  # rejects the item (not cached), never the shard; a full disk fails it
            storage = isinstance(error, OSError) and error.errno in STORAGE_ERRORS
            connection.send({"status": "storage_error" if storage else "rejected", "transient": True,
                             "reason": reason("extraction_failed", str(error))})


class _Worker:
    def __init__(self, context, cache_root: str, settings: FrameSettings):
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, cache_root, settings), daemon=True)
        self.process.start()
        child.close()
        self.item: dict | None = None
        self.started = 0.0

    def give(self, item: dict) -> None:
        self.item, self.started = item, time.monotonic()
        self.connection.send(item)

    def kill(self) -> None:
        for kill in (lambda: os.killpg(self.process.pid, signal.SIGKILL), self.process.kill):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
        self.process.join()
        self.connection.close()

    def stop(self) -> None:
        try:
            self.connection.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.kill()


def _run_pool(todo: list[dict], cache_root, settings: FrameSettings, workers: int,
              log: logging.Logger) -> dict[str, dict]:
    if not todo:
        return {}
    if workers < 1:
        raise ValueError("workers must be at least 1")
    # fork: workers start at once with everything imported, and a Snakemake script (which has no
    # ``if __name__ == "__main__"`` guard) is not re-run in each of them as spawn/forkserver would do.
    context = multiprocessing.get_context("fork")
    pending, records = list(reversed(todo)), {}
    pool = [_Worker(context, str(cache_root), settings) for _ in range(min(workers, len(todo)))]
    progress = _Progress(len(todo), log)
    try:
        while pending or any(w.item for w in pool):
            for worker in pool:
                if worker.item is None and pending:
                    worker.give(pending.pop())
            busy = [w for w in pool if w.item]
            deadline = min(w.started for w in busy) + settings.timeout_s
            ready = multiprocessing.connection.wait(
                [w.connection for w in busy], timeout=max(0.0, min(deadline - time.monotonic(), 1.0)))
            for number, worker in enumerate(pool):
                record = None
                if worker.connection in ready:
                    try:
                        record = worker.connection.recv()
                    except (EOFError, OSError):
                        worker.process.join(1)
                        code = worker.process.exitcode
                        how = f"signal {-code}" if code and code < 0 else f"exit code {code}"
                        record = {"status": "rejected", "transient": True,
                                  "reason": reason("decoder_crashed", f"the decoder process died ({how})")}
                elif worker.item and time.monotonic() - worker.started > settings.timeout_s:
                    timeout = f"timed out after {settings.timeout_s:g} s (hanging decode)"
                    record = {"status": "rejected", "transient": True, "reason": reason("decode_timeout", timeout)}
                if record is None:
                    continue
                key = worker.item["key"]
                if record["status"] == "storage_error":
                    raise OSError(f"cannot write frames to the cache {cache_root} ({record['reason']}, at "
                                  f"{worker.item['path']}). What to do: free space or fix the file system "
                                  "there, then run again; the frames already cached are kept")
                records[key] = {k: v for k, v in record.items() if k != "transient"}
                if record.get("transient"):
                    worker.kill()
                    remove_stale_temporaries(cache_folder(cache_root, key))
                    pool[number] = _Worker(context, str(cache_root), settings)
                else:
                    worker.item = None
                progress.done(len(records[key].get("frames", [])))
    finally:
        for worker in pool:
            if worker.item:  # stopped mid-item (the shard failed): its temporary folder goes too
                worker.kill()
                remove_stale_temporaries(cache_folder(cache_root, worker.item["key"]))
            else:
                worker.stop()
    progress.report(final=True)
    return records


class _Progress:
    """Progress lines: items done, frames/s, ETA; every few seconds and at the end."""

    def __init__(self, total: int, log: logging.Logger):
        self.total, self.log = total, log
        self.items = self.frames = 0
        self.start = self.last = time.monotonic()

    def done(self, frames: int) -> None:
        self.items += 1
        self.frames += frames
        if time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.report()

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        eta = (self.total - self.items) * elapsed / max(self.items, 1)
        self.log.info("frames: %d/%d items, %.1f frames/s, %s %s", self.items, self.total,
                      self.frames / elapsed, "took" if final else "ETA",
                      time.strftime("%H:%M:%S", time.gmtime(elapsed if final else eta)))
