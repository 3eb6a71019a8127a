"""Incremental reruns at scale (issue 7): the no-op dry run at 300k clips, and the work done after a caption
edit and after one added video.

Two parts, each in a scratch working directory that runs the repository's Snakefile:

* Scale (default 300,000 clips): the clips are stood in for by tiny distinct JPEG files (a few hundred
  bytes each, written in seconds; a real decode of 300k videos would take hours here and tells nothing
  about Snakemake's bookkeeping). The whole ``train_all`` runs once for real (training a single step,
  evaluating a few hundred test samples), then ``snakemake -n train_all`` is timed: wall time and peak
  memory of the Snakemake process.
* Work after edits (default 60 real demo videos): ``prepare_all`` once, then a caption edit and one added
  video, counting the frame folders written each time.

The last line printed is one JSON object with ``noop_dryrun_s``, ``noop_dryrun_rss_mb``,
``frames_written_after_caption_edit`` and ``videos_extracted_after_adding_one`` (and more).
Usage: python benchmarks/incremental.py [--clips 300000] [--videos 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vidtune.demo import _render  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(workdir: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stderr[-6000:]}")
    return elapsed, result


def measured_dry_run(workdir: Path) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of a no-op `snakemake -n train_all`, in a child we can measure."""
    code = (
        "import resource, subprocess, sys, time, json;"
        "t = time.perf_counter();"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "print(json.dumps({'s': time.perf_counter() - t, 'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'out': r.stdout[-2000:] + r.stderr[-2000:], 'rc': r.returncode}))"
    )
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", "-n", "train_all"]
    result = json.loads(subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True,
                                       check=True).stdout)
    if result["rc"] != 0:
        raise SystemExit(f"dry run failed:\n{result['out']}")
    return result["s"], result["rss_kb"] / 1024, result["out"]


def base_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def stand_in_images(root: Path, count: int) -> None:
    """`count` distinct tiny JPEGs (one encoded image with a per-file comment segment) and their JSONL."""
    buffer = BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="JPEG", quality=50)
    jpeg = buffer.getvalue()
    root.mkdir(parents=True)
    with open(root / "annotations.jsonl", "w") as annotations:
        for index in range(count):
            name = f"{index // 1000:03d}/img_{index:06d}.jpg"
            if index % 1000 == 0:
                (root / name).parent.mkdir()
            comment = f"clip {index}".encode()
            segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
            (root / name).write_bytes(jpeg[:2] + segment + jpeg[2:])
            annotations.write(json.dumps({"image": name, "caption": f"a red square number {index % 97}"}) + "\n")


def scale_part(workdir: Path, clips: int) -> dict:
    data = workdir / "data"
    start = time.perf_counter()
    stand_in_images(data, clips)
    generate_s = time.perf_counter() - start
    config = base_config()
    config["datasets"] = {"scale": {
        "format": "jsonl", "root": str(data), "annotations": str(data / "annotations.jsonl"),
        "prompt": "Describe the image.", "shards": 64, "max_dynamic_patch": 1,
        "split": {"train": 0.998, "val": 0.0, "test": 0.002, "seed": 0}}}
    run = config["runs"]["demo"]
    run["datasets"] = ["scale"]
    run["training"].update(max_steps=2, epochs=1, batch_size=1, save_steps=2, warmup_ratio=0.0)
    run["evaluation"].update(max_new_tokens=2, batch_size=32)
    config["runs"] = {"scale": run}
    write_config(workdir, config)
    first_s, _ = snakemake(workdir, "train_all")
    noop_s, rss_mb, output = measured_dry_run(workdir)
    if "Nothing to be done" not in output:
        raise SystemExit(f"the dry run after a complete run is not a no-op:\n{output}")
    return {"clips": clips, "generate_s": round(generate_s, 1), "first_train_all_s": round(first_s, 1),
            "noop_dryrun_s": round(noop_s, 2), "noop_dryrun_rss_mb": round(rss_mb, 1)}


def frame_folders(workdir: Path) -> dict[str, int]:
    cache = workdir / "results" / "frames" / "cache"
    return {str(p): p.stat().st_mtime_ns for p in cache.glob("*/*") if p.is_dir() and not p.name.startswith(".")}


def frames_in(folders) -> int:
    return sum(len(list(Path(f).glob("*.jpg"))) for f in folders)


def edits_part(workdir: Path, videos: int) -> dict:
    config = base_config()
    config["demo"].update(num_videos=videos, seconds=1, size=64)
    config["datasets"]["demo"]["shards"] = 8
    write_config(workdir, config)
    snakemake(workdir, "prepare_all")
    annotations = workdir / "results" / "demo" / "data" / "annotations.jsonl"

    before = frame_folders(workdir)
    lines = annotations.read_text().splitlines()
    record = json.loads(lines[0])
    record["caption"] += " slowly"
    annotations.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    caption_s, _ = snakemake(workdir, "prepare_all")
    after = frame_folders(workdir)
    rewritten = [f for f in after if before.get(f) != after[f]]

    new_video = annotations.parent / "clip_added.mp4"
    _render(new_video, "blue", "bar", "left", size=64, seconds=1, fps=10, track=0.5, speed=0.9)
    with open(annotations, "a") as handle:
        handle.write(json.dumps({"video": new_video.name, "caption": "a blue bar moves to the left"}) + "\n")
    add_s, _ = snakemake(workdir, "prepare_all")
    final = frame_folders(workdir)
    added = [f for f in final if after.get(f) != final[f]]
    return {"videos": videos, "caption_edit_prepare_s": round(caption_s, 1),
            "frames_written_after_caption_edit": frames_in(rewritten),
            "add_video_prepare_s": round(add_s, 1), "videos_extracted_after_adding_one": len(added),
            "frames_written_after_adding_one": frames_in(added)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=300_000)
    parser.add_argument("--videos", type=int, default=60)
    parser.add_argument("--keep", type=Path, help="work under this folder and keep it")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="vidtune-incremental-"))
    try:
        edits = edits_part(base / "edits", args.videos)
        print(f"edits: {edits}", flush=True)
        scale = scale_part(base / "scale", args.clips)
        print(f"scale: {scale}", flush=True)
        print(json.dumps({**scale, **edits}))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
