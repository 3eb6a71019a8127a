"""Merge a trained LoRA adapter into its base and check the merged model answers like the adapter did.

QLoRA adapters are merged onto the unquantised base (the 4-bit weights were only a training-time
approximation of it). A ``full`` run's model is re-saved the same way and checked against itself. The
merged folder holds everything ``AutoModelForImageTextToText`` and the processor need, plus
``merge_check.json`` with the logits comparison, and appears only when the check passed.
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import torch

from vidtune.atomic import atomic_dir, write_json
from vidtune.errors import ModelError
from vidtune.families import ModelFamily, family_for_folder
from vidtune.internvl_format import record_text
from vidtune.modeling import (DATASET_DEFAULTS, checkpoint_dtype, collate, job_device, load_adapter_model,
                              load_model, load_record_media, move_batch, read_run_settings)

CHECK_RECORDS = 3
log = logging.getLogger(__name__)


# Largest logit difference allowed between the trained and the merged model, relative to the largest logit:
# fp32 rounding for float32; bf16/fp16 round the merged weight W + BA to 8/11 mantissa bits.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# Safetensors copies each shard into host memory while writing it, so shards bound that extra memory.
MAX_SHARD_SIZE = "2GB"


@torch.no_grad()
def _logits(model, batches: list[dict], device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    model.eval()
    return [model(**move_batch(batch, device, dtype)).logits.float().cpu() for batch in batches]


def check_batches(family: ModelFamily, processor, records: list[dict], root: Path, max_dynamic_patch: int) \
        -> list[dict]:
    """One single-sample batch per check record (prompt and answer, as in training)."""
    batches = []
    for record in records[:CHECK_RECORDS]:
        text = record_text(record)
        sample = family.encode(processor, load_record_media(record, root, max_dynamic_patch), text.prompt,
                               text.target)
        sample.pop("labels", None)
        batches.append(collate([sample], processor.tokenizer.pad_token_id, sequence_keys=family.sequence_keys))
    return batches


def merge(base_dir: Path, trained_dir: Path, out_dir: Path, check_records: list[dict], root: Path,
          tolerance: float | None = None, original_base: Path | None = None) -> dict:
    """Write the merged model to out_dir and return the check (also in out_dir/merge_check.json).

    With ``original_base`` (the run's base as given, where the workflow converted it from another layout) the
    family finishes the folder (InternVL: the merged model in its original layout too, in original_layout/).

    The merge runs on the job's GPU when it has one, else on the CPU, always in the checkpoint's own dtype,
    so the merged folder has the base's dtype. The check passes when the largest logit difference on the
    first few records is within ``tolerance`` (default: by dtype, :data:`TOLERANCES`) times the largest
    logit magnitude (at least 1). Only one model is in memory at a time: the trained model is freed before
    the merged folder is loaded back for the check.
    """
    base_dir, trained_dir, out_dir = Path(base_dir), Path(trained_dir), Path(out_dir)
    settings = read_run_settings(trained_dir)
    family = family_for_folder(base_dir)
    processor = family.load_processor(trained_dir)
    if not check_records:
        raise ModelError("no records to check the merge on", file=str(trained_dir),
                         fix="pass a few training or test records")
    # Both models see the same inputs, so any dataset's tiling proves the merge: the fewest tiles, fastest.
    tiling = min((dataset["max_dynamic_patch"] for dataset in settings.get("datasets", {}).values()),
                 default=DATASET_DEFAULTS["max_dynamic_patch"])
    batches = check_batches(family, processor, check_records, Path(root), tiling)
    is_adapter = (trained_dir / "adapter_config.json").is_file()
    device, _ = job_device(base_dir)
    dtype = checkpoint_dtype(base_dir if is_adapter else trained_dir)
    tolerance = TOLERANCES.get(dtype, 1e-4) if tolerance is None else tolerance
    log.info("merging on %s in %s", device, str(dtype).removeprefix("torch."))
    if is_adapter:
        model = load_adapter_model(base_dir, trained_dir, dtype=dtype,
                                   device=device)
        reference = _logits(model, batches, device, dtype)
        model = model.merge_and_unload()
    else:
        model = load_model(trained_dir, dtype=dtype, device=device)
        reference = _logits(model, batches, device, dtype)
    with atomic_dir(out_dir) as temp:
        model.save_pretrained(temp, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
        del model
        gc.collect()
        if device != "cpu":
            torch.cuda.empty_cache()
        processor.save_pretrained(temp)
        for name in ("vidtune.json",):
            if (trained_dir / name).is_file():
                shutil.copy2(trained_dir / name, temp / name)
        merged_model = load_model(temp, dtype=dtype, device=device)
        merged = _logits(merged_model, batches, device, dtype)
        del merged_model
        differences = [float((a - b).abs().max()) for a, b in zip(reference, merged)]
        finite = all(torch.isfinite(logits).all() for logits in reference + merged)
        # Rounding grows with the logits' size, so the tolerance scales with it (never below 1).
        scale = max(1.0, max(float(logits.abs().max()) for logits in reference)) if finite else 1.0
        allowed = tolerance * scale
        check = {"records": [str(record.get("id")) for record in check_records[:CHECK_RECORDS]],
                 "max_abs_logit_difference": max(differences), "per_record": differences,
                 "tolerance": tolerance, "max_abs_logit": scale, "allowed_difference": allowed,
                 "finite": bool(finite), "passed": bool(finite and max(differences) <= allowed),
                 "source": "adapter" if is_adapter else "full", "method": settings.get("method"),
                 "device": device, "dtype": str(dtype).removeprefix("torch.")}
        if not check["passed"]:
            raise ModelError(f"merged model's logits differ from the trained model's by "
                             f"{check['max_abs_logit_difference']:.3g} (allowed {allowed:.3g} = tolerance "
                             f"{tolerance:g} x largest logit {scale:.3g}; finite: {finite})",
                             file=str(trained_dir), fix="re-run training; the adapter may be damaged")
        check.update(family.finish_merged_folder(temp, None if original_base is None else Path(original_base)))
        write_json(temp / "merge_check.json", check)
    return check
