"""Frame extraction on real (tiny) videos whose frames show their own index as a barcode.

Every expected frame comes from a full decode of the same file, so these tests check that the seeking,
frame-dropping decoders return exactly the frames the policy defines, for both backends.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidtune.atomic import dumps_json
from vidtune.errors import MediaError
from vidtune.frames import FrameSettings, build_manifests, extract_shard, sample_frames
from vidtune.frames.decode import read_frames
from vidtune.frames.extract import cache_folder, load_record
from vidtune.rejects import REASONS, reason_code
from vidtune.samples import Sample

BITS, BAR, HEIGHT, RATE = 9, 16, 64, 30
BACKENDS = ["pyav", "ffmpeg"]


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run(["ffmpeg", "-nostdin" if stdin is None else "-y", "-y", "-v", "error", *args],
                   input=stdin, check=True)


def barcode_frames(count: int) -> bytes:
    """Gray frames, BITS bars wide: bar b is white when bit b of the frame index is set."""
    frames = np.full((count, HEIGHT, BITS * BAR), 16, np.uint8)
    for index in range(count):
        for bit in range(BITS):
            if index >> bit & 1:
                frames[index, :, bit * BAR:(bit + 1) * BAR] = 235
    return frames.tobytes()


def encode(out: Path, count: int, *extra: str) -> Path:
    ffmpeg("-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{BITS * BAR}x{HEIGHT}", "-r", str(RATE), "-i", "-",
           *extra, "-c:v", "libx264", "-g", "12", "-bf", "3", "-pix_fmt", "yuv420p", "-threads", "1",
           str(out), stdin=barcode_frames(count))
    return out


def read_index(image: Image.Image) -> int:
    gray = np.asarray(image.convert("L"), dtype=float)
    width = gray.shape[1]
    return sum(1 << bit for bit in range(BITS)
               if gray[:, int((bit + 0.5) * width / BITS)].mean() > 128)


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    cfr = encode(root / "cfr.mp4", 90)
    made = {"cfr": cfr}
    made["offset"] = root / "offset.mkv"
    ffmpeg("-i", str(cfr), "-c", "copy", "-output_ts_offset", "3.5", str(made["offset"]))
    # Variable rate: 30 frames at 1/30 s, then 30 at 2/30 s.
    made["vfr"] = encode(root / "vfr.mkv", 60, "-vf", "setpts=(N+gte(N\\,30)*(N-30))/30/TB",
                         "-fps_mode", "passthrough")
    made["rotated"] = root / "rotated.mp4"
    ffmpeg("-i", str(cfr), "-c", "copy", "-metadata:s:v", "rotate=90", str(made["rotated"]))
    made["audio"] = root / "audio.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(made["audio"]))
    made["truncated"] = root / "truncated.mp4"  # moov atom at the end: cut off
    made["truncated"].write_bytes(cfr.read_bytes()[: cfr.stat().st_size // 2])
    made["cut"] = root / "cut.mp4"  # moov atom first, frames cut off: a clear "truncated" reason
    ffmpeg("-i", str(cfr), "-c", "copy", "-movflags", "+faststart", str(made["cut"]))
    made["cut"].write_bytes(made["cut"].read_bytes()[: made["cut"].stat().st_size * 6 // 10])
    made["zero"] = root / "zero.mkv"  # a video stream, no frames: the file ends before its first cluster
    ffmpeg("-i", str(cfr), "-c", "copy", str(made["zero"]))
    data = made["zero"].read_bytes()
    made["zero"].write_bytes(data[: data.index(bytes.fromhex("1f43b675"))])
    made["corrupt"] = root / "corrupt.mp4"
    made["corrupt"].write_bytes(np.random.default_rng(0).bytes(20000))
    made["text"] = root / "notes.mp4"
    made["text"].write_text("not a video\n")
    return made


def full_decode(path: Path) -> tuple[list[float], list[int]]:
    """Every frame's time (s from the first frame) and barcode, decoding everything."""
    with av.open(str(path)) as container:
        frames = [(f.time, read_index(f.to_image())) for f in container.decode(video=0)]
    frames.sort()
    return [round(t - frames[0][0], 6) for t, _ in frames], [i for _, i in frames]


