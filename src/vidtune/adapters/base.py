"""What every adapter shares: typed options (defaults and checks in the config schema), annotation loading
with file-and-line errors, reject reasons.

An adapter only parses its format into :class:`~vidtune.samples.Sample` records (media paths as the
annotations write them, relative to the dataset root) and :class:`~vidtune.samples.Reject` records for
what it cannot parse. Path safety, missing media, empty targets, duplicates and clip windows are checked
once for every format in :mod:`vidtune.ingest`.

Reject reasons read ``<class>: <detail>``, the classes those of :mod:`vidtune.rejects`; summaries count
rejects by class.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Iterator, TypeVar

from vidtune.config import check_against_schema, options_definition, schema_defaults
from vidtune.errors import ConfigError, DataError, MediaError
from vidtune.rejects import reason  # noqa: F401 - the adapters import it from here
from vidtune.samples import SPLITS, Reject, Sample

OptionsT = TypeVar("OptionsT")
DEFAULT_PROMPT = schema_defaults("dataset")["prompt"]

# Official split names as published datasets spell them.
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def parse_options(name: str, cfg: dict, options_type: type[OptionsT]) -> OptionsT:
    """The format's options dataclass: ``cfg["options"]`` over the schema's defaults, checked against the
    schema as the workflow does at parse time (a mistake names ``datasets.<name>.options.<key>``)."""
    definition = options_definition(cfg["format"])
    given = cfg.get("options") or {}
    check_against_schema(given, definition, f"datasets.{name}.options")
    values = {**schema_defaults(definition), **given}
    return options_type(**{key: tuple(value) if isinstance(value, list) else value
                           for key, value in values.items()})


def annotation_file(name: str, cfg: dict, defaults_under_root: tuple[str, ...] = ()) -> Path:
    """The main annotation file: ``cfg["annotations"]`` (relative to the working directory), else the first
    of the format's default places under the root that exists. A missing file is a config mistake, so it
    stops the step, naming ``annotations``: the setting that points at the file."""
    key = f"datasets.{name}.annotations"
    given = cfg.get("annotations")
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"annotation file {given} does not exist", fix=f"check {key}")
        return Path(given)
    if not defaults_under_root:
        raise ConfigError(f"{key} is required for format {cfg.get('format')!r}")
    candidates = [Path(cfg["root"]) / default for default in defaults_under_root]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise ConfigError(f"no annotation file: none of {', '.join(map(str, candidates))} exists",
                          fix=f"set {key} to the file (or check datasets.{name}.root)")
    return found


def option_file(name: str, cfg: dict, key: str, value: str) -> Path:
    """A file named by an option: absolute, or relative to the dataset root; it must exist."""
    path = Path(value) if Path(value).is_absolute() else Path(cfg["root"]) / value
    if not path.is_file():
        raise ConfigError(f"file {path} does not exist", fix=f"check datasets.{name}.options.{key}")
    return path


# What to do about a dataset's own JSON file that does not parse (vidtune.atomic.read_json reads it).
REPAIR = "repair the file (a truncated download is the usual cause)"


def shape_error(path: Path, expected: str) -> DataError:
    """The error for a file that parses but is not the structure the format documents."""
    return DataError(f"expected {expected}", file=str(path), fix="check that this is the right file")


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict | Reject]]:
    """Yield ``(record label, object)`` per non-blank line; a malformed line is a reject, not a stop.

    A file in which no line parses is not JSONL at all and stops the step naming the first bad line.
    """
    parsed = 0
    first_error: DataError | None = None
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            lines = list(enumerate(handle, start=1))
        except UnicodeDecodeError as error:
            raise DataError(f"not UTF-8 text ({error.reason})", file=str(path),
                            fix="re-encode the file as UTF-8") from None
    for number, line in lines:
        if not line.strip():
            continue
        label = f"line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            first_error = first_error or DataError(
                f"not valid JSON Lines: {error.msg}", file=str(path), record=label,
                fix="each line must be one JSON object")
            yield label, Reject(str(path), label, reason("malformed_record", f"not valid JSON ({error.msg})"))
            continue
        if not isinstance(value, dict):
            yield label, Reject(str(path), label, reason("malformed_record", "line is not a JSON object"))
            continue
        parsed += 1
        yield label, value
    if parsed == 0 and first_error is not None:
        raise first_error


def iter_csv(path: Path) -> Iterator[tuple[str, dict | Reject]]:
    """Yield ``(record label, row dict)`` per CSV row (header first); a row with the wrong number of
    fields is a reject; a file the csv module cannot parse stops the step naming the line."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise DataError("empty CSV file (no header row)", file=str(path))
            header = [h.strip() for h in header]
            for row in reader:
                label = f"line {reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    yield label, Reject(str(path), label, reason(
                        "malformed_record", f"{len(row)} fields where the header has {len(header)}"))
                    continue
                yield label, dict(zip(header, row))
        except csv.Error as error:
            raise DataError(f"not valid CSV: {error}", file=str(path), record=f"line {reader.line_num}",
                            fix="repair the quoting of that line") from None
        except UnicodeDecodeError as error:
            raise DataError(f"not UTF-8 text ({error.reason})", file=str(path),
                            fix="re-encode the file as UTF-8") from None


def official_split(value: Any) -> str | None:
    """Map a dataset's split name to train/val/test; ``None`` when absent. Raises ValueError if unknown."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split not in SPLITS:
        raise ValueError(f"unknown split {value!r}")
    return split


def as_float(value: Any) -> float | None:
    """A number from JSON or CSV; empty and NaN mean unknown. Raises ValueError on anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    return None if number != number else number


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SPACES = re.compile(r"\s+")


def tidy_spacing(text: str) -> str:
    """Collapse runs of whitespace and remove spaces before punctuation."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", text)).strip()


def window_id(media_path: str, start: float | None, end: float | None) -> str:
    """The id of a record that has none: its media path and clip window (``a.mp4@2.0-4.0``)."""
    return media_path + ("" if start is None and end is None else f"@{start}-{end}")


def sample(name: str, cfg: dict, local_id: str, *, media_path: str, target: str, source: str,
           media_type: str = "video", prompt: str | None = None, references: tuple[str, ...] | None = None,
           group_key: str | None = None, **fields: Any) -> Sample:
    """One canonical sample with the defaults every format shares (id, prompt, references, group)."""
    return Sample(
        sample_id=f"{name}/{local_id}", dataset=name, media_type=media_type, media_path=media_path,
        prompt=prompt if prompt else cfg.get("prompt", DEFAULT_PROMPT), target=target,
        references=references if references else (target,),
        group_key=group_key if group_key else media_path, source=source, **fields)


def container_duration(path: Path) -> float:
    """A video's length in seconds from its container header; no frame is decoded. MediaError if the
    file cannot be opened as a video."""
    import av  # imported here: only the formats and exports that need a length pay for it

    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / 1_000_000
            stream = container.streams.video[0]
            return float(stream.duration * stream.time_base)
    except (av.FFmpegError, IndexError, TypeError, OSError) as error:
        raise MediaError(f"cannot read the video's length ({error})", file=str(path),
                         fix="check that the file is a complete video") from None
