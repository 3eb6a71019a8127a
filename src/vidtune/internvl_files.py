"""Training files in InternVL's documented format, and InternVideo2.5's xtuner export.

InternVL (``internvl_chat/shell/data/*.json`` and its chat-data-format docs): one JSON Lines file per
split and dataset. A video is written in one of two forms (the dataset's ``internvl_video_form``)::

    {"id": "demo/clip_000.mp4", "image": ["frames/cache/ab/<key>/frames/frame_000001.jpg", ...],
     "conversations": [{"from": "human", "value": "Frame-1: <image>\nFrame-2: <image>\n<prompt>"},
                       {"from": "gpt", "value": "<target>"}]}
    {"id": "demo/clip_000.mp4", "video": "frames/cache/ab/<key>/frames/",
     "conversations": [{"from": "human", "value": "<video>\n<prompt>"}, {"from": "gpt", "value": "<target>"}]}

``images`` (the default) is InternVL's multi-image form with the ``Frame-<i>: <image>`` lines its own video
expansion writes; its trainer loads it with PIL alone. ``video`` names the frame folder, which InternVL's
trainer reads only through the optional ``petrel_client`` loader. Either way the folder holds only the
frames ``frame_<n>.jpg``, and it already covers the clip window, so records carry no ``clip``. Images::

    {"id": "coco/test/391895", "image": "<path>", "width": 640, "height": 480, "conversations": [...]}

Paths in records are relative to the results folder (``base``): frames always; an image from a dataset
whose root is relative is named from there too (``../data/...``), one whose root is absolute stays
absolute. ``meta.json`` entries (``root``, ``annotation``, ``data_augment``, ``max_dynamic_patch``,
``repeat_time``, ``length``) give ``root`` (the results folder) and ``annotation`` relative to meta.json's
own folder, so moving or renaming the project or the results folder leaves every file loadable; InternVL's
trainer resolves them against its working directory, so it runs from meta.json's folder.

Every file is written atomically with records sorted by id, so equal inputs give byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from vidtune.adapters.base import container_duration
from vidtune.rejects import reason_code
from vidtune.atomic import write_json, write_jsonl
from vidtune.errors import DataError
from vidtune.samples import SPLITS, Sample, read_split_table


VIDEO_FORMS = ("images", "video")


def conversation(prompt: str, target: str, placeholder: str) -> list[dict]:
    return [{"from": "human", "value": f"{placeholder}\n{prompt}"}, {"from": "gpt", "value": target}]


def frame_lines(count: int) -> str:
    """The placeholders of ``count`` frames as InternVL's video expansion writes them."""
    return "\n".join(f"Frame-{number}: <image>" for number in range(1, count + 1))


def portable_path(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """``path`` relative to the folder ``start``, unless it is absolute and outside ``start`` (a dataset
    elsewhere on disk, which moves with neither the project nor the results folder)."""
    if os.path.isabs(path) and os.path.commonpath([path, os.path.abspath(start)]) != os.path.abspath(start):
        return str(path)
    return os.path.relpath(path, start)


def load_shard_indexes(paths: list[Path]) -> dict[str, dict]:
    """sample id -> its extraction item, from the frame-extraction shard indexes."""
    by_sample: dict[str, dict] = {}
    for path in paths:
        try:
            index = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON: {error.msg}", file=str(path), record=f"line {error.lineno}",
                            fix="rerun frame extraction for this shard") from None
        for key, item in sorted(index.get("items", {}).items()):
            for sample_id in item.get("sample_ids", []):
                by_sample[sample_id] = item
    return by_sample


def _join(split_table: Path, shard_indexes: list[Path],
          ) -> tuple[list[tuple[Sample, str, dict]], list[dict]]:
    """(sample, split, ok item) for each usable sample, and a reject record for each one that extraction
    rejected. A sample missing from every index is a pipeline fault, not bad data: it stops the step."""
    items = load_shard_indexes(shard_indexes)
    usable, rejects = [], []
    for sample, split in sorted(read_split_table(split_table), key=lambda pair: pair[0].sample_id):
        if split not in SPLITS:
            raise DataError(f"sample {sample.sample_id} has no split", file=str(split_table),
                            fix="rerun the split step")
        item = items.get(sample.sample_id)
        if item is None:
            raise DataError(f"sample {sample.sample_id} is in no frame-extraction index",
                            file=str(split_table), fix="rerun frame extraction (the indexes are stale)")
        if item.get("status") == "ok":
            usable.append((sample, split, item))
        else:
            rejects.append({"file": item.get("file", sample.media_path), "record": sample.sample_id,
                            "reason": item.get("reason", "rejected"), "source": sample.source,
                            "stage": "frames"})
    return usable, rejects


