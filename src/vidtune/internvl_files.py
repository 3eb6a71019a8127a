"""The internvl_files step: a dataset's split table and frame indexes become InternVL JSONL files per
split (format: vidtune.internvl_format), its rejects and summary; and InternVideo2.5's xtuner export.

Every file is written atomically with records sorted by id, so equal inputs give byte-identical files.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from vidtune.adapters.base import container_duration
from vidtune.rejects import reason_code
from vidtune.atomic import read_json, read_jsonl, write_json, write_jsonl
from vidtune.errors import DataError
from vidtune.internvl_format import conversation, image_record, portable_path, repeat_time, video_record
from vidtune.samples import SPLITS, Sample, read_split_table


def load_shard_indexes(paths: list[Path]) -> dict[str, dict]:
    """sample id -> its extraction item, from the frame-extraction shard indexes."""
    by_sample: dict[str, dict] = {}
    for path in paths:
        index = read_json(path, fix="rerun frame extraction for this shard")
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
    """The record of one sample from its extraction item; paths relative to ``base`` (see portable_path)."""
    if item["media_type"] == "image":
        return image_record(sample.sample_id, portable_path(item["image"], base), item["width"], item["height"],
                            sample.prompt, sample.target)
    return video_record(sample.sample_id, portable_path(item["frames_dir"], base), item["frames"], video_form,
                        sample.prompt, sample.target)


def _summary(dataset: str, per_split: Counter, rejects: list[dict], ingest_rejects: Path | None,
             **extra) -> dict:
    by_stage: dict[str, dict[str, int]] = {}
    if ingest_rejects is not None:
        codes = Counter(reason_code(record["reason"]) for record in read_jsonl(ingest_rejects))
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
        "repeat_time": repeat_time(cfg["repeat_time"]),
        "video_read_type": "decord",
        "sampling_strategy": "all",
        "length": per_split["train"],
    }}
    write_json(out_dir / "diy_ft_data.json", meta)
    summary = _summary(dataset, per_split, rejects, None, images_left_out=images)
    write_json(out_dir / "summary.json", summary)
    return summary
