"""Media and a quiet log for the model-family tests (tests/test_family_*.py): a synthetic clip with its frames'
times, and an image, both at 32 pixels unless sized."""

from __future__ import annotations

import logging

from vidtune.families import Media
from vidtune.tiny_model import synthetic_frames


def clip(count=4, size=(32, 32), times=None) -> Media:
    """A red circle moving left, ``count`` frames; 0.5 s apart unless ``times`` are given."""
    frames = [frame.resize(size) for frame in synthetic_frames("red", "circle", "left", count, 32)]
    return Media(frames, "video", times if times is not None else tuple(0.5 * index for index in range(count)))


def image(size=(32, 32)) -> Media:
    return Media([synthetic_frames("blue", "square", "up", 1, 32)[0].resize(size)], "image")


def silent_log(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log
