"""Prediction: the CLI answers for an image, a frame folder and a video file, like the library does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import av
import pytest
import torch

from vidtune.predict import main, predict_records
from vidtune.tiny_model import synthetic_frames, write_synthetic_dataset
from vidtune.atomic import read_jsonl
from vidtune.train import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A full finetune of the shared tiny model that has learnt four captions (full finetuning learns fastest)."""
    data = tmp_path_factory.mktemp("data")
    meta = write_synthetic_dataset(data, 4, num_frames=2, size=32, images=1)
    out = tmp_path_factory.mktemp("run")
    train(meta, tiny, out, {"method": "full", "epochs": 80, "learning_rate": 2e-3, "batch_size": 4,
                            "save_steps": 1000, "warmup_ratio": 0.0})
    return out / "final", data, read_jsonl(data / "train.jsonl")


def _cli(capsys, *args) -> str:
    assert main([str(arg) for arg in args]) == 0
    return capsys.readouterr().out.strip()


def test_library_batched_and_cli_agree(trained, capsys, tmp_path):
    model, data, records = trained
    evaluation = {"max_new_tokens": 12}
    batched = predict_records(model, records, data, {**evaluation, "batch_size": 4})
    single = predict_records(model, records, data, {**evaluation, "batch_size": 1})
    assert batched == single  # left padding changes nothing
    expected = [record["conversations"][1]["value"] for record in records]
    assert [entry["prediction"] for entry in batched] == expected

    video = records[0]
    assert _cli(capsys, "--model", model, "--video", data / video["video"], "--max-new-tokens", 12) == expected[0]
    image = records[-1]
    assert "image" in image
    assert _cli(capsys, "--model", model, "--image", data / image["image"], "--max-new-tokens", 12) == expected[-1]

    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records))
    _cli(capsys, "--model", model, "--jsonl", jsonl, "--out", tmp_path / "predictions.jsonl", "--root", data,
         "--max-new-tokens", 12)
    assert read_jsonl(tmp_path / "predictions.jsonl") == batched


def test_cli_reports_missing_media(trained, capsys, tmp_path):
    model, _, _ = trained
    assert main(["--model", str(model), "--image", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_cli_missing_video_is_one_line_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vidtune.predict", "--model", str(tmp_path),
                             "--video", str(tmp_path / "missing.mp4")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "missing.mp4" in lines[0] and "What to do: check the --video path" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_video_file(trained, tmp_path):
    """A real video file goes through vidtune.frames with the frame settings stored at training time."""
    model, _, records = trained
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for frame in synthetic_frames("red", "circle", "left", num_frames=8, size=32):
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    result = subprocess.run([sys.executable, "-m", "vidtune.predict", "--model", str(model), "--video", str(video),
                             "--max-new-tokens", "12"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("a ")
