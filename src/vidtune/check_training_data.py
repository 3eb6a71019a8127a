"""The check_training_data step: which of a run's training records its model can take, before a GPU job starts.

A record is left out, with a reason of :mod:`vidtune.rejects`, when it has no answer (``no_answer``), its
human turn has another number of media placeholders than it has media (``placeholder_mismatch``), a frame
or image is missing (``missing_media``), or it is longer than ``max_seq_length`` tokens
(``over_length``): its tokens as the model's family counts them (its text through the model's own chat
template and tokenizer, plus the visual tokens of its frames or images, from their sizes: no pixel is
decoded). With ``over_length: truncate_frames`` a long video keeps the most frames that fit, spread evenly
over the clip, and is written in the frame-list form.

It runs per run and dataset (the check depends on the run's model and settings and on the dataset's
records) and writes the accepted records (``train.jsonl``, untouched but for truncation), their lengths in
tokens (``lengths.json``, in the same order: what length-grouped batches and packing plan with),
``rejects.jsonl`` and ``summary.json``. :func:`write_training_meta` then makes the run's ``meta.json`` of the checked records,
in the same file format, which training reads without checking again; a check that accepts the same records as
before (another ``max_seq_length`` that changes nothing) leaves training as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from pathlib import Path

from vidtune.atomic import read_jsonl, write_json, write_jsonl
from vidtune.errors import DataError
from vidtune.internvl_format import (frame_list_record, read_meta, record_media_paths, record_text)
from vidtune.families import ModelFamily
from vidtune.families.base import uniform_subset
from vidtune.modeling import media_shape
from vidtune.rejects import reason, reason_code

log = logging.getLogger(__name__)
LENGTHS = "lengths.json"  # beside the checked train.jsonl: each accepted record's tokens, in its order


@dataclasses.dataclass(frozen=True)
class Checked:
    """The outcome for one record: the record to train on (None when left out), why it was left out or
    changed, and its length in tokens."""

    record: dict | None
    reason: str | None = None
    tokens: int | None = None


def check_record(family: ModelFamily, processor, record: dict, root: Path, max_dynamic_patch: int,
                 max_seq_length: int, over_length: str, file: str) -> Checked:
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
    shape = media_shape(paths, record, text.media_type, max_dynamic_patch)
    length = family.sample_length(processor, shape, text.prompt, text.target)
    if length <= max_seq_length:
        return Checked(record, None, length)
    if over_length == "truncate_frames" and text.media_type == "video":
        for count in range(len(paths) - 1, 0, -1):
            shorter = family.sample_length(processor, shape.with_count(count), text.prompt, text.target)
            if shorter <= max_seq_length:
                frames = [os.path.relpath(path, root) for path in uniform_subset(paths, count)]
                return Checked(frame_list_record(str(record.get("id")), frames, text.prompt, text.target),
                               f"truncated from {len(paths)} to {count} frames ({length} tokens)", shorter)
    return Checked(None, reason("over_length", f"{length} tokens, over max_seq_length {max_seq_length}"), length)


def check_dataset(annotation: str | Path, root: str | Path, processor, out_dir: str | Path, *,
                  family: ModelFamily, dataset: str, max_dynamic_patch: int, max_seq_length: int,
                  over_length: str) -> dict:
    """Check one dataset's training records for a model of ``family`` (``processor``: the model's); write ``train.jsonl`` (the accepted ones), ``lengths.json`` (their
    token counts), ``rejects.jsonl`` and ``summary.json`` under ``out_dir``; return the summary. Record paths
    stay relative to ``root``."""
    out_dir, file = Path(out_dir), str(annotation)
    records = read_jsonl(annotation)
    accepted, rejects, truncated, lengths, started = [], [], [], [], time.perf_counter()
    for number, record in enumerate(records, 1):
        checked = check_record(family, processor, record, Path(root), max_dynamic_patch, max_seq_length,
                               over_length, file)
        record_id = str(record.get("id"))
        if checked.record is None:
            rejects.append({"file": file, "record": record_id, "reason": checked.reason, "dataset": dataset,
                            "stage": "check"})
            log.warning("left out %s/%s: %s", dataset, record_id, checked.reason)
        else:
            accepted.append(checked.record)
            lengths.append(checked.tokens)
            if checked.reason:
                truncated.append({"dataset": dataset, "id": record_id, "reason": checked.reason})
                log.info("%s/%s: %s", dataset, record_id, checked.reason)
        if number % 1000 == 0:
            log.info("%s: %d of %d records checked (%.0f/s)", dataset, number, len(records),
                     number / (time.perf_counter() - started))
    summary = {"dataset": dataset, "records": len(records), "accepted": len(accepted), "rejected": len(rejects),
               "truncated": len(truncated), "truncated_samples": truncated,
               "rejects_by_reason": dict(sorted(Counter(reason_code(r["reason"]) for r in rejects).items())),
               "tokens": {"max_seq_length": max_seq_length, "longest": max(lengths, default=0),
                          "total": sum(lengths)}}
    write_jsonl(out_dir / "train.jsonl", accepted)
    write_json(out_dir / LENGTHS, lengths)
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    write_json(out_dir / "summary.json", summary)
    log.info("%s: %d of %d records accepted (%d truncated), %d left out: %s", dataset, len(accepted), len(records),
             len(truncated), len(rejects), summary["rejects_by_reason"])
    return summary


def write_training_meta(run_meta: str | Path, records: dict[str, Path], out_path: str | Path) -> dict:
    """The run's checked training data as an InternVL ``meta.json`` at ``out_path``: the run's entries, each
    pointing at its dataset's checked records (``records[name]``) with their count, and at their token counts
    (``lengths``: the check step's lengths.json beside them, where it is); returns it. A dataset with
    no record left is left out of the mix; none left at all fails, before any training job starts."""
    out_path = Path(out_path)
    meta, empty = {}, []
    for dataset in read_meta(run_meta):
        path = Path(records[dataset.name])
        length = len(read_jsonl(path))
        if not length:
            empty.append(dataset.name)
            log.warning("dataset %s has no training record left: it is not in the training mix", dataset.name)
            continue
        meta[dataset.name] = {**dataset.entry, "root": os.path.relpath(dataset.root, out_path.parent) + os.sep,
                              "annotation": os.path.relpath(path, out_path.parent), "length": length}
        if (path.parent / LENGTHS).is_file():
            meta[dataset.name]["lengths"] = os.path.relpath(path.parent / LENGTHS, out_path.parent)
    if not meta:
        raise DataError(f"no training record is left in {', '.join(empty)}", file=str(run_meta),
                        fix="see rejects.jsonl beside each dataset's checked records: check the frames exist and that "
                            "max_seq_length leaves room for the visual tokens")
    write_json(out_path, meta)
    return meta


def combine_summaries(summaries: list[dict]) -> dict:
    """A run's check in all, from its datasets' summaries (the report's data summary shows it)."""
    accepted = sum(s["accepted"] for s in summaries)
    by_reason: Counter = sum((Counter(s["rejects_by_reason"]) for s in summaries), Counter())
    return {
        "records": sum(s["records"] for s in summaries), "accepted": accepted,
        "rejected": sum(s["rejected"] for s in summaries), "truncated": sum(s["truncated"] for s in summaries),
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "tokens": {"max_seq_length": max(s["tokens"]["max_seq_length"] for s in summaries),
                   "longest": max(s["tokens"]["longest"] for s in summaries),
                   "mean": round(sum(s["tokens"]["total"] for s in summaries) / accepted, 1) if accepted else None},
    }
