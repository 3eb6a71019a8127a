"""Training files in InternVL's documented format, and InternVideo2.5's xtuner export.

InternVL (``internvl_chat/shell/data/*.json`` and its chat-data-format docs): one JSON Lines file per
split and dataset, records like::

    {"id": "demo/clip_000.mp4", "video": "results/frames/cache/ab/<key>/",
     "conversations": [{"from": "human", "value": "<video>\\n<prompt>"}, {"from": "gpt", "value": "<target>"}]}
    {"id": "coco/test/391895", "image": "<path>", "width": 640, "height": 480, "conversations": [...]}

``video`` is the frame folder written by frame extraction (files ``frame_<n>.jpg``, which InternVL's
``read_frames_folder`` orders by the number after the last ``_``); it already covers the clip window,
so records carry no ``clip``. Paths are relative to the working directory, as in the extraction index.

``meta.json`` entries (``root``, ``annotation``, ``data_augment``, ``max_dynamic_patch``,
``repeat_time``, ``length``) use the absolute working directory as ``root`` and an absolute
``annotation`` path, because InternVL's trainer runs from its own folder; they are the only absolute
paths vidtune writes, and they are the same on every run from the same checkout.

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


def conversation(prompt: str, target: str, placeholder: str) -> list[dict]:
    return [{"from": "human", "value": f"{placeholder}\n{prompt}"}, {"from": "gpt", "value": target}]


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


def internvl_record(sample: Sample, item: dict) -> dict:
    if item["media_type"] == "image":
        return {"id": sample.sample_id, "image": item["image"], "width": item["width"],
                "height": item["height"], "conversations": conversation(sample.prompt, sample.target, "<image>")}
    frames_dir = item["frames_dir"] if item["frames_dir"].endswith("/") else item["frames_dir"] + "/"
    return {"id": sample.sample_id, "video": frames_dir,
            "conversations": conversation(sample.prompt, sample.target, "<video>")}


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
                           cfg: dict, *, ingest_rejects: Path | None = None) -> dict:
    """Write ``train/val/test.jsonl`` (always all three), ``rejects.jsonl`` and ``summary.json`` under
    ``out_dir``; return the summary. ``ingest_rejects`` (ingest's rejects file) adds its counts."""
    out_dir = Path(out_dir)
    usable, rejects = _join(Path(split_table), shard_indexes)
    per_split: Counter = Counter()
    for split in SPLITS:
        records = [internvl_record(sample, item) for sample, s, item in usable if s == split]
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


def meta_entry(annotation: Path, length: int, cfg: dict, *, root: Path | None = None) -> dict:
    """One dataset's entry in InternVL's meta.json (``root`` defaults to the working directory).

    ``data_settings`` (ignored by InternVL's trainer) carries the prompt and frame sampling into the trained
    model's folder, so inference on a new video samples frames exactly as training did.
    """
    return {
        "root": str((root or Path.cwd()).resolve()) + os.sep,
        "annotation": os.path.abspath(annotation),
        "data_augment": False,
        "max_dynamic_patch": int(cfg.get("max_dynamic_patch", 6)),
        "repeat_time": cfg.get("repeat_time", 1),
        "length": int(length),
        "data_settings": _data_settings(cfg),
    }


def write_meta(run_datasets: list[tuple[str, Path, int, dict]], out_path: Path) -> dict:
    """InternVL's meta.json mixing ``(name, jsonl path, length, dataset cfg)`` entries; returns it."""
    meta = {name: meta_entry(Path(jsonl), length, cfg) for name, jsonl, length, cfg in run_datasets}
    if len(meta) != len(run_datasets):
        raise DataError("a dataset appears twice in one run", file=str(out_path),
                        fix="list each dataset once in runs.<run>.datasets")
    write_json(out_path, meta)
    return meta


def internvideo_record(sample: Sample, root: Path) -> dict:
    """An xtuner (InternVideo2.5) record: the source video with its clip window and the video's length."""
    duration = sample.duration if sample.duration is not None else container_duration(root / sample.media_path)
    record = {"id": sample.sample_id, "video": sample.media_path,
              "conversations": conversation(sample.prompt, sample.target, "<image>"),
              "duration": round(float(duration), 6)}
    if sample.clip_start is not None or sample.clip_end is not None:
        record["start"] = sample.clip_start if sample.clip_start is not None else 0.0
        record["end"] = sample.clip_end if sample.clip_end is not None else record["duration"]
    return record


def write_internvideo_export(split_table: Path, shard_indexes: list[Path], out_dir: Path, dataset: str,
                             cfg: dict) -> dict:
    """InternVideo2.5's xtuner format under ``out_dir``: ``train/val/test.jsonl`` and
    ``diy_ft_data.json`` (its meta, pointing at ``train.jsonl``); returns the summary.

    Records point at the source videos (xtuner decodes them itself, ``video_read_type: decord``) with
    the clip window as ``start``/``end``; samples that extraction rejected are left out, and so are
    images (xtuner's InternVideo2.5 recipe trains on video only).
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
        "root": str(root.resolve()) + os.sep,
        "annotation": os.path.abspath(out_dir / "train.jsonl"),
        "data_augment": False,
        "repeat_time": cfg.get("repeat_time", 1),
        "video_read_type": "decord",
        "sampling_strategy": "all",
        "length": per_split["train"],
    }}
    write_json(out_dir / "diy_ft_data.json", meta)
    summary = _summary(dataset, per_split, rejects, None, images_left_out=images)
    write_json(out_dir / "summary.json", summary)
    return summary
