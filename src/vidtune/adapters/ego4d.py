"""``ego4d``: an Ego4D download folder, as the Ego4D CLI (``ego4d --output_directory <root>``) writes it.

Layout::

    <root>/v2/ego4d.json                      videos: video_uid, duration_sec, video_metadata.fps ...
    <root>/v2/annotations/narration.json      {video_uid: {narration_pass_1: {narrations, summaries}, ...}}
    <root>/v2/full_scale/<video_uid>.mp4      (or v1/full_scale/)

The metadata and narration files are also found directly under ``<root>`` (a folder laid out by hand);
``options.metadata`` and ``annotations`` name them elsewhere. Without metadata the videos' durations are
unknown to the annotations: ingest then reads each clip's video length from its header (a warning says so).

Targets: ``summaries`` (one clip per summary window), ``narrations`` (a clip of ``narration_window_s``
around each timestamp), or ``summary_file`` (a plain ``{video_uid: summary text}`` JSON file, one sample
per whole video). Narration passes are annotator passes over the same video: the first listed pass the
video has is used, so a missing pass falls back to the other one.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Literal

from vidtune.adapters.base import (REPAIR, annotation_file, as_float, option_file, parse_options, reason,
                                   sample, shape_error, tidy_spacing)
from vidtune.atomic import read_json
from vidtune.samples import Reject, Sample

log = logging.getLogger(__name__)

# Where the CLI puts each file (v2), then the same names directly under the root.
METADATA_FILES = ("v2/ego4d.json", "ego4d.json")
NARRATION_FILES = ("v2/annotations/narration.json", "annotations/narration.json")


@dataclasses.dataclass(frozen=True)
class Ego4dOptions:
    """The config schema's ego4d_options (descriptions, defaults and checks there)."""

    target: Literal["summaries", "narrations", "summary_file"]
    narration_window_s: float
    passes: tuple[str, ...]
    metadata: str | None  # None: the first of METADATA_FILES that exists
    summary_file: str
    video_dirs: tuple[str, ...]


