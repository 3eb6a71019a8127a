"""Sampling policies and settings: pure functions, no video needed."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from vidtune.errors import ConfigError, MediaError
from vidtune.frames import FrameSettings
from vidtune.frames.decode import VideoIndex
from vidtune.frames.sampling import select_frames


def cfr(n: int, rate: float = 30.0, start: float = 0.0) -> list[float]:
    return [round(start + k / rate, 6) for k in range(n)]


@pytest.mark.parametrize("n,count", [(90, 8), (150, 8), (7, 3), (1000, 32), (9, 9)])
def test_uniform_picks_frame_centres(n, count):
    picked = select_frames(cfr(n), None, FrameSettings(num_frames=count))
    assert picked == [math.floor((i + 0.5) * n / count) for i in range(count)]


def test_uniform_in_clip_window_counts_from_the_window_start():
    times = cfr(300)
    picked = select_frames(times, (2.0, 4.0), FrameSettings(num_frames=4))
    assert picked == [60 + math.floor((i + 0.5) * 60 / 4) for i in range(4)]
    # A window that starts between frames begins at the next frame.
    assert select_frames(times, (2.01, 4.0), FrameSettings(num_frames=1)) == [61 + 59 // 2]


def test_clip_shorter_than_count_gives_each_frame_once_and_min_frames_rejects():
    assert select_frames(cfr(5), None, FrameSettings(num_frames=8)) == [0, 1, 2, 3, 4]
    with pytest.raises(MediaError, match="fewer than min_frames=6"):
        select_frames(cfr(5), None, FrameSettings(num_frames=8, min_frames=6))


def test_fps_policy_rate_thinning_and_minimum_of_one():
    times = cfr(300)  # 10 s
    picked = select_frames(times, None, FrameSettings(policy="fps", fps=1.0))
    assert picked == [15 + 30 * i for i in range(10)]
    thinned = select_frames(times, None, FrameSettings(policy="fps", fps=2.0, max_frames=5))
    assert thinned == [math.floor((i + 0.5) * 300 / 5) for i in range(5)]
    assert select_frames(times, (1.0, 1.4), FrameSettings(policy="fps", fps=1.0)) == [36]


def test_variable_frame_rate_picks_the_frame_on_screen_at_each_centre():
    times = [0.0, 0.1, 0.2, 1.0, 1.1, 3.0]  # span 0 .. 3.0 + median gap 0.1
    picked = select_frames(times, None, FrameSettings(num_frames=4))
    # centres at 0.3875, 1.1625, 1.9375, 2.7125 s -> frames shown then: 0.2, 1.1, 1.1, 1.1
    assert picked == [2, 4]


@pytest.mark.parametrize("clip,reason", [
    ((20.0, 30.0), "after the end of the video"),
    ((3.0, 2.0), "invalid clip window"),
    ((-1.0, 2.0), "invalid clip window"),
])
def test_bad_clip_windows_are_rejected_with_a_reason(clip, reason):
    with pytest.raises(MediaError, match=reason):
        select_frames(cfr(300), clip, FrameSettings())


def test_settings_from_config():
    settings = FrameSettings.from_config({"policy": "fps", "fps": 2, "max_frames": 4})
    assert settings.fps == 2.0 and settings.max_frames == 4 and settings.num_frames == 8
    assert FrameSettings.from_config({}) == FrameSettings()
    assert "timeout_s" not in settings.output_fields() and "num_frames" not in settings.output_fields()
    with pytest.raises(ConfigError, match="unknown key.*nframes"):
        FrameSettings.from_config({"nframes": 8})
    with pytest.raises(ConfigError, match="policy"):
        FrameSettings.from_config({"policy": "random"})
    with pytest.raises(ConfigError, match="must be of type int"):
        FrameSettings.from_config({"num_frames": "8"})


def test_video_index_rejects_streams_without_frames_or_timestamps():
    with pytest.raises(MediaError, match="no decodable frames"):
        VideoIndex.build([], Fraction(1, 30))
    with pytest.raises(MediaError, match="no decodable frames"):  # nothing from a keyframe on
        VideoIndex.build([(0, 0, False, False)], Fraction(1, 30))
    with pytest.raises(MediaError, match="no timestamps"):
        VideoIndex.build([(None, None, True, False)], Fraction(1, 30))
    with pytest.raises(MediaError, match="truncated: 2 of the 5"):
        VideoIndex.build([(0, 0, True, False), (1, 1, False, False)], Fraction(1, 30), 5)
    # B-frames: presentation order differs from decode order; discarded packets are not frames.
    index = VideoIndex.build([(0, -1, True, True), (3, 0, True, False), (1, 1, False, False),
                              (2, 2, False, False)], Fraction(1, 10))
    assert index.frame_pts == [1, 2, 3] and index.keyframe_before == [0, 1, 1, 1]
    assert index.plan(None, FrameSettings(num_frames=3)) == [1, 2, 3]
