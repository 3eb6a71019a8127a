"""The canonical sample table: the one contract between ingestion and every step after it.

Every dataset adapter produces :class:`Sample` records; ``ingest`` validates them and writes them as a
parquet table with :data:`SCHEMA`. Nothing downstream knows which format a sample came from.

Columns
-------
sample_id       str    stable, unique id: ``<dataset>/<id inside the dataset>``; the same record always
                       gets the same id, so splits and caches stay put as data grows.
dataset         str    the dataset's name in the config.
media_type      str    ``video`` or ``image``.
media_path      str    path of the video or image relative to the dataset root (POSIX separators),
                       already checked to stay inside that root.
clip_start      float  clip window start in seconds, null for the whole video (and for images).
clip_end        float  clip window end in seconds, null for the whole video (and for images); never past
                       ``duration`` (ingest cuts a window to the video).
prompt          str    the user's turn, without media placeholders (they are added when formatting).
target          str    the assistant's turn the model is trained to produce.
references      list   every reference text used for scoring (the target is one of them).
group_key       str    what must never straddle splits: the source video, or the subject when known.
official_split  str    ``train``/``val``/``test`` when the dataset ships a split, else null.
duration        float  media duration in seconds when the annotations give it (for a clip whose annotations
                       give none: read from the video's container header at ingest), else null.
source          str    where the record came from: ``<annotation file>:<line or index>``, for reports.

The split step adds one column, ``split`` (``train``/``val``/``test``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from vidtune.atomic import atomic_path

MEDIA_TYPES = ("video", "image")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Sample:
    sample_id: str
    dataset: str
    media_type: str
    media_path: str
    prompt: str
    target: str
    references: tuple[str, ...]
    group_key: str
    clip_start: float | None = None
    clip_end: float | None = None
    official_split: str | None = None
    duration: float | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True)
class Reject:
    """A record that was left out, with enough to find and fix it."""

    file: str
    record: str
    reason: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("dataset", pa.string()),
    ("media_type", pa.string()),
    ("media_path", pa.string()),
    ("clip_start", pa.float64()),
    ("clip_end", pa.float64()),
    ("prompt", pa.string()),
    ("target", pa.string()),
    ("references", pa.list_(pa.string())),
    ("group_key", pa.string()),
    ("official_split", pa.string()),
    ("duration", pa.float64()),
    ("source", pa.string()),
])

SPLIT_SCHEMA = SCHEMA.append(pa.field("split", pa.string()))


def _records(samples: Iterable[Sample], extra: dict[str, list] | None = None) -> list[dict]:
    rows = []
    for sample in samples:
        row = dataclasses.asdict(sample)
        row["references"] = list(sample.references)
        rows.append(row)
    if extra:
        for name, values in extra.items():
            for row, value in zip(rows, values, strict=True):
                row[name] = value
    return rows


def write_table(path: str | Path, samples: Iterable[Sample]) -> None:
    """Write samples (sorted by id, so equal inputs give byte-identical files) atomically as parquet."""
    ordered = sorted(samples, key=lambda s: s.sample_id)
    _write(path, pa.Table.from_pylist(_records(ordered), schema=SCHEMA))


def write_split_table(path: str | Path, samples_with_split: Iterable[tuple[Sample, str]]) -> None:
    pairs = sorted(samples_with_split, key=lambda pair: pair[0].sample_id)
    rows = _records([s for s, _ in pairs], {"split": [split for _, split in pairs]})
    _write(path, pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA))


def _write(path: str | Path, table: pa.Table) -> None:
    # No statistics or created_by timestamps differ between runs; pyarrow's writer is deterministic
    # for the same table, which the determinism tests check.
    with atomic_path(path) as temp:
        pq.write_table(table, temp, compression="zstd", write_statistics=False)


def read_table(path: str | Path) -> list[Sample]:
    """Read a sample table (with or without the split column) back into :class:`Sample` records."""
    return [sample for sample, _ in read_split_table(path)]


def read_split_table(path: str | Path) -> list[tuple[Sample, str | None]]:
    table = pq.read_table(path)
    fields = {f.name for f in dataclasses.fields(Sample)}
    result = []
    for row in table.to_pylist():
        split = row.pop("split", None)
        row["references"] = tuple(row["references"])
        result.append((Sample(**{k: v for k, v in row.items() if k in fields}), split))
    return result
