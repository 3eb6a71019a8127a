"""Which frames a sampling policy picks: pure functions of the frame timestamps, the clip window and settings.

The policy is defined on the video's real presentation timestamps, so constant and variable frame rates
and streams that do not start at 0 follow the same rule:

* times are seconds from the first frame of the video stream (the clip window uses the same origin);
* the clip window ``[start, end)`` holds the frames whose timestamp falls inside it; it lasts from its
  first frame until the frame after it (or one typical frame interval after its last frame);
* ``uniform`` splits that span into ``num_frames`` equal segments; ``fps`` into ``floor(span * fps)``
  segments (at least 1), at most ``max_frames`` (so an over-long clip is evenly thinned);
* each segment contributes the frame on screen at its centre (the last frame at or before it). At a
  constant rate this is frame ``floor((i + 0.5) * n / N)`` of the window's ``n`` frames, the convention of
  InternVL's and LLaMA-Factory's samplers;
* a clip with fewer frames than segments gives each frame once; fewer than ``min_frames`` is a reject.
"""

from __future__ import annotations

import bisect
import math
import statistics
from typing import Sequence

from vidtune.errors import MediaError
from vidtune.frames.settings import FrameSettings

# Float slack when comparing seconds: far below any frame interval, far above rounding error.
EPSILON = 1e-6


def segment_count(span_s: float, settings: FrameSettings) -> int:
    if settings.policy == "uniform":
        return settings.num_frames
    return max(1, min(settings.max_frames, math.floor(span_s * settings.fps + EPSILON)))


def select_frames(times: Sequence[float], clip: Sequence[float | None] | None,
                  settings: FrameSettings) -> list[int]:
    """Indices (into ``times``, sorted ascending, seconds from the first frame) of the frames to extract."""
    if not times:
        raise MediaError("the video stream has no decodable frames")
    start, end = _window(clip)
    first = bisect.bisect_left(times, start - EPSILON)
    stop = bisect.bisect_left(times, end - EPSILON) if end is not None else len(times)
    if first >= stop:
        video_end = times[-1] + _typical_interval(times)
        if start >= video_end - EPSILON:
            raise MediaError(f"clip window starts at {start:g} s, after the end of the video "
                             f"({video_end:.3f} s)", code="clip_outside_duration",
                             fix="check the clip times against the video")
        raise MediaError(f"no frame inside the clip window [{start:g}, {end:g}) s", code="too_few_frames")
    after = times[stop] if stop < len(times) else times[stop - 1] + _typical_interval(times)
    span = after - times[first]
    count = segment_count(span, settings)
    picked = []
    for i in range(count):
        centre = times[first] + (i + 0.5) * span / count
        index = bisect.bisect_right(times, centre + EPSILON, first, stop) - 1
        if not picked or picked[-1] != index:
            picked.append(index)
    if len(picked) < settings.min_frames:
        raise MediaError(f"the clip has only {len(picked)} frame(s), fewer than min_frames="
                         f"{settings.min_frames}", code="too_few_frames",
                         fix="lower frames.min_frames or drop the sample")
    return picked


def _window(clip: Sequence[float | None] | None) -> tuple[float, float | None]:
    start, end = (None, None) if clip is None else clip
    start = 0.0 if start is None else float(start)
    if start < 0 or (end is not None and end <= start):
        raise MediaError(f"invalid clip window [{start:g}, {end}] s: it must satisfy 0 <= start < end",
                         code="bad_clip_window", fix="fix the clip times in the annotations")
    return start, (None if end is None else float(end))


def _typical_interval(times: Sequence[float]) -> float:
    """Median interval of the last frames (a single frame is given 1 s)."""
    if len(times) < 2:
        return 1.0
    tail = times[-201:]
    return statistics.median(b - a for a, b in zip(tail, tail[1:]))
