"""What a job asks SLURM (or a local scheduler) for, sized from the work: memory from the model's size.

A model job's peak memory is a fixed cost (Python, torch, transformers), a multiple of the bytes of the
model's weights, and activations that grow with the vocabulary (the logits of a sample: the training loss, the
merge's logit check). The figures below were measured with ``benchmarks/job_memory.py`` on the CPU (peak
resident set of the real rule scripts, the demo's tiny model against an InternVL3-1B architecture with 2+2
layers and the published vocabulary, clips of 4 frames at 448 pixels) and are explained in docs/training.md,
"Job memory". Every request is at least :data:`FLOOR_MB`, and a retry (Snakemake's ``attempt`` 2, after an
OUT_OF_MEMORY) asks :data:`RETRY_FACTOR` times more.

The model's size is known when the workflow is parsed, before anything is built, so a preflight sees the
memory of every job: a folder's ``*.safetensors`` (or ``*.bin``) files, or the parameter count of a ``tiny``
or ``architecture`` build times its dtype's bytes, as the model's family counts it without building it
(``ModelFamily.built_size``; InternVL's is :func:`internvl_parameters`, the count transformers' own InternVL
classes have; tests/test_resources.py checks it against them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from vidtune.config import schema_defaults

MB = 2**20
FLOOR_MB = 1000  # no job asks for less: Python with torch alone takes about half of it
RETRY_FACTOR = 2


@dataclass(frozen=True)
class MemoryModel:
    """Peak memory of a job = fixed_mb + per_weight_byte x the weights' bytes + activation_mb x (the model's
    vocabulary / the published one) [+ one saved weight shard, for a job that writes the model]."""

    fixed_mb: int
    per_weight_byte: float
    activation_mb: int = 0
    writes_shards: bool = False


# Measured on the CPU (benchmarks/job_memory.py; docs/training.md, "Job memory"), rounded up: every model job
# peaked at 840-890 MB with the tiny model (fixed_mb keeps a third more); the rest is the 2+2-layer
# InternVL3-1B's extra peak (0.38 GB of bf16 weights) split into weights and activations.
MEMORY = {
    "build_model": MemoryModel(fixed_mb=1200, per_weight_byte=1.3),
    "check_training_data": MemoryModel(fixed_mb=1200, per_weight_byte=0.0),  # reads the tokenizer only
    "train": MemoryModel(fixed_mb=1200, per_weight_byte=2.0, activation_mb=2500),
    "merge": MemoryModel(fixed_mb=1200, per_weight_byte=1.0, activation_mb=2750, writes_shards=True),
    "predict": MemoryModel(fixed_mb=1200, per_weight_byte=1.5),
}
MERGE_SHARD_BYTES = 2 * 2**30  # vidtune.merge saves the merged model in shards of at most this size
# Full finetuning keeps fp32 master weights, fp32 gradients and Adam's two moments per trained parameter in
# host memory when it trains on the CPU or offloads the optimizer (DeepSpeed): 16 bytes a parameter.
OPTIMIZER_BYTES_PER_PARAMETER = 16
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# A job that streams a checkpoint one weight file at a time (convert_model) peaked at 1.8-3.2 x the largest
# file (benchmarks/convert_checkpoint.py; docs/training.md, "Converting an original-layout checkpoint").
STREAM_COPIES = 3.0
STREAM_FIXED_MB = 2000


@dataclass(frozen=True)
class ModelSize:
    weight_bytes: int
    dtype_bytes: int  # bytes per weight
    vocab_size: int


def memory_mb(kind: str, size: ModelSize, attempt: int = 1, extra_bytes: int = 0) -> int:
    """The memory request (MB) of a ``kind`` job (a key of :data:`MEMORY`) on a model of this size."""
    model = MEMORY[kind]
    weights = model.per_weight_byte * size.weight_bytes + extra_bytes
    if model.writes_shards:
        weights += min(size.weight_bytes, MERGE_SHARD_BYTES)
    need = model.fixed_mb + weights / MB + model.activation_mb * size.vocab_size / PUBLISHED_VOCABULARY
    return _request(need, attempt)


def streaming_memory_mb(largest_file_bytes: int, attempt: int = 1) -> int:
    """The memory request (MB) of a job that converts a checkpoint one weight file (shard) at a time."""
    return _request(STREAM_FIXED_MB + STREAM_COPIES * largest_file_bytes / MB, attempt)


def train_memory_mb(size: ModelSize, training: dict, attempt: int = 1) -> int:
    """The train job's request (per node): optimizer state in host memory for a full finetune on the CPU or
    with DeepSpeed's offload; LoRA and QLoRA train a few parameters whose state the fixed cost covers."""
    host_optimizer = training["method"] == "full" and (training["gpus"] == 0 or training["offload"])
    extra = OPTIMIZER_BYTES_PER_PARAMETER * size.weight_bytes // size.dtype_bytes if host_optimizer else 0
    return memory_mb("train", size, attempt, extra)


def _request(need_mb: float, attempt: int) -> int:
    return math.ceil(max(FLOOR_MB, need_mb) * RETRY_FACTOR ** (attempt - 1))


