"""``qevd``: QEVD-FIT-300K short clips, in either of its published layouts.

``fine_grained`` layout::

    <root>/fine_grained_labels.json      [{"video_path": "./00000009.mp4", "labels": [...],
                                           "labels_descriptive": [...], "split": "train"}, ...]
    <root>/feedbacks_short_clips.json    [{"video_path": ..., "feedbacks": [...], "split": ...}] (optional)
    <root>/00000009.mp4                  (or under ``videos_dir``)

``ground_truth`` layout::

    <root>/dataset/ground_truth.json     [{"video_path", "labels_descriptive": "...", "labels": [...]}]
    <root>/dataset/manifest.json         {video_path: exercise class}
    <root>/dataset/<class>/<video file>

Targets: ``labels_descriptive`` (default), ``labels`` or ``feedbacks`` (fine_grained layout only); lists
are joined with ``separator``. The official ``split`` field is kept; the group key is the video.
"""

from __future__ import annotations

import dataclasses
import posixpath
from pathlib import Path
from typing import Any, Iterator, Literal

from vidtune.adapters.base import (REPAIR, official_split, option_file, parse_options, reason,
                                   sample, shape_error)
from vidtune.atomic import read_json
from vidtune.errors import ConfigError
from vidtune.samples import Reject, Sample


@dataclasses.dataclass(frozen=True)
class QevdOptions:
    """The config schema's qevd_options (descriptions, defaults and checks there)."""

    layout: Literal["auto", "fine_grained", "ground_truth"]
    target: Literal["labels_descriptive", "labels", "feedbacks"]
    labels_file: str
    feedbacks_file: str
    feedbacks_key: str
    ground_truth_file: str
    manifest_file: str
    videos_dir: str
    separator: str


def read(name: str, cfg: dict) -> Iterator[Sample | Reject]:
    options = parse_options(name, cfg, QevdOptions)
    root = Path(cfg["root"])
    layout = options.layout
    if layout == "auto":
        layout = "fine_grained" if (root / options.labels_file).is_file() else "ground_truth"
    if layout == "ground_truth" and options.target == "feedbacks":
        raise ConfigError(f"datasets.{name}.options.target feedbacks needs the fine_grained layout",
                          fix="use target labels_descriptive or labels")
    if layout == "fine_grained":
        key = "feedbacks_file" if options.target == "feedbacks" else "labels_file"
        path = option_file(name, cfg, key, getattr(options, key))
        field = options.feedbacks_key if options.target == "feedbacks" else options.target
        yield from _entries(name, cfg, options, path, field, media_dir=options.videos_dir, classes={})
    else:
        path = option_file(name, cfg, "ground_truth_file", options.ground_truth_file)
        classes = read_json(option_file(name, cfg, "manifest_file", options.manifest_file), REPAIR)
        if not isinstance(classes, dict):
            raise shape_error(root / options.manifest_file, "a JSON object mapping video path to class")
        yield from _entries(name, cfg, options, path, options.target,
                            media_dir=posixpath.dirname(options.ground_truth_file), classes=classes)


def _entries(name: str, cfg: dict, options: QevdOptions, path: Path, field: str, media_dir: str,
             classes: dict) -> Iterator[Sample | Reject]:
    entries = read_json(path, REPAIR)
    if not isinstance(entries, list):
        raise shape_error(path, "a JSON list of records with video_path")
    for index, entry in enumerate(entries):
        label = f"[{index}]"
        try:
            video = _clean_path(entry["video_path"])
            target = _text(entry[field], options.separator)
            split = official_split(entry.get("split"))
        except KeyError as error:
            yield Reject(str(path), label, reason("missing_field", f"no {error.args[0]!r} field"))
            continue
        except (TypeError, ValueError, AttributeError) as error:
            yield Reject(str(path), label, reason("malformed_record", str(error)))
            continue
        exercise = classes.get(entry["video_path"], classes.get(video))
        relative = video
        if exercise and not video.startswith(f"{exercise}/"):  # videos live in one folder per class
            relative = f"{exercise}/{posixpath.basename(video)}"
        media = posixpath.join(media_dir, relative) if media_dir else relative
        yield sample(name, cfg, video, media_path=media, target=target, official_split=split,
                     group_key=video, source=f"{path}:{label}")


def _clean_path(value: Any) -> str:
    """``./00000009.mp4`` -> ``00000009.mp4`` (the id); escapes are left for ingest to reject."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("video_path must be a non-empty string")
    return posixpath.normpath(value.strip())


def _text(value: Any, separator: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return separator.join(v.strip() for v in value if v.strip())
    raise ValueError("label text must be a string or a list of strings")
