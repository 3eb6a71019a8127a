"""Dataset format adapters, selected by a dataset's ``format:``; each produces canonical samples.

Every adapter module has ``read(name, cfg) -> Iterator[Sample | Reject]``; docs/datasets.md describes
each layout, what becomes the target and the format's options.
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterator

from vidtune.errors import ConfigError
from vidtune.samples import Reject, Sample

MODULES = {
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
    if fmt not in MODULES:
        raise ConfigError(f"unknown dataset format {fmt!r}", fix=f"use one of: {', '.join(MODULES)}")
    return importlib.import_module(f"vidtune.adapters.{MODULES[fmt]}").read
