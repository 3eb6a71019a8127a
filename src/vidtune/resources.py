"""What a job asks SLURM (or a local scheduler) for, sized from the work: memory from the model's size, and the
train job's time limit from its steps (:func:`train_runtime_min`; docs/training.md, "Job time limits").

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
from vidtune.training.settings import TrainingSettings

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
# peaked at 840-890 MB with the tiny model (fixed_mb keeps a third more; 1,100 MB since the setup installs the
# package index's default torch build, whose CUDA libraries are mapped even on a CPU); the rest is the 2+2-layer
# InternVL3-1B's extra peak (0.38 GB of bf16 weights) split into weights and activations.
MEMORY = {
    "build_model": MemoryModel(fixed_mb=1500, per_weight_byte=1.3),
    "check_training_data": MemoryModel(fixed_mb=1500, per_weight_byte=0.0),  # reads the tokenizer only
    "train": MemoryModel(fixed_mb=1500, per_weight_byte=2.0, activation_mb=2500),
    "merge": MemoryModel(fixed_mb=1500, per_weight_byte=1.0, activation_mb=2750, writes_shards=True),
    "predict": MemoryModel(fixed_mb=1500, per_weight_byte=1.5),
}
# A data-loading process (a fork of the training process: Python, torch and its batches in flight): an upper
# bound, not measured; the small SLURM test cluster's cgroup killed the demo's train job with one worker at
# the fixed cost alone.
DATA_WORKER_MB = 1000
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


def train_memory_mb(size: ModelSize, training: dict, attempt: int = 1, threads: int = 1) -> int:
    """The train job's request (per node): optimizer state in host memory for a full finetune on the CPU or
    with DeepSpeed's offload (LoRA and QLoRA train a few parameters whose state the fixed cost covers), and
    the data-loading processes of its training processes (``threads``: the job's)."""
    from vidtune.training.loading import data_workers

    host_optimizer = training["method"] == "full" and (training["gpus"] == 0 or training["offload"])
    extra = OPTIMIZER_BYTES_PER_PARAMETER * size.weight_bytes // size.dtype_bytes if host_optimizer else 0
    processes = max(1, training["gpus"])
    workers = processes * data_workers(training.get("data_workers", "auto"), threads, processes)
    return memory_mb("train", size, attempt, extra + workers * DATA_WORKER_MB * MB)


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


# --- Time limits ----------------------------------------------------------------------------------------------
# A train job's time = start-up + its optimizer steps x the time of one step, where a step costs a fixed
# overhead (data loading, the optimizer, logging) plus its tokens x the model's parameters x the time per token
# and parameter of the device, shared by the training processes (docs/training.md, "Job time limits").
#   CPU: 1.5e-10 s per token and parameter, LoRA, measured on the shared 2-core machine: the 2-layer
#   InternVL3-1B of tests/test_real_shape.py (52.2M parameters, 2,100-token samples) takes up to 16 s a step,
#   and benchmarks/train_throughput.py's 4-layer one (226.9M parameters) trained 29.8 computed tokens/s.
#   GPU: an estimate, not a measurement (no GPU was lent): 4 FLOPs per token and parameter for LoRA at an
#   effective 80 TFLOP/s (a quarter of an A100's bf16 peak, a twelfth of an H100's).
SECONDS_PER_TOKEN_PARAMETER = {"cpu": 1.5e-10, "gpu": 4 / 80e12}
# A step's fixed part (data loading, the optimizer, logging). CPU: measured, the demo's tiny model (0.34M
# parameters: its tokens cost 0.03 s a step by the figure above) trained 900 steps in 921 s on the shared
# machine under load (its train_summary.json: steps, train_seconds; about 0.2 s a step when less loaded).
# GPU: an estimate (the frames are decoded by the data-loading workers while the GPU computes).
STEP_OVERHEAD_S = {"cpu": 1.0, "gpu": 0.25}
# Start-up and the end: Python and torch, the data, the model read at STARTUP_READ_BYTES_PER_S from a shared
# file system, the final save.
STARTUP_S = 120
STARTUP_READ_BYTES_PER_S = 200 * 10**6
# Relative cost of a method's step against LoRA's (FLOPs per token and parameter: LoRA 4, forward and the
# gradient of the activations; full 6, the weights' gradients too); QLoRA dequantises every weight in every
# matmul (an estimate: twice LoRA); gradient checkpointing recomputes the forward pass (2 more of LoRA's 4).
METHOD_FACTOR = {"lora": 1.0, "qlora": 2.0, "full": 1.5}
GRADIENT_CHECKPOINTING_FACTOR = 1.5
RUNTIME_MARGIN = 2.0  # the CPU measurements spread 2.5x with the machine's load; padding is not counted
RUNTIME_FLOOR_MIN = 10  # no model job asks for less
# Before the run's training data exists (only a preflight sees this: Snakemake evaluates a job's resources
# again when its inputs are there, before it is submitted): the fixed limit vidtune had before.
UNKNOWN_DATA_RUNTIME_MIN = 720


@dataclass(frozen=True)
class TrainingData:
    """What a run trains on, as far as the files that exist when the workflow is parsed tell."""

    samples: int | None  # None: no file of the run's training data exists yet
    tokens: int | None  # every sample's tokens together; None: unknown (max_seq_length a sample is assumed)


def training_data(lengths_files: list[str | Path], records_files: list[str | Path]) -> TrainingData:
    """The run's training data: every dataset's lengths.json (check_training_data: the accepted records'
    tokens), else every dataset's train.jsonl of the split (internvl_files: records, tokens unknown), else
    nothing known. ``lengths_files`` and ``records_files``: one per dataset of the run."""
    if lengths_files and all(Path(path).is_file() for path in lengths_files):
        lengths = [length for path in lengths_files
                   for length in json.loads(Path(path).read_text(encoding="utf-8"))]
        return TrainingData(len(lengths), sum(lengths))
    if records_files and all(Path(path).is_file() for path in records_files):
        with_text = (line for path in records_files for line in Path(path).read_text(encoding="utf-8").splitlines())
        return TrainingData(sum(1 for line in with_text if line.strip()), None)
    return TrainingData(None, None)


def train_step_seconds(size: ModelSize, tokens_per_step: float, processes: int, gpu: bool,
                       training: dict) -> float:
    """Seconds of one optimizer step of ``tokens_per_step`` tokens (all processes together)."""
    device = "gpu" if gpu else "cpu"
    cost = SECONDS_PER_TOKEN_PARAMETER[device] * METHOD_FACTOR[training["method"]]
    if training.get("gradient_checkpointing"):
        cost *= GRADIENT_CHECKPOINTING_FACTOR
    parameters = size.weight_bytes / size.dtype_bytes
    return STEP_OVERHEAD_S[device] + tokens_per_step / processes * parameters * cost


def train_runtime_needed_min(size: ModelSize, training: dict, data: TrainingData) -> int:
    """Minutes a train job needs by its steps (with :data:`RUNTIME_MARGIN` and the floor, before a retry or a
    cap). ``training``: the run's validated training section."""
    settings = TrainingSettings.from_config(training)
    if data.samples is None and settings.max_steps <= 0:
        return UNKNOWN_DATA_RUNTIME_MIN
    processes = settings.nodes * settings.processes_per_node
    samples = data.samples if data.samples is not None else settings.batch_size * processes
    tokens = data.tokens if data.tokens is not None else samples * settings.max_seq_length
    mean_tokens = tokens / max(1, samples)
    if settings.packing or settings.tokens_per_batch:  # micro-batches of about this many tokens each
        budget = settings.packing_max_tokens if settings.packing else settings.tokens_per_batch
        samples_per_micro_batch = max(1.0, budget / mean_tokens)
    else:
        samples_per_micro_batch = settings.batch_size
    micro_batches = math.ceil(samples / samples_per_micro_batch)
    steps = settings.total_steps(micro_batches, batch_size=1)
    if settings.max_steps > 0:
        step_samples = samples_per_micro_batch * settings.gradient_accumulation_steps * processes
    else:  # an epoch's steps share its samples
        step_samples = settings.epochs * samples / steps
    step = train_step_seconds(size, step_samples * mean_tokens, processes, settings.gpus > 0, training)
    seconds = STARTUP_S + size.weight_bytes / STARTUP_READ_BYTES_PER_S + steps * step
    return math.ceil(max(RUNTIME_FLOOR_MIN, RUNTIME_MARGIN * seconds / 60))


def train_runtime_min(size: ModelSize, training: dict, data: TrainingData, attempt: int = 1,
                      limit_min: int | None = None) -> int:
    """The train job's time limit (minutes): ``training.runtime_min`` where it is a number, else what its
    steps need; :data:`RETRY_FACTOR` times more on a retry; never above ``limit_min`` (the partition's, from
    the profile's site block): a training stopped there resumes from its last checkpoint."""
    given = training.get("runtime_min", "auto")
    minutes = given if isinstance(given, int) else train_runtime_needed_min(size, training, data)
    minutes *= RETRY_FACTOR ** (attempt - 1)
    return min(minutes, limit_min) if limit_min else minutes