def internvl_record(sample: Sample, item: dict, video_form: str, base: Path) -> dict:
    """The record of one sample; paths relative to ``base`` (see :func:`portable_path`)."""
    if item["media_type"] == "image":
        return {"id": sample.sample_id, "image": portable_path(item["image"], base), "width": item["width"],
                "height": item["height"], "conversations": conversation(sample.prompt, sample.target, "<image>")}
    frames_dir = portable_path(item["frames_dir"], base)
    if video_form == "video":
        return {"id": sample.sample_id, "video": frames_dir + "/",
                "conversations": conversation(sample.prompt, sample.target, "<video>")}
    if video_form != "images":
        raise ValueError(f"internvl_video_form must be one of {VIDEO_FORMS}, not {video_form!r}")
    return {"id": sample.sample_id, "image": [f"{frames_dir}/{name}" for name in item["frames"]],
            "conversations": conversation(sample.prompt, sample.target, frame_lines(len(item["frames"])))}


def _summary(dataset: str, per_split: Counter, rejects: list[dict], ingest_rejects: Path | None,
             **extra) -> dict:
    by_stage: dict[str, dict[str, int]] = {}
    if ingest_rejects is not None:
        with open(ingest_rejects, encoding="utf-8") as handle:
            codes = Counter(reason_code(json.loads(line)["reason"]) for line in handle if line.strip())
        by_stage["ingest"] = dict(sorted(codes.items()))
    by_stage["frames"] = dict(sorted(Counter(reason_code(r["reason"]) for r in rejects).items()))
    by_reason: Counter = sum((Counter(codes) for codes in by_stage.values()), Counter())
    return {"dataset": dataset, "samples": {name: per_split.get(name, 0) for name in SPLITS},
            "total": sum(per_split.values()), "rejects": by_stage,
            "rejects_by_reason": dict(sorted(by_reason.items())),
            "rejected": sum(by_reason.values()), **extra}


def write_internvl_dataset(split_table: Path, shard_indexes: list[Path], out_dir: Path, dataset: str,
                           cfg: dict, *, base: Path, ingest_rejects: Path | None = None) -> dict:
    """Write ``train/val/test.jsonl`` (always all three), ``rejects.jsonl`` and ``summary.json`` under
    ``out_dir``; return the summary. Record paths are relative to ``base`` (the results folder);
    ``ingest_rejects`` (ingest's rejects file) adds its counts."""
    out_dir = Path(out_dir)
    usable, rejects = _join(Path(split_table), shard_indexes)
    per_split: Counter = Counter()
    for split in SPLITS:
        records = [internvl_record(sample, item, cfg["internvl_video_form"], base)
                   for sample, s, item in usable if s == split]
        per_split[split] = write_jsonl(out_dir / f"{split}.jsonl", records)
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    summary = _summary(dataset, per_split, rejects, ingest_rejects)
    write_json(out_dir / "summary.json", summary)
    return summary


def _data_settings(cfg: dict) -> dict:
    """The prompt and frame sampling a trained model must reproduce; the decode timeout is left out, so
    changing it does not make training stale."""
    settings = {key: cfg[key] for key in ("prompt", "frames") if key in cfg}
    if "frames" in settings:
        settings["frames"] = {k: v for k, v in settings["frames"].items() if k != "timeout_s"}
    return settings


def repeat_time(cfg: dict) -> int | float:
    """The dataset's repeat_time as InternVL asserts it: an int when 1 or more, a share of the data below."""
    value = cfg["repeat_time"]
    if value >= 1:
        if value != int(value):
            raise ValueError(f"repeat_time above 1 must be a whole number, not {value}")
        return int(value)
    return value


