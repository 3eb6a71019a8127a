"""Model loading, batching and media: the model-family-independent half of turning samples into model inputs.

What differs between families (the prompt format, the processor's inputs, token counts, module names) is
the family's (:mod:`vidtune.families`), found from the model folder's config.json; this module loads
checkpoints, pads and stacks whatever tensors a family's processor returns, and reads a record's media.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from vidtune.config import model_folder_problem, schema_defaults
from vidtune.errors import MediaError, ModelError
from vidtune.families import Media, MediaShape, ModelFamily, family_for_folder
from vidtune.families.base import IGNORE_INDEX
from vidtune.internvl_format import record_media_paths, record_text

log = logging.getLogger(__name__)

DATASET_DEFAULTS = schema_defaults("dataset")  # the prompt and tiling of a model trained without vidtune
PAD_FILLS = {"labels": IGNORE_INDEX}  # what pads a per-token key (input_ids: the pad token; others: 0)


# --- Processor ---------------------------------------------------------------------------------------------

def load_processor(path: str | Path, family: ModelFamily | None = None):
    """The processor of a model folder, by its family (default: the folder's own, from its config.json)."""
    return (family or family_for_folder(path)).load_processor(path)


# --- Model -------------------------------------------------------------------------------------------------

def quantization_config(family: ModelFamily, dtype: torch.dtype = torch.bfloat16):
    """QLoRA's 4-bit nf4 with double quantisation; the family's skipped modules (its vision tower, projector
    and lm_head) stay unquantised."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype,
                              llm_int8_skip_modules=list(family.qlora_skip_modules))


def check_model_dir(path: str | Path) -> Path:
    from vidtune.internvl_checkpoint.layout import is_original_layout

    path = Path(path)
    problem = model_folder_problem(path)
    if problem:
        raise ModelError(problem[0], file=path, fix=problem[1])
    if is_original_layout(path):
        raise ModelError("a checkpoint in InternVL's original layout is loaded after conversion", file=path,
                         fix=f"convert it once: python -m vidtune.internvl_checkpoint.convert {path} "
                             f"{path.name}-native (the workflow does this itself in convert_model)")
    return path


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's weights were saved in (config.json's dtype; float32 when it names none)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return torch.float32
    name = config.get("dtype") or config.get("torch_dtype") or \
        (config.get("text_config") or {}).get("dtype") or (config.get("text_config") or {}).get("torch_dtype")
    return getattr(torch, name, torch.float32) if isinstance(name, str) else torch.float32


def choose_device(gpus_available: int, checkpoint: torch.dtype, bf16_supported: bool) \
        -> tuple[str, torch.dtype]:
    """Where and in which dtype a model runs for inference: the job's first GPU (what CUDA_VISIBLE_DEVICES
    exposes is cuda:0) in bf16 where supported, else the CPU in the checkpoint's own dtype.

    A GPU without bf16 keeps a float16 checkpoint in float16 and runs the others in float32 (bf16 weights
    can overflow in float16).
    """
    if gpus_available <= 0:
        return "cpu", checkpoint
    if bf16_supported and checkpoint in (torch.bfloat16, torch.float32):
        return "cuda:0", torch.bfloat16
    return "cuda:0", torch.float16 if checkpoint == torch.float16 else torch.float32


def job_device(path: str | Path) -> tuple[str, torch.dtype]:
    """:func:`choose_device` for this process's GPUs and the checkpoint at path."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return choose_device(gpus, checkpoint_dtype(path), gpus > 0 and torch.cuda.is_bf16_supported())


def move_batch(batch: dict[str, torch.Tensor], device: str | torch.device, dtype: torch.dtype) \
        -> dict[str, torch.Tensor]:
    """The batch on the model's device: every floating tensor (pixel values, a video's seconds per grid) in
    the model's dtype, the others (token ids, masks, grid sizes) as they are; every key is kept."""
    return {key: value.to(device, dtype=dtype if value.is_floating_point() else None)
            if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def load_model(path: str | Path, *, quantization: str | None = None,
               dtype: torch.dtype | str | None = None, device: str | None = None):
    """Load an image-text-to-text checkpoint from safetensors; ``quantization="nf4"`` = QLoRA.

    ``device`` (``cuda:0``, ``cpu``) loads the weights straight onto it; by default they stay on the CPU.
    """
    path = check_model_dir(path)
    # No Python file of a model folder runs: original-layout InternVL folders are converted first.
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False,
                              "dtype": dtype if dtype is not None else "auto"}
    if device is not None and device != "cpu":
        kwargs["device_map"] = {"": device}  # weights go to the GPU tensor by tensor, not through host memory
    if quantization is not None:
        if quantization != "nf4":
            raise ModelError(f"unknown quantization {quantization!r}", file=path, fix="use nf4 or none")
        compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
        kwargs["quantization_config"] = quantization_config(family_for_folder(path), compute)
        kwargs["dtype"] = compute
        if torch.cuda.is_available():  # 4-bit weights are quantised on the process's own GPU
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"cannot load the model: {error}", file=path) from error
    if quantization is not None:
        _disable_avx512bf16_repack(model)
    return model


def _disable_avx512bf16_repack(model) -> None:
    # On CPUs with AVX512-BF16 an eval forward repacks 4-bit weights in place, which breaks later training steps.
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


# --- Batches ---------------------------------------------------------------------------------------------

