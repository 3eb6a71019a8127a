"""The embedded demo dataset: short synthetic videos of a coloured shape that moves, with captions that
say what is in them ("a red square moves to the right").

Each caption is rendered twice, on different tracks and at different speeds, so the test split holds
unseen videos of captions the model can learn from a few dozen clips on a CPU. Videos are made with
ffmpeg's generators through ffmpeg-python; nothing binary is committed.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import ffmpeg

from vidtune.atomic import atomic_path, write_jsonl

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = {"square": (0.24, 0.24), "bar": (0.42, 0.11)}  # width, height as a share of the frame
MOTIONS = ("left", "right")


def demo_captions() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) combination the demo draws from, in a fixed order."""
    return list(itertools.product(COLOURS, SHAPES, MOTIONS))


def caption_of(colour: str, shape: str, motion: str) -> str:
    return f"a {colour} {shape} moves to the {motion}"


def _render(path: Path, colour: str, shape: str, motion: str, *, size: int, seconds: float, fps: int,
            track: float, speed: float) -> None:
    width, height = (max(2, int(size * share)) for share in SHAPES[shape])
    travel = size - width
    start, step = (0.0, 1.0) if motion == "right" else (float(travel), -1.0)
    # The shape crosses `speed` of the free width over the clip, starting from its edge.
    x = f"{start}+{step}*{travel * speed / seconds}*t"
    y = str(int((size - height) * track))
    background = ffmpeg.input(f"color=c=black:s={size}x{size}:d={seconds}:r={fps}", f="lavfi")
    shape_src = ffmpeg.input(f"color=c={colour}:s={width}x{height}:d={seconds}:r={fps}", f="lavfi")
    video = ffmpeg.overlay(background, shape_src, x=x, y=y, eval="frame", shortest=1)
    with atomic_path(path) as temp:
        (ffmpeg.output(video, str(temp), vcodec="libx264", pix_fmt="yuv420p", g=fps, f="mp4",
                       **{"bf": 2, "loglevel": "error", "fflags": "+bitexact", "flags:v": "+bitexact"})
         .overwrite_output().run(quiet=True))


def make_demo_dataset(root: Path, annotations: Path, *, num_videos: int, seconds: float, size: int,
                      fps: int, seed: int) -> int:
    """Render ``num_videos`` clips under ``root`` and write their JSONL annotations; returns the count."""
    root.mkdir(parents=True, exist_ok=True)
    combos = demo_captions()
    rng = random.Random(seed)
    records = []
    for index in range(num_videos):
        colour, shape, motion = combos[index % len(combos)]
        name = f"clip_{index:03d}.mp4"
        _render(root / name, colour, shape, motion, size=size, seconds=seconds, fps=fps,
                track=rng.uniform(0.1, 0.9), speed=rng.uniform(0.6, 1.0))
        records.append({"video": name, "caption": caption_of(colour, shape, motion)})
    write_jsonl(annotations, records)
    return len(records)


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    out = Path(sys.argv[1])
    print(json.dumps(make_demo_dataset(out, out / "annotations.jsonl", num_videos=4, seconds=1, size=64,
                                       fps=10, seed=0)))