# --- The model's size -----------------------------------------------------------------------------------------

def folder_weight_bytes(folder: str | Path) -> int:
    """Bytes of a checkpoint folder's weight files (safetensors, else PyTorch .bin); 0 for none."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return sum(path.stat().st_size for path in files)


def largest_weight_file_bytes(folder: str | Path) -> int:
    """Bytes of a checkpoint folder's largest weight file: what a job streaming one shard at a time holds."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return max((path.stat().st_size for path in files), default=0)


def folder_size(folder: str | Path) -> ModelSize:
    """A checkpoint folder's weights, with config.json's dtype and vocabulary (bf16 and the published
    InternVL3 vocabulary where it names none)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    text = config.get("text_config") or config.get("llm_config") or {}
    name = config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    vocab = text.get("vocab_size") or config.get("vocab_size") or PUBLISHED_VOCABULARY
    return ModelSize(folder_weight_bytes(folder), DTYPE_BYTES.get(name, 2), int(vocab))


def model_size(spec: dict, folder: str | Path) -> ModelSize:
    """The size of a config's model entry: a folder's files, or what a `tiny` or `architecture` build makes."""
    from vidtune.families import family, family_for_architecture

    if "architecture" in spec:
        settings = {**schema_defaults("architecture"), **spec["architecture"]}
        parameters, dtype_bytes, vocab = family_for_architecture(settings["name"]).built_size("architecture", settings)
    elif "tiny" in spec:
        settings = {**schema_defaults("tiny_model"), **spec["tiny"]}
        parameters, dtype_bytes, vocab = family(settings["family"]).built_size("tiny", settings)
    else:
        return folder_size(folder)
    return ModelSize(parameters * dtype_bytes, dtype_bytes, vocab)


# The published shapes of the InternVL3-*-hf checkpoints (their config.json): the vision tower InternViT-300M
# and the Qwen2.5 language models. vidtune.tiny_model builds from the same figures (a test holds them equal).
INTERNVIT_300M = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "image_size": 448,
                  "patch_size": 14, "attention_bias": True}
PUBLISHED_TEXT = {
    "internvl3-1b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "internvl3-2b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "internvl3-8b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False},
}
PUBLISHED_VOCABULARY = 151674
TINY_VOCABULARY = 1024  # vidtune.tiny_model.VOCAB_SIZE: the tiny models' tokenizer


def architecture_dims(settings: dict) -> tuple[dict, dict]:
    """The text and vision shapes of an ``architecture`` entry (fewer layers, another vocabulary if set)."""
    text = {**PUBLISHED_TEXT[settings["name"]], "vocab_size": settings.get("vocab_size") or PUBLISHED_VOCABULARY}
    vision = dict(INTERNVIT_300M)
    if settings.get("text_layers"):
        text["num_hidden_layers"] = settings["text_layers"]
    if settings.get("vision_layers"):
        vision["num_hidden_layers"] = settings["vision_layers"]
    return text, vision


def tiny_dims(settings: dict) -> tuple[dict, dict]:
    """The text and vision shapes of a ``tiny`` entry, as vidtune.tiny_model.model_config builds them."""
    hidden, vision_hidden = settings["text_hidden_size"], settings["vision_hidden_size"]
    text = {"hidden_size": hidden, "intermediate_size": 3 * hidden, "num_hidden_layers": settings["text_layers"],
            "num_attention_heads": max(2, hidden // 32), "num_key_value_heads": 1, "tie_word_embeddings": True,
            "vocab_size": TINY_VOCABULARY}
    vision = {"hidden_size": vision_hidden, "intermediate_size": 4 * vision_hidden,
              "num_hidden_layers": settings["vision_layers"], "image_size": settings["image_size"],
              "patch_size": settings["patch_size"], "attention_bias": False}
    return text, vision


def internvl_parameters(text: dict, vision: dict) -> int:
    """Parameters of transformers' InternVLForConditionalGeneration: InternViT vision tower, pixel-shuffle
    projector (downsample ratio 0.5, so 4 x the vision width in), Qwen2 language model and head."""
    v, vi = vision["hidden_size"], vision["intermediate_size"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    vision_embeddings = v + 3 * vision["patch_size"] ** 2 * v + v + (patches + 1) * v  # cls, patch conv, positions
    attention = 3 * v * v + (3 * v if vision["attention_bias"] else 0) + v * v + v
    vision_layer = attention + (v * vi + vi + vi * v + v) + 4 * v + 2 * v  # mlp, two layer norms, two layer scales
    vision_params = vision_embeddings + vision["num_hidden_layers"] * vision_layer

    t, ti, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    head_dim = t // text["num_attention_heads"]
    kv = text["num_key_value_heads"] * head_dim
    text_layer = (t * t + t) + 2 * (t * kv + kv) + t * t + 3 * t * ti + 2 * t
    text_params = vocab * t + text["num_hidden_layers"] * text_layer + t
    head = 0 if text["tie_word_embeddings"] else vocab * t

    projector = 2 * 4 * v + (4 * v * t + t) + (t * t + t)
    return vision_params + projector + text_params + head