def collate(samples: Sequence[dict[str, torch.Tensor]], pad_token_id: int, padding_side: str = "right",
            sequence_keys: Iterable[str] = ModelFamily.sequence_keys) -> dict[str, torch.Tensor]:
    """Encoded samples as one batch, keeping every key: the per-token ones (``sequence_keys``, the family's)
    padded into rows (left padding for generation), every other tensor (pixel values, grid sizes, ...) of the
    samples that have it concatenated along dim 0, in the samples' order."""
    length = max(len(sample["input_ids"]) for sample in samples)
    keys = dict.fromkeys(key for sample in samples for key in sample)
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        if key not in sequence_keys:
            batch[key] = torch.cat([sample[key] for sample in samples if key in sample])
            continue
        fill = PAD_FILLS.get(key, 0) if key != "input_ids" else pad_token_id
        rows = []
        for sample in samples:
            # A sample without labels (a prompt only) learns nothing.
            values = sample.get(key, torch.full_like(sample["input_ids"], fill))
            pad = torch.full((length - len(values),), fill, dtype=values.dtype)
            rows.append(torch.cat([pad, values] if padding_side == "left" else [values, pad]))
        batch[key] = torch.stack(rows)
    return batch


# --- Media of records ------------------------------------------------------------------------------------

def load_record_media(record: dict, root: str | Path, max_dynamic_patch: int) -> Media:
    """The record's frames (video, with their times where vidtune extracted them) or its image."""
    paths = record_media_paths(record, root)
    if not paths:
        media = record.get("video", record.get("image"))
        raise MediaError("media not found (no frames in the folder, or no image file)",
                         file=str(Path(root) / str(media)), record=str(record.get("id")),
                         fix="re-run frame extraction, or fix the dataset root")
    media_type = record_text(record).media_type
    return Media(load_images(paths, str(record.get("id"))), media_type,
                 frame_times(paths) if media_type == "video" else None, max_dynamic_patch)


def frame_times(paths: Sequence[Path]) -> tuple[float, ...] | None:
    """The frames' times in their clip (seconds), from the frames.json vidtune's extraction writes beside
    each frames/ folder; None when any frame has none (frames extracted by something else)."""
    times = []
    for path in paths:
        found = _extracted_times(Path(path).parent).get(Path(path).name)
        if found is None:
            return None
        times.append(found)
    return tuple(times)


@functools.lru_cache(maxsize=4096)
def _extracted_times(frames_folder: Path) -> dict[str, float]:
    try:
        record = json.loads((frames_folder.parent / "frames.json").read_text(encoding="utf-8"))
        return {name: float(time) for name, time in zip(record["frames"], record["timestamps"], strict=True)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def media_shape(paths: Sequence[Path], record: dict, media_type: str, max_dynamic_patch: int) -> MediaShape:
    """What a token count needs of a record's media, without decoding it: each image's size (the record's
    width/height where it has them, else the file header), a video's frames all the size of its first, and
    the frames' times."""
    if "width" in record and "height" in record:
        first = (int(record["width"]), int(record["height"]))
    else:
        first = _image_size(paths[0])
    if media_type == "video":
        sizes = [first] * len(paths)
    else:
        sizes = [first] + [_image_size(path) for path in paths[1:]]
    return MediaShape(tuple(sizes), media_type, frame_times(paths) if media_type == "video" else None,
                      max_dynamic_patch)


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.size


def load_images(paths: Sequence[Path], record_id: str | None = None) -> list[Image.Image]:
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError as error:
            raise MediaError(f"cannot decode: {error}", file=str(path), record=record_id) from error
    return images


# --- Trained models ----------------------------------------------------------------------------------------

def load_adapter_model(base_dir: str | Path, adapter_dir: str | Path, *, dtype: torch.dtype | None = None, device: str | None = None):
    """The unquantised base with a trained LoRA adapter on it; fails when the adapter doesn't fit the base.

    The base loads in ``dtype`` (default: its checkpoint's, so an 8B bf16 base takes 16 GB, not 32) on
    ``device`` (default: the CPU).
    """
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import SafetensorError, safe_open

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not (adapter_dir / "adapter_config.json").is_file() or not weights.is_file():
        raise ModelError("not a LoRA adapter folder (adapter_config.json + adapter_model.safetensors)",
                         file=adapter_dir, fix="point at the training step's final/ folder")
    base = load_model(base_dir, dtype=dtype if dtype is not None else checkpoint_dtype(base_dir), device=device)
    try:
        with safe_open(weights, "pt") as handle:
            saved = set(handle.keys())
        model = PeftModel.from_pretrained(base, adapter_dir)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelError(f"cannot load the adapter: {error}", file=weights,
                         fix="re-run training; the adapter file is damaged or from another base") from error
    expected = {key.replace(".default", "") for key in get_peft_model_state_dict(model)}
    if saved != expected:
        missing, unexpected = sorted(expected - saved), sorted(saved - expected)
        raise ModelError(f"adapter weights don't match the base model ({len(missing)} missing, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})", file=weights,
                         fix="merge with the base model the adapter was trained on")
    for name, tensor in model.named_parameters():
        if "lora_" in name and not torch.isfinite(tensor).all():
            raise ModelError(f"adapter weight {name} has NaN or infinite values", file=weights,
                             fix="re-run training with a lower learning rate")
    return model


def read_run_settings(*folders: str | Path | None) -> dict:
    """What training stored beside the model (vidtune.json: method, base model, and under ``datasets`` each
    training dataset's prompt, frame and tiling settings) in the first folder that has it; {} for a plain
    base model."""
    from vidtune.atomic import read_json

    for folder in folders:
        if folder is not None and (Path(folder) / "vidtune.json").is_file():
            return read_json(Path(folder) / "vidtune.json")
    return {}
