"""Frame extraction benchmark (issue 3): the project's extraction vs a full decode vs the decode floor.

Generates its own H.264 test videos (testsrc2 plus noise, B-frames, a 2 s GOP, and a barcode of the frame
index in the top rows so every output frame is checked), then prints, side by side:

* a 10-minute 1080p video and a 40-second 720p clip, 8 uniform frames at 448 px: CPU seconds of the
  project's extraction (PyAV default; ffmpeg backend for comparison), of a full decode as the seed scripts
  did it (``ffmpeg -vf fps=1``), and of the decode floor: decoding, from packets already in memory, only the
  packets between each target and its keyframe;
* 200 five-second 480p clips, 8 frames each, through ``extract_shard``: JPEG frames written per second with
  1 and 2 worker processes.

The last line is one JSON object. ``--quick`` uses small sizes for a smoke run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frames.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vidtune.frames import FrameSettings, build_manifests, extract_shard
from vidtune.frames.decode import VideoIndex, read_frames
from vidtune.samples import Sample

RATE, GOP, BITS, NUM_FRAMES = 30, 60, 12, 8


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *args], check=True)


def make_video(path: Path, width: int, height: int, seconds: float, repeat: int = 1) -> Path:
    """testsrc2 + noise with a BITS-bit barcode of the frame index (mod the segment) in its top rows.

    A long video is ``repeat`` copies of one segment joined without re-encoding (each starts with a
    keyframe), which keeps generating it affordable and decodes like one long encode.
    """
    if path.exists():
        return path
    segment = path.with_suffix(".segment.mp4") if repeat > 1 else path
    bar = max(16, height // 24)
    graph = (f"testsrc2=size={width}x{height}:rate={RATE}:duration={seconds},noise=alls=6:allf=t,"
             f"format=yuv420p[v];color=c=black:size={width}x{bar}:rate={RATE}:duration={seconds},"
             f"format=yuv420p,geq=lum='16+219*mod(floor(N/pow(2\\,floor(X*{BITS}/W)))\\,2)':cb=128:cr=128[b];"
             "[v][b]overlay=0:0")
    ffmpeg("-f", "lavfi", "-i", graph, "-c:v", "libx264", "-preset", "veryfast", "-crf", "24", "-g", str(GOP),
           "-bf", "3", "-threads", "2", str(segment))
    if repeat > 1:
        listing = path.with_suffix(".txt")
        listing.write_text(f"file '{segment.name}'\n" * repeat)
        ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(path))
    return path


def read_index(image: Image.Image) -> int:
    """The barcode in the top rows of a frame (any size)."""
    gray = np.asarray(image.convert("L"), dtype=float)
    rows = max(2, gray.shape[0] // 60)
    strip = gray[1:rows]
    return sum(1 << bit for bit in range(BITS)
               if strip[:, int((bit + 0.5) * gray.shape[1] / BITS)].mean() > 128)


def expected_indices(frames: int, period: int) -> list[int]:
    return [math.floor((i + 0.5) * frames / NUM_FRAMES) % period for i in range(NUM_FRAMES)]


def project(path: Path, backend: str, out: Path) -> tuple[float, list[int]]:
    """CPU seconds to extract and write the 8 frames, and the frame indices they show."""
    settings = FrameSettings(backend=backend, num_frames=NUM_FRAMES)
    start = cpu_seconds()
    images, _ = read_frames(path, settings)
    for number, image in enumerate(images, 1):
        image.save(out / f"{backend}_{number:06d}.jpg", quality=settings.jpeg_quality)
    spent = cpu_seconds() - start
    return spent, [read_index(i) for i in images]


def full_decode(path: Path, out: Path) -> float:
    """The seeds' method: decode everything at fps=1 to JPEG (the first N are kept)."""
    start = cpu_seconds()
    ffmpeg("-threads", "1", "-i", str(path), "-vf", "fps=1,scale=-2:448", "-q:v", "2",
           str(out / "full_%06d.jpg"))
    return cpu_seconds() - start