def check(path: Path, settings: FrameSettings, clip, expected: list[int]) -> list[float]:
    images, times = read_frames(path, settings, clip)
    assert [read_index(image) for image in images] == expected
    ref_times, ref_index = full_decode(path)
    assert times == [ref_times[ref_index.index(i)] for i in expected]
    return times


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["cfr", "offset"])
def test_uniform_and_fps_give_exact_frames(videos, backend, name):
    path = videos[name]
    n = 90
    uniform = [math.floor((i + 0.5) * n / 8) for i in range(8)]
    times = check(path, FrameSettings(backend=backend), None, uniform)
    assert times[0] == pytest.approx(uniform[0] / RATE, abs=1e-3)  # from the first frame (MKV: ms)
    # A clip window 1.0-2.0 s: frames 30..59.
    check(path, FrameSettings(backend=backend, num_frames=4), (1.0, 2.0),
          [30 + math.floor((i + 0.5) * 30 / 4) for i in range(4)])
    # fps: 2 per second over 3 s, thinned to 5.
    check(path, FrameSettings(backend=backend, policy="fps", fps=2.0, max_frames=5), None,
          [math.floor((i + 0.5) * 90 / 5) for i in range(5)])
    check(path, FrameSettings(backend=backend, policy="fps", fps=1.0), (0.5, 2.5), [15 + 15, 15 + 45])


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_follows_real_timestamps(videos, backend):
    ref_times, ref_index = full_decode(videos["vfr"])
    assert ref_times[31] - ref_times[30] == pytest.approx(2 / 30, abs=1e-3)  # really variable
    # The window lasts until one typical (median) frame interval after its last frame.
    span = ref_times[-1] + statistics.median(b - a for a, b in zip(ref_times, ref_times[1:]))
    expected = []
    for i in range(6):
        centre = (i + 0.5) * span / 6
        expected.append(ref_index[max(k for k, t in enumerate(ref_times) if t <= centre + 1e-6)])
    check(videos["vfr"], FrameSettings(backend=backend, num_frames=6), None, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_metadata_turns_frames_upright_like_ffmpeg(videos, backend, tmp_path):
    images, _ = read_frames(videos["rotated"], FrameSettings(backend=backend, num_frames=1), None)
    assert images[0].size == (HEIGHT, BITS * BAR)  # portrait now
    shown = tmp_path / "shown.png"  # what ffmpeg displays (it applies the rotation itself)
    ffmpeg("-i", str(videos["rotated"]), "-vf", "select=eq(n\\,45)", "-frames:v", "1", str(shown))
    difference = np.abs(np.asarray(images[0].convert("L"), float) - np.asarray(Image.open(shown).convert("L"), float))
    assert difference.mean() < 10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,clip,settings,code,reason", [
    ("audio", None, {}, "unreadable_media", "no video stream"),
    ("truncated", None, {}, "unreadable_media", "cannot open"),
    ("cut", None, {}, "damaged_media", "truncated: [0-9]+ of the 90 frames it declares"),
    ("zero", None, {}, "unreadable_media", "ends before its first frame"),
    ("corrupt", None, {}, "unreadable_media", "cannot open"),
    ("text", None, {}, "unreadable_media", "cannot open"),
    ("cfr", (10.0, 12.0), {}, "clip_outside_duration", "after the end of the video"),
    ("cfr", (1.0, 1.1), {"min_frames": 4}, "too_few_frames", "fewer than min_frames"),
])
def test_broken_files_are_rejected_with_a_reason(videos, backend, name, clip, settings, code, reason):
    with pytest.raises(MediaError, match=reason) as raised:
        sample_frames(videos[name], FrameSettings(backend=backend, **settings), clip)
    assert raised.value.file == str(videos[name])
    assert raised.value.code == code  # the reject's class; the message stays the record's own detail


@pytest.mark.parametrize("backend", BACKENDS)
def test_awkward_file_names(videos, backend, tmp_path):
    odd = tmp_path / "a b 'q' \"d\" $(touch pwned) ü\nx:y.mp4"
    odd.write_bytes(videos["cfr"].read_bytes())
    images = sample_frames(odd, FrameSettings(backend=backend, num_frames=2))
    assert [read_index(i) for i in images] == [22, 67]
    assert not (Path.cwd() / "pwned").exists()


def sample(number: int, path: Path, group: str, clip=(None, None), media_type="video", prompt="p") -> Sample:
    return Sample(f"d/{number}", "d", media_type, path.name, prompt, "t", ("t",), group, *clip)


