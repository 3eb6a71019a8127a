"""The InternVL file contract, checked the way InternVL's own fine-tuning data code reads the files.

``load_like_internvl`` does what internvl_chat's ``build_datasets`` and ``LazySupervisedDataset`` do
(without their code): open ``annotation`` and every media path joined to ``root`` from the trainer's
working directory (meta.json's folder, as docs/datasets.md says), take an ``image`` list through the
multi-image path (one ``<image>`` per image), a string through the single-image path, and a ``video``
folder through the frame-folder reader, which opens every file in the folder as an image. It runs on
frames extracted from real videos here, and on the files of a real workflow run (the quick demo).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

import fixtures_datasets as fx
from vidtune.frames import FrameSettings, build_manifests, extract_shard
from vidtune.internvl_files import write_internvl_dataset
from vidtune.internvl_format import write_meta
from vidtune.samples import Sample, write_split_table


def load_like_internvl(meta_path: Path) -> dict[str, int]:
    """Load every record of meta.json as InternVL's trainer would; returns images opened per dataset."""
    meta_path = Path(meta_path).resolve()
    meta = json.loads(meta_path.read_text())
    opened: dict[str, int] = {}
    here = os.getcwd()
    os.chdir(meta_path.parent)  # InternVL resolves annotation and root against its working directory
    try:
        for name, entry in meta.items():
            root, annotation = entry["root"], entry["annotation"]
            assert not os.path.isabs(root) and not os.path.isabs(annotation), entry
            assert annotation.endswith("jsonl")
            repeat_time = entry["repeat_time"]
            assert repeat_time > 0 and (repeat_time <= 1 or isinstance(repeat_time, int)), repeat_time
            with open(annotation) as handle:
                lines = handle.readlines()
            assert entry["length"] == len(lines)
            opened[name] = 0
            for line in lines:
                record = json.loads(line)
                human = record["conversations"][0]
                assert human["from"] == "human" and record["conversations"][1]["from"] == "gpt"
                frames = None
                if isinstance(record.get("image"), list):
                    paths = frames = [os.path.join(root, path) for path in record["image"]]
                    assert human["value"].count("<image>") == len(paths) > 0, record
                elif "image" in record:
                    paths = [os.path.join(root, record["image"])]
                    assert human["value"].count("<image>") == 1, record
                else:
                    folder = os.path.join(root, record["video"])
                    paths = frames = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
                    assert human["value"].count("<video>") == 1 and "<image>" not in human["value"], record
                for path in frames or []:  # frames live under root; only a dataset's own images may not
                    assert os.path.realpath(path).startswith(os.path.realpath(root) + os.sep), path
                for path in paths:
                    with Image.open(path) as image:
                        image.convert("RGB")
                opened[name] += len(paths)
    finally:
        os.chdir(here)
    return opened


def record_paths(meta_path: Path) -> list[str]:
    """Every path meta.json and its JSONL files name."""
    meta = json.loads(Path(meta_path).read_text())
    paths = []
    for entry in meta.values():
        paths += [entry["root"], entry["annotation"]]
        for line in (Path(meta_path).parent / entry["annotation"]).read_text().splitlines():
            record = json.loads(line)
            media = record.get("video", record.get("image"))
            paths += media if isinstance(media, list) else [media]
    return paths


