"""``nexar``: Nexar dashcam videos, in either of the published layouts.

``metadata`` layout (structured captions)::

    <root>/dataset/metadata.jsonl   {"file_name": "videos/00001.mp4", "caption": ..., "event_type": ...,
                                     "rule_violations": [...], "intended_driving_action": ...,
                                     "traffic_density": ..., "visibility": ...}
    <root>/dataset/videos/*.mp4     (``file_name`` is relative to the metadata file's folder)

The target is the canonical JSON of ``fields`` (in that order), so the model learns schema-true output.
Published variants name some fields differently; ``aliases`` maps each field to the other names tried.
A field that no record of the file has is left out of every target (with a warning), so the model never
learns to print a constant null; a record lacking a field that others have is rejected.

``competition`` layout (collision prediction)::

    <root>/train.csv                id,time_of_event,time_of_alert,target   (ids without leading zeros)
    <root>/train/00822.mp4          (ids zero-padded to ``id_width`` digits)
    <root>/train/metadata.csv       file_name,time_of_event,time_of_alert,light_conditions,weather,... (optional)

Each video is cut into fixed windows of ``window_s`` seconds (its length read from the container header,
no decoding); a window holding the event is labelled ``collision_or_near_miss``, one overlapping the
alert period before it ``risk_ahead``, the rest ``normal``; windows after the event are left out. The
target is the canonical JSON of the label and those ``metadata_fields`` of ``metadata.csv`` that at least
one video has a value for (none without the file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
from pathlib import Path
from typing import Iterator, Literal

from vidtune.adapters.base import (as_float, container_duration, iter_csv, iter_jsonl, official_split, option_file,
                                   parse_options, reason, sample)
from vidtune.errors import MediaError
from vidtune.samples import Reject, Sample

DEFAULT_ALIASES = {
    "file_name": ["video", "video_path", "file"],
    "intended_driving_action": ["intended_action", "driving_action"],
    "rule_violations": ["violations", "traffic_violations"],
    "traffic_density": ["traffic"],
}
EVENT, ALERT, NORMAL = "collision_or_near_miss", "risk_ahead", "normal"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NexarOptions:
    """The config schema's nexar_options (descriptions, defaults and checks there)."""

    layout: Literal["auto", "metadata", "competition"]
    metadata_file: str
    fields: tuple[str, ...]
    aliases: dict[str, list[str]]
    split: str
    window_s: float
    id_width: int
    metadata_fields: tuple[str, ...]

    def names(self, field: str) -> list[str]:
        """The field's own name, then the user's aliases, then the built-in ones."""
        return [field, *self.aliases.get(field, []), *DEFAULT_ALIASES.get(field, [])]


def canonical_json(values: dict) -> str:
    """The one JSON text a structured target is written as (key order as given, readable spacing)."""
    return json.dumps(values, ensure_ascii=False, separators=(", ", ": "))


def read(name: str, cfg: dict) -> Iterator[Sample | Reject]:
    options = parse_options(name, cfg, NexarOptions)
    root = Path(cfg["root"])
    layout = options.layout
    if layout == "auto":
        layout = "metadata" if (root / options.metadata_file).is_file() else "competition"
    if layout == "metadata":
        yield from _structured(name, cfg, options, root)
    else:
        yield from _competition(name, cfg, options, root)


def _first(row: dict, names: list[str]) -> tuple[bool, object]:
    for key in names:
        if key in row:
            return True, row[key]
    return False, None


def _provided(name: str, wanted: tuple[str, ...], has, where: Path, fix: str) -> list[str]:
    """The fields of ``wanted`` that ``has(field)`` finds in at least one record; warns about the rest."""
    provided = [field for field in wanted if has(field)]
    absent = [field for field in wanted if field not in provided]
    if absent:
        log.warning("dataset %r: no record of %s has %s, so the targets leave %s out. What to do: %s", name,
                    where, ", ".join(absent), "it" if len(absent) == 1 else "them", fix)
    return provided


