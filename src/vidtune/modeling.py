"""Model, processor and the one prompt format shared by training, merging, prediction and the CLI.

Everything that turns (frames or an image, a prompt, an optional answer) into model inputs lives here, so
a model is always asked the same way it was trained: the model folder's own chat template, video frames
as ``Frame1: <image>\\nFrame2: <image>...`` with one tile each (InternVL's video expansion), images with up
to ``max_dynamic_patch`` tiles plus a thumbnail (InternVL's dynamic tiling).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from vidtune.config import model_folder_problem, schema_defaults
from vidtune.errors import MediaError, ModelError
from vidtune.families.internvl import InternVLImageOnlyProcessor
from vidtune.internvl_format import record_media_paths

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
DATASET_DEFAULTS = schema_defaults("dataset")  # the prompt and tiling of a model trained without vidtune
# Modules never quantised by QLoRA (full module paths; bitsandbytes matches short names too loosely).
QLORA_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


# --- Processor ---------------------------------------------------------------------------------------------

def load_processor(path: str | Path):
    """The stock AutoProcessor where its video processor is usable, else the image-only InternVL processor.

    Images are resized by PIL (the image processor's pil backend), as InternVL's own preprocessing does
    (torchvision's transforms on PIL images): the same tiles as the checkpoint saw in its training, not the
    slightly different pixels of a tensor resize.
    """
    from transformers import AutoImageProcessor

    path = Path(path)
    if not path.is_dir():
        raise ModelError("model folder not found", file=path, fix="check the model path in the config")
    try:
        processor = AutoProcessor.from_pretrained(path) if is_torchvision_available() \
            else InternVLImageOnlyProcessor.from_pretrained(path)
        processor.image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        return processor
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise ModelError(f"cannot load the processor: {error}", file=path,
                         fix="the folder needs the tokenizer and preprocessor files of an InternVL checkpoint") \
            from error


# --- Model -------------------------------------------------------------------------------------------------

def quantization_config(dtype: torch.dtype = torch.bfloat16):
    """QLoRA's 4-bit nf4 with double quantisation; vision tower, projector and lm_head stay unquantised."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=QLORA_SKIP_MODULES)


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
    import json

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
    """The batch on the model's device; pixel values in the model's dtype, token ids and masks as they are."""
    return {key: value.to(device, dtype=dtype if key == "pixel_values" else None)
            for key, value in batch.items()}


def load_model(path: str | Path, *, quantization: str | None = None,
               dtype: torch.dtype | str | None = None, device: str | None = None):
    """Load an InternVL (or any image-text-to-text) checkpoint from safetensors; ``quantization="nf4"`` = QLoRA.

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
        kwargs["quantization_config"] = quantization_config(compute)
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


# --- Prompt format -----------------------------------------------------------------------------------------

def build_messages(prompt: str, media_type: str, num_images: int, target: str | None = None) -> list[dict]:
    """The conversation for one sample: frames as ``Frame<i>: <image>`` lines for video, images first."""
    if media_type not in ("video", "image"):
        raise ValueError(f"media_type must be video or image, not {media_type!r}")
    content: list[dict] = []
    for index in range(num_images):
        if media_type == "video":
            content.append({"type": "text", "text": f"Frame{index + 1}: "})
        content.append({"type": "image"})
    content.append({"type": "text", "text": prompt})
    messages = [{"role": "user", "content": content}]
    if target is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages


def _images_kwargs(media_type: str, max_dynamic_patch: int) -> dict:
    if media_type == "video":
        return {"crop_to_patches": False}
    return {"crop_to_patches": max_dynamic_patch > 1, "max_patches": max_dynamic_patch}


def encode_sample(processor, images: Sequence[Image.Image], prompt: str, target: str | None = None, *,
                  media_type: str = "video",
                  max_dynamic_patch: int = DATASET_DEFAULTS["max_dynamic_patch"]) -> dict[str, torch.Tensor]:
    """Model inputs for one sample: 1-D input_ids/attention_mask (+labels with a target), pixel_values.

    Labels are -100 everywhere but the assistant's answer and the end-of-turn token that closes it.
    Without a target the text ends with the assistant header, ready for generation.
    """
    template = processor.apply_chat_template
    prompt_text = template(build_messages(prompt, media_type, len(images)), add_generation_prompt=True)
    kwargs = {"images_kwargs": _images_kwargs(media_type, max_dynamic_patch), "return_tensors": "pt"}
    prompt_inputs = processor(images=list(images), text=prompt_text, **kwargs)
    if target is None:
        return {"input_ids": prompt_inputs["input_ids"][0], "attention_mask": prompt_inputs["attention_mask"][0],
                "pixel_values": prompt_inputs["pixel_values"]}
    full_text = template(build_messages(prompt, media_type, len(images), target))
    if not full_text.startswith(prompt_text):
        raise ModelError("the chat template does not render the answer after the generation prompt",
                         fix="use a chat template whose add_generation_prompt output prefixes the full turn")
    full = processor(images=list(images), text=full_text, **kwargs)
    input_ids = full["input_ids"][0]
    num_prompt = prompt_inputs["input_ids"].shape[1]
    if not torch.equal(input_ids[:num_prompt], prompt_inputs["input_ids"][0]):
        raise ModelError("the prompt tokenises differently inside the full conversation",
                         fix="end the chat template's generation prompt with a newline or special token")
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    answer_end = len(input_ids)
    end_ids = _end_of_turn_ids(processor.tokenizer)
    for position in range(num_prompt, len(input_ids)):
        if int(input_ids[position]) in end_ids:
            answer_end = position + 1
            break
    labels[num_prompt:answer_end] = input_ids[num_prompt:answer_end]
    return {"input_ids": input_ids, "attention_mask": full["attention_mask"][0], "labels": labels,
            "pixel_values": full["pixel_values"]}


# The tokens that close an answer in the chat templates of InternVL's checkpoints (Qwen/InternLM, Phi-3,
# GPT-OSS, Llama-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|end|>", "<|return|>", "<|eot_id|>")


def _end_of_turn_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for token in END_OF_TURN_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return {i for i in ids if i is not None}


def collate(samples: Sequence[dict[str, torch.Tensor]], pad_token_id: int, padding_side: str = "right") \
        -> dict[str, torch.Tensor]:
    """Pad encoded samples into a batch (left padding for generation) and stack their tiles."""
    length = max(len(sample["input_ids"]) for sample in samples)
    fills = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch: dict[str, torch.Tensor] = {}
    for key, fill in fills.items():
        if not any(key in sample for sample in samples):
            continue
        rows = []
        for sample in samples:
            # A sample without labels (a prompt only) learns nothing.
            values = sample.get(key, torch.full_like(sample["input_ids"], fill))
            pad = torch.full((length - len(values),), fill, dtype=values.dtype)
            rows.append(torch.cat([pad, values] if padding_side == "left" else [values, pad]))
        batch[key] = torch.stack(rows)
    batch["pixel_values"] = torch.cat([sample["pixel_values"] for sample in samples])
    return batch


# --- Media of InternVL-format records ---------------------------------------------------------------------

def load_record_media(record: dict, root: str | Path) -> list[Image.Image]:
    """The record's frames (video) or its image, as RGB PIL images."""
    paths = record_media_paths(record, root)
    if not paths:
        media = record.get("video", record.get("image"))
        raise MediaError("media not found (no frames in the folder, or no image file)",
                         file=str(Path(root) / str(media)), record=str(record.get("id")),
                         fix="re-run frame extraction, or fix the dataset root")
    return load_images(paths, str(record.get("id")))


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