def meta_entry(annotation: Path, length: int, cfg: dict, *, root: Path, meta_dir: Path) -> dict:
    """One dataset's entry in InternVL's meta.json: ``root`` (the folder its records' paths are relative
    to) and ``annotation`` relative to ``meta_dir``, the folder meta.json is in.

    ``data_settings`` (ignored by InternVL's trainer) carries the prompt and frame sampling into the trained
    model's folder, so inference on a new video samples frames exactly as training did.
    """
    return {
        "root": os.path.relpath(root, meta_dir) + os.sep,  # both in the results folder: always relative
        "annotation": os.path.relpath(annotation, meta_dir),
        "data_augment": False,
        "max_dynamic_patch": int(cfg["max_dynamic_patch"]),
        "repeat_time": repeat_time(cfg),
        "length": int(length),
        "data_settings": _data_settings(cfg),
    }


def write_meta(run_datasets: list[tuple[str, Path, int, dict]], out_path: Path, *, root: Path) -> dict:
    """InternVL's meta.json mixing ``(name, jsonl path, length, dataset cfg)`` entries, whose records'
    paths are relative to ``root`` (the results folder); returns it."""
    meta = {name: meta_entry(Path(jsonl), length, cfg, root=root, meta_dir=Path(out_path).parent)
            for name, jsonl, length, cfg in run_datasets}
    if len(meta) != len(run_datasets):
        raise DataError("a dataset appears twice in one run", file=str(out_path),
                        fix="list each dataset once in runs.<run>.datasets")
    write_json(out_path, meta)
    return meta


def internvideo_record(sample: Sample, root: Path) -> dict:
    """An xtuner (InternVideo2.5) record: the source video, the clip window as ``start``/``end``, and
    ``duration``, the length of what the model sees (the clip's, for a clip), which its prompt states."""
    record = {"id": sample.sample_id, "video": sample.media_path,
              "conversations": conversation(sample.prompt, sample.target, "<image>")}
    if sample.clip_start is None and sample.clip_end is None:
        return {**record, "duration": round(float(_video_duration(sample, root)), 6)}
    start = sample.clip_start if sample.clip_start is not None else 0.0
    end = sample.clip_end if sample.clip_end is not None else _video_duration(sample, root)
    return {**record, "duration": round(float(end - start), 6), "start": start, "end": end}


def _video_duration(sample: Sample, root: Path) -> float:
    return sample.duration if sample.duration is not None else container_duration(root / sample.media_path)


def write_internvideo_export(split_table: Path, shard_indexes: list[Path], out_dir: Path, dataset: str,
                             cfg: dict) -> dict:
    """InternVideo2.5's xtuner format under ``out_dir``: ``train/val/test.jsonl`` and
    ``diy_ft_data.json`` (its meta, pointing at ``train.jsonl``); returns the summary.

    Records point at the source videos (xtuner decodes them itself, ``video_read_type: decord``) with
    the clip window as ``start``/``end``; samples that extraction rejected are left out, and so are
    images (xtuner's InternVideo2.5 recipe trains on video only). ``root`` and ``annotation`` are
    relative to ``out_dir`` (``root`` stays absolute when the dataset root is), as in meta.json.
    """
    out_dir = Path(out_dir)
    root = Path(cfg["root"])
    usable, rejects = _join(Path(split_table), shard_indexes)
    per_split: Counter = Counter()
    images = sum(1 for sample, _, _ in usable if sample.media_type == "image")
    for split in SPLITS:
        records = [internvideo_record(sample, root) for sample, s, _ in usable
                   if s == split and sample.media_type == "video"]
        per_split[split] = write_jsonl(out_dir / f"{split}.jsonl", records)
    meta = {dataset: {
        "root": portable_path(root, out_dir).rstrip(os.sep) + os.sep,
        "annotation": "train.jsonl",
        "data_augment": False,
        "repeat_time": repeat_time(cfg),
        "video_read_type": "decord",
        "sampling_strategy": "all",
        "length": per_split["train"],
    }}
    write_json(out_dir / "diy_ft_data.json", meta)
    summary = _summary(dataset, per_split, rejects, None, images_left_out=images)
    write_json(out_dir / "summary.json", summary)
    return summary
