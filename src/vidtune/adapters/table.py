"""Generic records, one per JSONL line or CSV row: a media path, an optional clip window, a caption or a
conversation. Shared by the ``jsonl``, ``csv`` and ``demo`` formats; field names are options."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterator

from vidtune.adapters.base import as_float, official_split, reason, sample, window_id
from vidtune.samples import Reject, Sample

_PLACEHOLDER = re.compile(r"<(video|image)>\s*")


@dataclasses.dataclass(frozen=True)
class TableOptions:
    """Which field holds what (the config schema's table_options: descriptions and defaults)."""

    id_field: str
    video_field: str
    image_field: str
    caption_field: str
    prompt_field: str
    conversations_field: str
    start_field: str
    end_field: str
    clip_field: str
    references_field: str
    split_field: str
    group_field: str
    duration_field: str


def _present(row: dict, key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _conversation(turns: Any) -> tuple[str, str]:
    """(prompt, target) of a single-turn InternVL/LLaVA conversation; placeholders are removed."""
    if isinstance(turns, str):  # a CSV cell holding the JSON list
        turns = json.loads(turns)
    if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, dict) for t in turns)):
        raise ValueError("conversations must be one human turn then one gpt turn")
    roles = [t.get("from") for t in turns]
    if roles != ["human", "gpt"]:
        raise ValueError(f"conversation turns are {roles}, expected ['human', 'gpt']")
    values = [t.get("value") for t in turns]
    if not all(isinstance(v, str) for v in values):
        raise ValueError("conversation values must be strings")
    return _PLACEHOLDER.sub("", values[0]).strip(), values[1]


def _references(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else [value]
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError("references must be a list of strings")
    return tuple(value)


def record_sample(name: str, cfg: dict, options: TableOptions, file: Path, label: str,
                  row: dict) -> Sample | Reject:
    """One record as a sample, or a reject naming what is wrong with it."""
    o = options
    try:
        if _present(row, o.video_field):
            media_type, media_path = "video", str(row[o.video_field])
        elif _present(row, o.image_field):
            media_type, media_path = "image", str(row[o.image_field])
        else:
            return Reject(str(file), label, reason(
                "missing_field", f"no {o.video_field!r} or {o.image_field!r} field"))
        prompt = str(row[o.prompt_field]) if _present(row, o.prompt_field) else None
        if _present(row, o.conversations_field):
            prompt, target = _conversation(row[o.conversations_field])
        elif o.caption_field in row and row[o.caption_field] is not None:
            target = row[o.caption_field]
            if not isinstance(target, str):
                raise ValueError(f"{o.caption_field!r} must be a string")
        else:
            return Reject(str(file), label, reason(
                "missing_field", f"no {o.caption_field!r} or {o.conversations_field!r} field"))
        start, end = as_float(row.get(o.start_field)), as_float(row.get(o.end_field))
        if _present(row, o.clip_field):  # InternVL's "clip": [start, end]
            clip = row[o.clip_field]
            clip = json.loads(clip) if isinstance(clip, str) else clip
            if not (isinstance(clip, list) and len(clip) == 2):
                raise ValueError(f"{o.clip_field!r} must be [start, end]")
            start, end = as_float(clip[0]), as_float(clip[1])
        references = _references(row[o.references_field]) if _present(row, o.references_field) else None
        split = official_split(row.get(o.split_field))
        duration = as_float(row.get(o.duration_field))
    except (ValueError, TypeError) as error:
        return Reject(str(file), label, reason("malformed_record", str(error)))
    # Without an id field, the id is the media path and window: stable as lines move, and a second
    # caption for the same clip is reported as a duplicate rather than silently kept.
    local_id = str(row[o.id_field]) if _present(row, o.id_field) else window_id(media_path, start, end)
    group = str(row[o.group_field]) if _present(row, o.group_field) else None
    return sample(name, cfg, local_id, media_type=media_type, media_path=media_path, target=target,
                  prompt=prompt, references=references, group_key=group, clip_start=start, clip_end=end,
                  official_split=split, duration=duration, source=f"{file}:{label}")


def read_records(name: str, cfg: dict, options: TableOptions, file: Path,
                 rows: Iterator[tuple[str, dict | Reject]]) -> Iterator[Sample | Reject]:
    for label, row in rows:
        yield row if isinstance(row, Reject) else record_sample(name, cfg, options, file, label, row)
