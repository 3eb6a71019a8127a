"""Dataset format adapters, selected by a dataset's ``format:``; each produces canonical samples.

Every adapter module has ``read(name, cfg) -> Iterator[Sample | Reject]``; docs/datasets.md describes
each layout, what becomes the target and the format's options. :data:`FORMATS` is the one list of format
names: the config schema's ``format`` enum, its options per format, the README's and docs' tables and the
tests' parametrisation are checked against it (tests/test_repository.py).
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterator

from vidtune.errors import ConfigError
from vidtune.samples import Reject, Sample

# Format name -> its adapter module.
FORMATS = {
    "demo": "demo",
    "jsonl": "jsonl",
    "csv": "csv_table",
    "ego4d": "ego4d",
    "qevd": "qevd",
    "nexar": "nexar",
    "coco": "coco",
}


def adapter(fmt: str) -> Callable[[str, dict], Iterator[Sample | Reject]]:
    """The ``read`` function of the adapter for ``fmt``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    return importlib.import_module(f"vidtune.adapters.{FORMATS[fmt]}").read