def decode_floor(path: Path) -> tuple[float, int]:
    """CPU seconds to decode only the packets from each target's keyframe to the target (decode order),
    read into memory beforehand; and how many packets that is."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        index = VideoIndex.build(((p.pts, p.dts, p.is_keyframe, p.is_discard) for p in packets),
                                 stream.time_base)
        targets = index.plan(None, FrameSettings(num_frames=NUM_FRAMES))
        runs = []
        for pts in targets:
            end = index.position[pts]
            runs.append(packets[index.keyframe_before[end]:end + 1])
        codec = stream.codec_context
        start = cpu_seconds()
        for run in runs:
            decoder = av.CodecContext.create(codec.name, "r")
            decoder.extradata = codec.extradata
            decoder.thread_count = 1
            for packet in run:
                decoder.decode(packet)
            decoder.decode(None)
        return cpu_seconds() - start, sum(len(run) for run in runs)


def long_video(name: str, path: Path, work: Path, period: int) -> tuple[dict, bool]:
    out = work / f"out_{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with av.open(str(path)) as container:
        frames = container.streams.video[0].frames
    expected = expected_indices(frames, period)
    pyav_cpu, pyav_got = project(path, "pyav", out)
    ffmpeg_cpu, ffmpeg_got = project(path, "ffmpeg", out)
    floor_cpu, floor_packets = decode_floor(path)
    full_cpu = full_decode(path, out)
    exact = pyav_got == expected and ffmpeg_got == expected
    row = {"frames": frames, "project_cpu_s": round(pyav_cpu, 3), "ffmpeg_backend_cpu_s": round(ffmpeg_cpu, 3),
           "floor_cpu_s": round(floor_cpu, 3), "floor_packets": floor_packets,
           "full_decode_cpu_s": round(full_cpu, 3), "vs_floor": round(pyav_cpu / floor_cpu, 3),
           "full_vs_project": round(full_cpu / pyav_cpu, 1), "exact": exact}
    print(f"{name:>6}: {frames} frames | project (PyAV) {pyav_cpu:.3f} CPU-s | ffmpeg backend "
          f"{ffmpeg_cpu:.3f} | floor {floor_cpu:.3f} ({floor_packets} packets) | full decode {full_cpu:.2f} | "
          f"project/floor {pyav_cpu / floor_cpu:.2f}x | full/project {full_cpu / pyav_cpu:.0f}x | "
          f"exact {exact}", flush=True)
    if not exact:
        print(f"        expected {expected}, PyAV {pyav_got}, ffmpeg {ffmpeg_got}")
    return row, exact


def short_clips(work: Path, count: int, seconds: float) -> tuple[dict, bool]:
    base = make_video(work / "short_base.mp4", 854, 480, seconds)
    clips = work / f"clips_{count}"
    if not clips.exists():
        temp = Path(tempfile.mkdtemp(dir=work))
        for number in range(count):  # distinct files (distinct cache keys), same pictures
            ffmpeg("-i", str(base), "-c", "copy", "-metadata", f"title=clip {number}",
                   str(temp / f"clip_{number:04d}.mp4"))
        temp.rename(clips)
    samples = [Sample(f"bench/{p.stem}", "bench", "video", p.name, "", "", ("",), p.stem)
               for p in sorted(clips.glob("*.mp4"))]
    frames = int(round(seconds * RATE))
    expected = expected_indices(frames, 1 << BITS)
    row, exact = {}, True
    for backend, workers in (("pyav", 1), ("pyav", 2), ("ffmpeg", 2)):
        [manifest] = build_manifests(samples, clips, FrameSettings(backend=backend), 1)
        cache = work / f"cache_{backend}_{workers}"
        shutil.rmtree(cache, ignore_errors=True)
        start, start_cpu = time.monotonic(), cpu_seconds()
        index = extract_shard(manifest, cache, workers=workers, log=logging.getLogger("bench"))
        wall, cpu = time.monotonic() - start, cpu_seconds() - start_cpu
        written = index["summary"]["frames_written"]
        rate = written / wall
        row[f"{backend}_{workers}proc"] = round(rate, 1)
        # Frames per CPU-second: what one free core sustains, whatever else shares the machine.
        row[f"{backend}_{workers}proc_per_cpu_s"] = round(written / cpu, 1)
        ok = all(r["status"] == "ok" for r in index["items"].values())
        for result in index["items"].values():
            got = [read_index(Image.open(Path(result["frames_dir"]) / f)) for f in result.get("frames", [])]
            ok = ok and got == expected
        exact = exact and ok
        print(f" clips: {count} x {seconds:g} s 480p, {backend}, {workers} process(es): {rate:.1f} frames/s "
              f"({written} JPEGs in {wall:.1f} s wall, {cpu:.1f} CPU-s: {written / cpu:.1f} per CPU-s), "
              f"exact {ok}", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    return row, exact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small videos, for a smoke run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vidtune-frames-bench")
    args = parser.parse_args(argv)
    work = args.workdir / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        long_spec, medium_spec, clips = (640, 360, 20, 3), (640, 360, 8, 1), (20, 5.0)
    else:
        long_spec, medium_spec, clips = (1920, 1080, 60, 10), (1280, 720, 40, 1), (200, 5.0)
    print("generating test videos (cached in", work, ")", flush=True)
    width, height, seconds, repeat = long_spec
    long_path = make_video(work / f"long_{height}p.mp4", width, height, seconds, repeat)
    width, height, seconds, repeat = medium_spec
    medium_path = make_video(work / f"medium_{height}p.mp4", width, height, seconds, repeat)

    long_row, long_exact = long_video("long", long_path, work, int(long_spec[2] * RATE))
    medium_row, medium_exact = long_video("medium", medium_path, work, 1 << BITS)
    short_row, short_exact = short_clips(work, *clips)
    summary = {
        "quick": args.quick,
        "long_cpu_s": long_row["project_cpu_s"], "long_floor_cpu_s": long_row["floor_cpu_s"],
        "long_full_decode_cpu_s": long_row["full_decode_cpu_s"],
        "long_ffmpeg_backend_cpu_s": long_row["ffmpeg_backend_cpu_s"],
        "long_vs_floor": long_row["vs_floor"], "long_full_vs_project": long_row["full_vs_project"],
        "medium": medium_row,
        "short_fps_1proc": short_row["pyav_1proc"], "short_fps_2proc": short_row["pyav_2proc"],
        "short_fps_2proc_ffmpeg_backend": short_row["ffmpeg_2proc"],
        "short_frames_per_cpu_s": short_row["pyav_2proc_per_cpu_s"],
        "load_average": round(os.getloadavg()[0], 2),
        "exact": long_exact and medium_exact and short_exact,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()
