"""``demo``: the synthetic dataset the workflow generates, ``{"video": "clip_000.mp4", "caption": ...}``
per line of ``<root>/annotations.jsonl`` unless ``annotations`` says otherwise; read exactly like ``jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from vidtune.adapters import jsonl
from vidtune.samples import Reject, Sample


def read(name: str, cfg: dict) -> Iterator[Sample | Reject]:
    annotations = cfg.get("annotations") or str(Path(cfg["root"]) / "annotations.jsonl")
    return jsonl.read(name, {**cfg, "annotations": annotations})