def _sample(local_id: str, media_path: str, media_type: str = "video", **fields) -> Sample:
    return Sample(sample_id=f"d/{local_id}", dataset="d", media_type=media_type, media_path=media_path,
                  prompt="Describe the video.", target=f"caption of {local_id}",
                  references=(f"caption of {local_id}",), group_key=media_path, source=f"ann:{local_id}", **fields)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with a dataset under data/ and its frames extracted into results/."""
    work = tmp_path / "project"
    fx.make_video(work / "data" / "a.mp4", seconds=2.0)
    fx.make_image(work / "data" / "still.jpg")
    monkeypatch.chdir(work)
    samples = [_sample("whole", "a.mp4"), _sample("clip", "a.mp4", clip_start=0.5, clip_end=1.5),
               _sample("still", "still.jpg", media_type="image")]
    [manifest] = build_manifests(samples, "data", FrameSettings(num_frames=3, short_side=32), 1)
    index = extract_shard(manifest, "results/frames/cache", workers=1)
    assert all(item["status"] == "ok" for item in index["items"].values())
    (work / "index.json").write_text(json.dumps(index))
    write_split_table(work / "split.parquet", [(sample, "train") for sample in samples])
    return work


def write_run(form: str, repeat_time=1) -> Path:
    cfg = {"root": "data", "internvl_video_form": form, "repeat_time": repeat_time, "max_dynamic_patch": 6}
    out = Path("results/datasets/d/internvl")
    write_internvl_dataset(Path("split.parquet"), [Path("index.json")], out, "d", cfg, base=Path("results"))
    meta = Path("results/runs/r/meta.json")
    write_meta([("d", out / "train.jsonl", 3, cfg)], meta, root=Path("results"))
    return meta


@pytest.mark.parametrize("form", ["images", "video"])
def test_every_record_loads_as_internvl_reads_it(project, form):
    meta = write_run(form, repeat_time=2)
    assert load_like_internvl(meta) == {"d": 3 + 3 + 1}  # two clips of 3 frames, one image
    assert not [path for path in record_paths(meta) if os.path.isabs(path)]
    for folder in (project / "results/frames/cache").glob("*/*/frames"):
        assert sorted(p.suffix for p in folder.iterdir()) == [".jpg"] * 3  # frames only, nothing beside


def test_default_form_needs_no_optional_loader(project):
    """InternVL hands its frame-folder reader no loader without petrel_client; image lists need none."""
    write_run("images")
    train = project / "results/datasets/d/internvl/train.jsonl"
    records = [json.loads(line) for line in train.read_text().splitlines()]
    assert records and not [record for record in records if "video" in record]
    clip = next(record for record in records if record["id"] == "d/clip")
    assert clip["conversations"][0]["value"] == "Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\n" \
                                                "Describe the video."


@pytest.mark.parametrize("form", ["images", "video"])
def test_moving_the_project_or_the_results_folder_keeps_the_files_loadable(project, form, tmp_path,
                                                                          monkeypatch):
    write_run(form)
    moved = tmp_path / "renamed project"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)
    assert load_like_internvl(moved / "results/runs/r/meta.json") == {"d": 7}
    # The results folder alone, elsewhere: the frames move with it; the dataset's own image stays behind,
    # named from the results folder (../data/still.jpg), so here its dataset is put back beside it.
    elsewhere = tmp_path / "scratch" / "out"
    shutil.move(moved / "results", elsewhere)
    shutil.move(moved / "data", elsewhere.parent / "data")
    assert load_like_internvl(elsewhere / "runs/r/meta.json") == {"d": 7}


@pytest.mark.integration
def test_a_real_run_loads_as_internvl_reads_it(quick_run, tmp_path):
    meta = quick_run.path("results/runs/demo/meta.json")
    counts = load_like_internvl(meta)
    assert counts["demo"] > 0
    assert not [path for path in record_paths(meta) if os.path.isabs(path)]
    for split in ("train", "val", "test"):
        for line in quick_run.path(f"results/datasets/demo/internvl/{split}.jsonl").read_text().splitlines():
            assert isinstance(json.loads(line)["image"], list)  # the default form
    copy = tmp_path / "results copy"
    shutil.copytree(quick_run.path("results/runs"), copy / "runs")
    shutil.copytree(quick_run.path("results/datasets"), copy / "datasets")
    shutil.copytree(quick_run.path("results/frames"), copy / "frames")
    assert load_like_internvl(copy / "runs/demo/meta.json") == counts
