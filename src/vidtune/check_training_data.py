"""The check_training_data step: which of a run's training records its model can take, before a GPU job starts.

A record is left out, with a reason of :mod:`vidtune.rejects`, when it has no answer (``no_answer``), its
human turn has another number of media placeholders than it has media (``placeholder_mismatch``), a frame
or image is missing (``missing_media``), or it is longer than ``max_seq_length`` tokens
(``over_length``): its text through the model's own chat template and tokenizer, plus the visual tokens of
its tiles (one per frame; an image's tiles by the processor's dynamic tiling). With ``over_length:
truncate_frames`` a long video keeps the most frames that fit, spread evenly over the clip, and is written
in InternVL's frame-list form.

The accepted records are InternVL files again: ``meta.json`` (the run's entries with their annotation
pointing at ``records/<dataset>.jsonl`` and their ``length`` updated) and the JSONL files, which training
reads without checking again; ``rejects.jsonl`` and ``summary.json`` count what was left out and why, for
the report's data summary.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from pathlib import Path

from vidtune.atomic import atomic_dir, write_json, write_jsonl
from vidtune.errors import DataError
from vidtune.internvl_format import (frame_list_record, read_meta, record_media_paths, record_text)
from vidtune.modeling import build_messages
from vidtune.rejects import reason, reason_code

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Checked:
    """The outcome for one record: the record to train on (None when left out), why it was left out or
    changed, and its length in tokens."""

    record: dict | None
    reason: str | None = None
    tokens: int | None = None


def sample_length(processor, prompt: str, target: str, media_type: str, num_tiles: list[int]) -> int:
    """Tokens of a sample as training encodes it: the rendered text, each media placeholder replaced by its
    tiles x the tokens per tile, plus its <img></img> pair."""
    text = processor.apply_chat_template(build_messages(prompt, media_type, len(num_tiles), target))
    text_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return text_tokens - len(num_tiles) + sum(tiles * processor.image_seq_length + 2 for tiles in num_tiles)


def image_tiles(processor, path: Path, record: dict, max_dynamic_patch: int) -> int:
    """How many tiles the processor makes of an image (its size from the record, else from the file)."""
    from PIL import Image

    if "width" in record and "height" in record:
        width, height = int(record["width"]), int(record["height"])
    else:
        with Image.open(path) as image:
            width, height = image.size
    kwargs = {"crop_to_patches": max_dynamic_patch > 1, "max_patches": max_dynamic_patch}
    return processor.image_processor.get_number_of_image_patches(height, width, kwargs)


def uniform_subset(paths: list[Path], count: int) -> list[Path]:
    """``count`` of the frames, spread evenly (the middle of each of ``count`` equal stretches)."""
    step = len(paths) / count
    return [paths[int(step * index + step / 2)] for index in range(count)]


def check_record(processor, record: dict, root: Path, max_dynamic_patch: int, max_seq_length: int,
                 over_length: str, file: str) -> Checked:
    text = record_text(record, file)
    if text.target is None or not text.target.strip():
        return Checked(None, reason("no_answer", "the record has no gpt turn with an answer"))
    if text.placeholders != text.media_count:
        return Checked(None, reason("placeholder_mismatch", f"{text.placeholders} media placeholders in the "
                                                            f"human turn for {text.media_count} media"))
    paths = record_media_paths(record, root)
    if not paths:
        media = record.get("video", record.get("image"))
        return Checked(None, reason("missing_media", f"no frames or image at {media} (under {root})"))
    if text.media_type == "image":
        tiles = [image_tiles(processor, paths[0], record, max_dynamic_patch)]
    else:
        tiles = [1] * len(paths)
    length = sample_length(processor, text.prompt, text.target, text.media_type, tiles)
    if length <= max_seq_length:
        return Checked(record, None, length)
    if over_length == "truncate_frames" and text.media_type == "video":
        for count in range(len(paths) - 1, 0, -1):
            shorter = sample_length(processor, text.prompt, text.target, "video", [1] * count)
            if shorter <= max_seq_length:
                frames = [os.path.relpath(path, root) for path in uniform_subset(paths, count)]
                return Checked(frame_list_record(str(record.get("id")), frames, text.prompt, text.target),
                               f"truncated from {len(paths)} to {count} frames ({length} tokens)", shorter)
    return Checked(None, reason("over_length", f"{length} tokens, over max_seq_length {max_seq_length}"), length)


def check_training_data(meta_path: str | Path, processor, out_dir: str | Path, *, max_seq_length: int,
                        over_length: str) -> dict:
    """Check every record of a run's meta.json; write ``meta.json``, ``records/``, ``rejects.jsonl`` and
    ``summary.json`` under ``out_dir``; return the summary. Fails when no record is left."""
    out_dir = Path(out_dir)
    meta, rejects, truncated, per_dataset, lengths = {}, [], [], {}, []
    with atomic_dir(out_dir / "records") as records_dir:
        for dataset in read_meta(meta_path):
            file, accepted, started = str(dataset.annotation), [], time.perf_counter()
            records = dataset.records()
            for number, record in enumerate(records, 1):
                checked = check_record(processor, record, dataset.root, dataset.max_dynamic_patch, max_seq_length,
                                       over_length, file)
                record_id = str(record.get("id"))
                if checked.record is None:
                    rejects.append({"file": file, "record": record_id, "reason": checked.reason,
                                    "dataset": dataset.name, "stage": "check"})
                    log.warning("left out %s/%s: %s", dataset.name, record_id, checked.reason)
                else:
                    accepted.append(checked.record)
                    lengths.append(checked.tokens)
                    if checked.reason:
                        truncated.append({"dataset": dataset.name, "id": record_id, "reason": checked.reason})
                if number % 1000 == 0:
                    log.info("%s: %d of %d records checked (%.0f/s)", dataset.name, number, len(records),
                             number / (time.perf_counter() - started))
            write_jsonl(records_dir / f"{dataset.name}.jsonl", accepted)
            meta[dataset.name] = {**dataset.entry, "root": os.path.relpath(dataset.root, out_dir) + os.sep,
                                  "annotation": f"records/{dataset.name}.jsonl", "length": len(accepted)}
            per_dataset[dataset.name] = {"records": len(records), "accepted": len(accepted),
                                         "rejected": len(records) - len(accepted),
                                         "truncated": sum(1 for t in truncated if t["dataset"] == dataset.name)}
    by_reason = dict(sorted(Counter(reason_code(r["reason"]) for r in rejects).items()))
    if not lengths:
        raise DataError(f"no training record is left ({by_reason}; first: {rejects[0]['reason'] if rejects else '-'})",
                        file=str(meta_path), fix="check the frames exist and max_seq_length leaves room for the "
                                                 "visual tokens (the log lists every record left out)")
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    summary = {
        "records": sum(d["records"] for d in per_dataset.values()), "accepted": len(lengths),
        "rejected": len(rejects), "truncated": len(truncated), "rejects_by_reason": by_reason,
        "datasets": per_dataset, "truncated_samples": truncated,
        "tokens": {"max_seq_length": max_seq_length, "longest": max(lengths),
                   "mean": round(sum(lengths) / len(lengths), 1)},
    }
    write_json(out_dir / "meta.json", meta)
    write_json(out_dir / "summary.json", summary)
    log.info("%d of %d records accepted (%d truncated), %d left out: %s", summary["accepted"], summary["records"],
             summary["truncated"], summary["rejected"], summary["rejects_by_reason"])
    return summary
