"""Ingestion: run a dataset's adapter, then the checks every format shares, into canonical samples.

A record that cannot be used is left out as a :class:`~vidtune.samples.Reject` (file, record, reason);
the step fails only when nothing usable is left or rejects exceed the dataset's ``max_reject_share``.
Checks here (videos are decoded later, in parallel, by frame extraction):

- the media path stays inside the dataset root: no ``..`` escape, no absolute path elsewhere, no symlink
  leading out (the path stored in the table is the normalised one, relative to the root);
- the media file exists and is not empty;
- the target is not empty or whitespace;
- the clip window is sane: start >= 0, start < end, and it starts before the video's end;
- the sample id is not a duplicate (the first record keeps it).

A clip window is cut to the video here, at the earliest point its length is known, so the sample table,
the split, the frame cache keys and every file written later hold the real window: an ``end`` past the
video's end becomes the video's end (``duration`` from the annotations, or, for a clip whose annotations
give none, read once per video from its container header, nothing decoded), and an id made of the window
(:func:`~vidtune.adapters.base.window_id`) names the cut window. A video whose header cannot be read keeps
its window; frame extraction then rejects it with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections import Counter
from pathlib import Path

from vidtune.adapters import adapter
from vidtune.adapters.base import container_duration, window_id
from vidtune.atomic import write_jsonl
from vidtune.errors import DataError, MediaError
from vidtune.rejects import reason, reason_code
from vidtune.samples import MEDIA_TYPES, Reject, Sample


@dataclasses.dataclass
class IngestResult:
    samples: list[Sample]
    rejects: list[Reject]
    summary: dict


def ingest_dataset(name: str, cfg: dict, *, rejects_path: str | os.PathLike | None = None) -> IngestResult:
    """Read dataset ``name`` (its config entry after schema defaults) into checked samples.

    With ``rejects_path`` the rejects are written there (JSON Lines) before the step can fail, so the
    error message can point at them.
    """
    root = Path(cfg["root"])
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder", fix=f"check datasets.{name}.root")
    samples: list[Sample] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    real_root = root.resolve()
    durations: dict[Path, float | None] = {}
    for item in adapter(cfg["format"])(name, cfg):
        checked = item if isinstance(item, Reject) else check_sample(item, root, real_root, seen, durations)
        if isinstance(checked, Reject):
            rejects.append(checked)
        else:
            seen.add(checked.sample_id)
            samples.append(checked)
    samples.sort(key=lambda s: s.sample_id)
    summary = _summary(name, cfg, samples, rejects)
    if rejects_path is not None:
        write_rejects(rejects_path, rejects)
    _fail_if_unusable(name, summary, rejects, rejects_path)
    return IngestResult(samples=samples, rejects=rejects, summary=summary)


def write_rejects(path: str | os.PathLike, rejects: list[Reject]) -> int:
    return write_jsonl(path, (r.as_dict() for r in rejects))


def check_sample(sample: Sample, root: Path, real_root: Path, seen: set[str],
                 durations: dict[Path, float | None] | None = None) -> Sample | Reject:
    """The sample with its media path normalised, its target stripped and its clip window cut to the video,
    or the first problem found. ``durations`` caches the lengths read from video headers, by path."""
    file, record = _where(sample)

    def reject(code: str, detail: str) -> Reject:
        return Reject(file, record, reason(code, detail))

    if sample.media_type not in MEDIA_TYPES:
        return reject("malformed_record", f"media type {sample.media_type!r} is not one of {MEDIA_TYPES}")
    media = _inside_root(sample.media_path, root, real_root)
    if isinstance(media, tuple):
        return reject(*media)
    path = root / media
    if not path.is_file():
        return reject("missing_media", f"{path} does not exist")
    if path.stat().st_size == 0:
        return reject("empty_media", f"{path} is an empty file")
    target = sample.target.strip() if isinstance(sample.target, str) else ""
    if not target:
        return reject("empty_target", "the target text is empty or whitespace")
    if sample.duration is None and sample.media_type == "video" and _has_window(sample):
        sample = dataclasses.replace(sample, duration=_header_duration(path, durations))
    problem = _clip_problem(sample)
    if problem:
        return reject(*problem)
    sample = _cut_to_video(sample)
    if sample.sample_id in seen:
        return reject("duplicate_id", f"sample id {sample.sample_id!r} was already used by an earlier record")
    references = tuple(dict.fromkeys(r.strip() for r in sample.references if r and r.strip()))
    if target not in references:
        references = (target, *references)
    return dataclasses.replace(sample, media_path=media, target=target, references=references)


def _where(sample: Sample) -> tuple[str, str]:
    """(file, record) from the sample's ``source`` (``<file>:<record>``)."""
    file, _, record = sample.source.rpartition(":")
    return (file, record) if file else (sample.source, sample.sample_id)