def test_extract_shard_index_cache_reuse_and_rejects(videos, tmp_path):
    image = tmp_path / "still.png"
    Image.new("RGB", (40, 30), "red").save(image)
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8\xff\xe0 not really")
    for name in ("cfr", "vfr", "audio"):
        os.link(videos[name], tmp_path / videos[name].name)
    samples = [sample(1, videos["cfr"], "g1"), sample(2, videos["cfr"], "g1", prompt="other caption"),
               sample(3, videos["cfr"], "g1", clip=(1.0, 2.0)), sample(4, videos["vfr"], "g2"),
               sample(5, videos["audio"], "g3"), sample(6, image, "g4", media_type="image"),
               sample(7, broken_image, "g5", media_type="image"), sample(8, tmp_path / "gone.mp4", "g6")]
    settings = FrameSettings(num_frames=4, short_side=32)
    [manifest] = build_manifests(samples, tmp_path, settings, 1)
    cache = tmp_path / "cache"
    first = extract_shard(manifest, cache, workers=2)
    items = first["items"]
    assert first["summary"] == {"extracted": 4, "reused": 0, "rejected": 3, "frames_written": 12}
    by_ids = {tuple(r["sample_ids"]): r for r in items.values()}
    whole = by_ids[("d/1", "d/2")]
    assert whole["frames"] == [f"frame_{n:06d}.jpg" for n in range(1, 5)]
    assert (whole["width"], whole["height"]) == (72, 32)
    folder = Path(whole["frames_dir"])
    assert [read_index(Image.open(folder / n)) for n in whole["frames"]] == [11, 33, 56, 78]
    assert sorted(p.name for p in folder.iterdir()) == whole["frames"]  # frames only: InternVL opens each
    assert json.loads((folder.parent / "frames.json").read_text())["timestamps"] == whole["timestamps"]
    assert by_ids[("d/5",)]["reason"].startswith("unreadable_media: no video stream")
    assert by_ids[("d/6",)] == {"status": "ok", "media_type": "image", "image": str(image), "width": 40,
                                "height": 30, "sample_ids": ["d/6"]}
    assert by_ids[("d/7",)]["status"] == "rejected"
    rejected = [r["reason"] for r in items.values() if r["status"] == "rejected"]
    assert len(rejected) == 3 and all(reason_code(r) in REASONS for r in rejected), rejected
    assert by_ids[("d/8",)] == {"status": "rejected",
                                "reason": f"missing_media: {tmp_path / 'gone.mp4'} does not exist",
                                "file": str(tmp_path / "gone.mp4"), "sample_ids": ["d/8"]}

    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.jpg")}
    again = extract_shard(manifest, cache, workers=1)
    assert again["summary"] == {"extracted": 0, "reused": 4, "rejected": 3, "frames_written": 0}
    assert dumps_json(again["items"]) == dumps_json(items)  # the same index whether reused or not
    assert stamps == {p: p.stat().st_mtime_ns for p in cache.rglob("*.jpg")}  # nothing rewritten


def test_hanging_decode_times_out(tmp_path):
    fifo = tmp_path / "hangs.mp4"
    os.mkfifo(fifo)  # opening it for reading blocks forever
    manifest = {"settings": FrameSettings(timeout_s=1.0).as_dict(), "items": [
        {"key": "ab" * 32, "media_type": "video", "path": str(fifo), "clip": None, "duration": None,
         "sample_ids": ["d/1"]}]}
    index = extract_shard(manifest, tmp_path / "cache", workers=1)
    assert index["items"]["ab" * 32]["reason"].startswith("decode_timeout: timed out after 1 s")


def test_killed_extraction_leaves_nothing_trusted(videos, tmp_path):
    [manifest] = build_manifests([sample(1, videos["cfr"], "g")], videos["cfr"].parent,
                                 FrameSettings(num_frames=4), 1)
    cache = tmp_path / "cache"
    # A child that writes one frame, then stalls: killed there with SIGKILL.
    script = (
        "import json, sys, time\n"
        "from PIL import Image\n"
        "from vidtune.frames import FrameSettings, extract\n"
        "save = Image.Image.save\n"
        "def slow(self, *a, **k):\n"
        "    save(self, *a, **k); print('saved', flush=True); time.sleep(60)\n"
        "Image.Image.save = slow\n"
        "m = json.loads(sys.argv[1])\n"
        "extract.extract_item(m['items'][0], sys.argv[2], FrameSettings(**m['settings']))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, json.dumps(manifest), str(cache)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "saved"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    key = manifest["items"][0]["key"]
    folder = cache_folder(cache, key)
    assert not folder.exists() and load_record(folder) is None
    [temp] = folder.parent.glob(f".{key}.tmp-*")
    assert len(list(temp.glob("frames/*.jpg"))) == 1

    index = extract_shard(manifest, cache, workers=1)
    assert index["summary"]["extracted"] == 1
    assert len(index["items"][key]["frames"]) == 4
    assert not temp.exists()
