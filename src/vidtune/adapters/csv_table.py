"""``csv``: one row per sample with a header; the same fields as ``jsonl`` (a ``conversations`` or
``references`` cell may hold a JSON list). Named ``csv_table`` so it never shadows the stdlib module."""

from __future__ import annotations

from typing import Iterator

from vidtune.adapters.base import annotation_file, iter_csv, parse_options
from vidtune.adapters.table import TableOptions, read_records
from vidtune.samples import Reject, Sample


def read(name: str, cfg: dict) -> Iterator[Sample | Reject]:
    options = parse_options(name, cfg, TableOptions)
    path = annotation_file(name, cfg)
    yield from read_records(name, cfg, options, path, iter_csv(path))
