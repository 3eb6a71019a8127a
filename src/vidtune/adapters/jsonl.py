"""``jsonl``: one JSON object per line, InternVL-style (``video``/``image``, ``conversations``) or a plain
``caption``, with an optional clip window (``start``/``end`` or ``clip: [start, end]``)."""

from __future__ import annotations

from typing import Iterator

from vidtune.adapters.base import annotation_file, iter_jsonl, parse_options
from vidtune.adapters.table import TableOptions, read_records
from vidtune.samples import Reject, Sample


def read(name: str, cfg: dict) -> Iterator[Sample | Reject]:
    options = parse_options(name, cfg, TableOptions)
    path = annotation_file(name, cfg)
    yield from read_records(name, cfg, options, path, iter_jsonl(path))