def _inside_root(media_path: str, root: Path, real_root: Path) -> str | tuple[str, str]:
    """The path relative to the root (POSIX), or (code, detail) when it leads outside the root."""
    if not media_path or "\x00" in media_path:
        return "malformed_record", "empty media path"
    given = media_path.replace("\\", "/") if os.sep == "\\" else media_path
    if posixpath.isabs(given):
        absolute = Path(os.path.normpath(given))
        for base in (root.absolute(), real_root):
            try:
                given = absolute.relative_to(base).as_posix()
                break
            except ValueError:
                continue
        else:
            return "path_escapes_root", f"absolute path {media_path!r} is outside the dataset root {root}"
    relative = posixpath.normpath(given)
    if relative == ".." or relative.startswith("../") or relative == ".":
        return "path_escapes_root", f"{media_path!r} leads outside the dataset root {root}"
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(real_root):
        return "symlink_escapes_root", f"{media_path!r} resolves through a symlink to {resolved}, outside {root}"
    return relative


def _has_window(sample: Sample) -> bool:
    return sample.clip_start is not None or sample.clip_end is not None


def _header_duration(path: Path, durations: dict[Path, float | None] | None) -> float | None:
    """The video's length from its container header (once per file), or None when it cannot be read."""
    durations = {} if durations is None else durations
    if path not in durations:
        try:
            durations[path] = round(container_duration(path), 3)
        except MediaError:
            durations[path] = None
    return durations[path]


def _cut_to_video(sample: Sample) -> Sample:
    """The sample with a clip end past the video's end moved to that end; an id made of the window
    follows it, so the id never names a window the video does not have."""
    start, end, duration = sample.clip_start, sample.clip_end, sample.duration
    if end is None or duration is None or end <= duration:
        return sample
    sample_id = sample.sample_id
    if sample_id == f"{sample.dataset}/{window_id(sample.media_path, start, end)}":
        sample_id = f"{sample.dataset}/{window_id(sample.media_path, start, duration)}"
    return dataclasses.replace(sample, clip_end=duration, sample_id=sample_id)


def _clip_problem(sample: Sample) -> tuple[str, str] | None:
    start, end, duration = sample.clip_start, sample.clip_end, sample.duration
    if duration is not None and duration <= 0:
        return "zero_length_media", f"duration is {duration} s"
    if start is None and end is None:
        return None
    if sample.media_type == "image":
        return "bad_clip_window", "an image cannot have a clip window"
    if start is not None and start < 0:
        return "bad_clip_window", f"clip starts at {start} s, before the video"
    if start is not None and end is not None and not start < end:
        if duration is not None and start >= duration:
            return "clip_outside_duration", f"clip [{start}, {end}] starts after the video's end ({duration} s)"
        return "bad_clip_window", f"clip start {start} s is not before its end {end} s"
    if duration is not None and (start or 0.0) >= duration:
        return "clip_outside_duration", (
            f"clip [{start}, {end}] starts at or after the video's end ({duration} s)")
    return None


def _summary(name: str, cfg: dict, samples: list[Sample], rejects: list[Reject]) -> dict:
    total = len(samples) + len(rejects)
    return {
        "dataset": name,
        "format": cfg["format"],
        "records": total,
        "samples": len(samples),
        "rejected": len(rejects),
        "reject_share": round(len(rejects) / total, 6) if total else 0.0,
        "max_reject_share": cfg.get("max_reject_share", 0.05),
        "rejects_by_reason": dict(sorted(Counter(reason_code(r.reason) for r in rejects).items())),
    }


def _fail_if_unusable(name: str, summary: dict, rejects: list[Reject],
                      rejects_path: str | os.PathLike | None) -> None:
    where = f"the rejects are in {rejects_path}" if rejects_path else "see the dataset's rejects file"
    examples = "; ".join(f"{r.file} ({r.record}): {r.reason}" for r in rejects[:3])
    counts = ", ".join(f"{code} {n}" for code, n in summary["rejects_by_reason"].items())
    error = None
    if summary["samples"] == 0:
        error = DataError(
            f"dataset {name!r} has no usable sample ({summary['records']} records, {summary['rejected']} "
            f"rejected: {counts or 'none found'}){'. First: ' + examples if examples else ''}",
            fix=f"{where}; check datasets.{name}.root, annotations and options")
    elif summary["reject_share"] > summary["max_reject_share"]:
        error = DataError(
            f"dataset {name!r}: {summary['rejected']} of {summary['records']} records rejected "
            f"({summary['reject_share']:.1%} > max_reject_share {summary['max_reject_share']:.1%}: {counts}). "
            f"First: {examples}",
            fix=f"{where}; fix the records, or raise datasets.{name}.max_reject_share")
    if error is not None:
        error.rejects = rejects  # every reject, for a caller that logs them before failing
        raise error