# Speaker tags: "#C" is the camera wearer, "#O" another person; only whole "#C"/"#O" tokens are tags,
# so words with a capital C or O ("C opens", "Oven", "COVID") stay intact.
_SPEAKER_TAG = re.compile(r"(?<!\S)#\s?[CO](?![A-Za-z0-9])")
_UNSURE = re.compile(r"#\s?unsure\b", re.IGNORECASE)
_SUMMARY = re.compile(r"#\s?summary\b\s*[.:]?", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Ego4D narration/summary text without annotation tags: "#C C opens #unsure" -> "C opens something"."""
    text = _SUMMARY.sub(" ", text)
    text = _UNSURE.sub("something", text)
    text = _SPEAKER_TAG.sub(" ", text)
    return tidy_spacing(text)


def read(name: str, cfg: dict) -> Iterator[Sample | Reject]:
    options = parse_options(name, cfg, Ego4dOptions)
    root = Path(cfg["root"])
    metadata = _metadata_file(name, cfg, options)
    durations = _durations(metadata) if metadata else {}
    if options.target == "summary_file":
        yield from _video_summaries(name, cfg, options, root, durations, metadata)
        return
    path = annotation_file(name, cfg, NARRATION_FILES)
    narrations = read_json(path, REPAIR)
    if not isinstance(narrations, dict):
        raise shape_error(path, "a JSON object keyed by video_uid")
    _warn_unknown_durations(name, cfg, narrations, durations, metadata)
    for video_uid in sorted(narrations):
        entry = narrations[video_uid]
        label = f"video_uid {video_uid}"
        passes = [p for p in options.passes if isinstance(entry, dict) and isinstance(entry.get(p), dict)]
        if not passes:
            yield Reject(str(path), label, reason(
                "missing_field", f"no narration pass among {list(options.passes)}"))
            continue
        pass_name = passes[0]
        common = dict(media_path=_video_path(root, options, video_uid), group_key=video_uid,
                      duration=durations.get(video_uid))
        if options.target == "summaries":
            yield from _summaries(name, cfg, path, video_uid, pass_name, entry[pass_name], common)
        else:
            yield from _narrations(name, cfg, options, path, video_uid, pass_name, entry[pass_name],
                                   common)


def _metadata_file(name: str, cfg: dict, options: Ego4dOptions) -> Path | None:
    """``options.metadata`` (which must exist), else the first of :data:`METADATA_FILES`, else None."""
    if options.metadata is not None:
        return option_file(name, cfg, "metadata", options.metadata)
    root = Path(cfg["root"])
    return next((root / c for c in METADATA_FILES if (root / c).is_file()), None)


def _warn_unknown_durations(name: str, cfg: dict, video_uids, durations: dict[str, float],
                            metadata: Path | None) -> None:
    """Say when the metadata gives no duration for some videos (ingest then reads it from the video)."""
    unknown = sum(1 for uid in video_uids if uid not in durations)
    if not unknown:
        return
    root = Path(cfg["root"])
    why = f"not in {metadata}" if metadata else \
        f"no ego4d.json: tried {', '.join(str(root / c) for c in METADATA_FILES)}"
    log.warning("dataset %r: the duration of %d of %d videos is unknown (%s); where a clip window needs it, "
                "ingest reads it from the video's header, which is slower. What to do: download the metadata "
                "(ego4d --metadata) or set datasets.%s.options.metadata to your ego4d.json",
                name, unknown, len(video_uids), why, name)


def _durations(path: Path) -> dict[str, float]:
    """video_uid -> duration_sec from ego4d.json."""
    metadata = read_json(path, REPAIR)
    videos = metadata.get("videos", []) if isinstance(metadata, dict) else []
    durations = {}
    for video in videos:
        if isinstance(video, dict) and "video_uid" in video:
            try:
                duration = as_float(video.get("duration_sec"))
            except (TypeError, ValueError):
                duration = None
            if duration is not None:
                durations[str(video["video_uid"])] = duration
    return durations


def _video_path(root: Path, options: Ego4dOptions, video_uid: str) -> str:
    """The first of the candidate folders that has the video (v2 before v1); ingest reports it missing."""
    candidates = [f"{folder.rstrip('/')}/{video_uid}.mp4" for folder in options.video_dirs]
    return next((c for c in candidates if (root / c).is_file()), candidates[0])


def _items(block: dict, key: str) -> list:
    items = block.get(key)
    return items if isinstance(items, list) else []


def _summaries(name: str, cfg: dict, path: Path, video_uid: str, pass_name: str, block: dict,
               common: dict) -> Iterator[Sample | Reject]:
    for index, item in enumerate(_items(block, "summaries")):
        label = f"{video_uid}/{pass_name}/summaries[{index}]"
        try:
            start, end = as_float(item["start_sec"]), as_float(item["end_sec"])
            text = clean_text(str(item["summary_text"]))
        except (KeyError, TypeError, ValueError) as error:
            yield Reject(str(path), label, reason("malformed_record", f"bad summary: {error!r}"))
            continue
        yield sample(name, cfg, f"{video_uid}/summary_{index:04d}", target=text, clip_start=start,
                     clip_end=end, source=f"{path}:{label}", **common)


def _narrations(name: str, cfg: dict, options: Ego4dOptions, path: Path, video_uid: str, pass_name: str,
                block: dict, common: dict) -> Iterator[Sample | Reject]:
    half = options.narration_window_s / 2
    duration = common["duration"]
    for index, item in enumerate(_items(block, "narrations")):
        label = f"{video_uid}/{pass_name}/narrations[{index}]"
        try:
            timestamp = as_float(item["timestamp_sec"])
            text = clean_text(str(item["narration_text"]))
        except (KeyError, TypeError, ValueError) as error:
            yield Reject(str(path), label, reason("malformed_record", f"bad narration: {error!r}"))
            continue
        if timestamp is None:
            yield Reject(str(path), label, reason("missing_field", "narration has no timestamp_sec"))
            continue
        # The window is cut to the video; a timestamp past the end leaves start >= end, which ingest
        # rejects as a clip outside the video.
        start = max(0.0, timestamp - half)
        end = timestamp + half if duration is None else min(timestamp + half, duration)
        yield sample(name, cfg, f"{video_uid}/narration_{index:05d}", target=text, clip_start=start,
                     clip_end=end, source=f"{path}:{label}", **common)


def _video_summaries(name: str, cfg: dict, options: Ego4dOptions, root: Path, durations: dict[str, float],
                     metadata: Path | None) -> Iterator[Sample | Reject]:
    path = option_file(name, cfg, "summary_file", options.summary_file)
    summaries: Any = read_json(path, REPAIR)
    if not isinstance(summaries, dict):
        raise shape_error(path, "a JSON object mapping video_uid to summary text")
    _warn_unknown_durations(name, cfg, summaries, durations, metadata)
    for video_uid in sorted(summaries):
        text = summaries[video_uid]
        if not isinstance(text, str):
            yield Reject(str(path), video_uid, reason("malformed_record", "summary is not a string"))
            continue
        yield sample(name, cfg, video_uid, media_path=_video_path(root, options, video_uid),
                     target=clean_text(text), group_key=video_uid, duration=durations.get(video_uid),
                     source=f"{path}:{video_uid}")
