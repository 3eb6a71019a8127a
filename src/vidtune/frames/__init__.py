"""Frame extraction: sampling policies, shard manifests, cached parallel extraction, in-memory sampling.

Where things are:

* :mod:`~vidtune.frames.settings` -- the ``frames`` config block as :class:`FrameSettings`;
* :mod:`~vidtune.frames.sampling` -- which frames a policy picks (pure functions of the timestamps);
* :mod:`~vidtune.frames.decode` -- decoding exactly those frames (PyAV in process, or the ffmpeg CLI);
* :mod:`~vidtune.frames.manifest` -- shard manifests and cache keys;
* :mod:`~vidtune.frames.extract` -- the cached, atomic, parallel extraction of one shard.
"""

from __future__ import annotations

import os
from typing import Sequence

from PIL import Image

from vidtune.frames.decode import read_frames
from vidtune.frames.extract import extract_shard
from vidtune.frames.manifest import build_manifests
from vidtune.frames.settings import FrameSettings

__all__ = ["FrameSettings", "build_manifests", "extract_shard", "sample_frames"]


def sample_frames(video_path: str | os.PathLike, settings: FrameSettings,
                  clip: Sequence[float | None] | None = None) -> list[Image.Image]:
    """The policy's frames of one video as RGB images, in memory (for inference); the same frames
    :func:`extract_shard` writes. Raises :class:`vidtune.errors.MediaError` with the reason."""
    return read_frames(video_path, settings, clip)[0]