def _structured(name: str, cfg: dict, options: NexarOptions, root: Path) -> Iterator[Sample | Reject]:
    path = option_file(name, cfg, "metadata_file", options.metadata_file)
    folder = posixpath.dirname(options.metadata_file)
    rows = list(iter_jsonl(path))
    records = [row for _, row in rows if not isinstance(row, Reject)]
    fields = _provided(name, options.fields, lambda f: any(_first(r, options.names(f))[0] for r in records),
                       path, f"if the file names them differently, map them in datasets.{name}.options.aliases")
    for label, row in rows:
        if isinstance(row, Reject):
            yield row
            continue
        found, file_name = _first(row, options.names("file_name"))
        if not found or not isinstance(file_name, str) or not file_name.strip():
            yield Reject(str(path), label, reason("missing_field", "no file_name"))
            continue
        values, missing = {}, []
        for field in fields:
            found, value = _first(row, options.names(field))
            values[field] = value
            if not found:
                missing.append(field)
        if missing:
            yield Reject(str(path), label, reason(
                "missing_field", f"no {missing} (or aliases); set options.fields/aliases to match the file"))
            continue
        try:
            split = official_split(row.get("split"))
        except ValueError as error:
            yield Reject(str(path), label, reason("malformed_record", str(error)))
            continue
        media = posixpath.normpath(posixpath.join(folder, file_name.strip()))
        in_videos = posixpath.join(folder, "videos", file_name.strip())
        if "/" not in file_name.strip() and not (root / media).exists() and (root / in_videos).exists():
            media = in_videos  # bare file names refer to the videos/ folder in some variants
        yield sample(name, cfg, posixpath.normpath(file_name.strip()), media_path=media,
                     target=canonical_json(values), official_split=split, source=f"{path}:{label}")


def _competition(name: str, cfg: dict, options: NexarOptions, root: Path) -> Iterator[Sample | Reject]:
    labels_path = option_file(name, cfg, "split", f"{options.split}.csv")
    metadata = {}
    metadata_path = root / options.split / "metadata.csv"
    if metadata_path.is_file():
        for _, row in iter_csv(metadata_path):
            if not isinstance(row, Reject) and row.get("file_name"):
                metadata[Path(row["file_name"]).stem] = row
    fields = _provided(name, options.metadata_fields,
                       lambda f: any((row.get(f) or "").strip() for row in metadata.values()), metadata_path,
                       f"add the metadata file, or set datasets.{name}.options.metadata_fields to those it has")
    for label, row in iter_csv(labels_path):
        if isinstance(row, Reject):
            yield row
            continue
        try:
            video_id = str(int(row["id"])).zfill(options.id_width)  # "822" and "00822" are one video
            event, alert = as_float(row.get("time_of_event")), as_float(row.get("time_of_alert"))
            positive = as_float(row.get("target")) == 1
        except KeyError as error:
            yield Reject(str(labels_path), label, reason("missing_field", f"no {error.args[0]!r} column"))
            continue
        except (TypeError, ValueError) as error:
            yield Reject(str(labels_path), label, reason("malformed_record", str(error)))
            continue
        if positive and event is None:
            yield Reject(str(labels_path), label, reason("missing_field", "target 1 without time_of_event"))
            continue
        media = f"{options.split}/{video_id}.mp4"
        if not (root / media).is_file():
            yield Reject(str(labels_path), label, reason("missing_media", f"{root / media} does not exist"))
            continue
        try:
            duration = container_duration(root / media)
        except MediaError as error:
            yield Reject(str(labels_path), label, reason("unreadable_media", error.problem))
            continue
        extra = {key: metadata.get(video_id, {}).get(key) or None for key in fields}  # an empty cell is null
        for index, (start, end) in enumerate(_windows(duration, options.window_s)):
            if positive and start > event:
                break
            window_label = NORMAL
            if positive and start <= event < end:
                window_label = EVENT
            elif positive and alert is not None and end > alert and end <= event:
                window_label = ALERT
            yield sample(name, cfg, f"{video_id}/w{index:03d}", media_path=media,
                         target=canonical_json({"label": window_label, **extra}), group_key=video_id,
                         clip_start=start, clip_end=end, duration=duration,
                         source=f"{labels_path}:{label}")


def _windows(duration: float, width: float) -> list[tuple[float, float]]:
    """Whole windows from the start; a video shorter than one window is one window."""
    count = max(1, int(duration // width))
    return [(round(k * width, 3), round(min((k + 1) * width, duration), 3)) for k in range(count)]
