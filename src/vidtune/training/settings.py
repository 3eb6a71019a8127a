"""Training settings, typed: built from ``runs.<run>.training`` of the validated configuration (defaults
from the config schema, the one place they live), and handed to training processes as a JSON file.

``trainer_args`` passes any further :class:`transformers.TrainingArguments` key; :func:`check_trainer_args`
checks it against the installed transformers when the workflow is parsed: the key must be a field, the
value of the field's type, and not a key vidtune sets itself. Keys that only log or report reach nothing
stored (:data:`LOG_ONLY_ARGS`); every other key changes the weights and reaches training.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any

from vidtune.atomic import read_json, write_json
from vidtune.config import schema_defaults
from vidtune.errors import ConfigError

# Optimizers of bitsandbytes (8-bit state, paged memory): they run on CUDA only.
CUDA_ONLY_OPTIMIZERS = {"adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"}
# TrainingArguments keys that log or report and change nothing vidtune stores: they reach no step.
LOG_ONLY_ARGS = {"report_to", "run_name", "disable_tqdm", "log_level", "log_level_replica", "log_on_each_node",
                 "logging_nan_inf_filter", "project", "trackio_space_id", "trackio_bucket_id", "skip_memory_metrics"}
# Keys vidtune sets from its own settings or owns (where checkpoints go, resuming, data loading, devices):
# trainer_args may not set them; most have a setting of their own under runs.<run>.training.
OWNED_ARGS = {
    "output_dir", "overwrite_output_dir", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "learning_rate", "weight_decay", "warmup_steps", "warmup_ratio",
    "lr_scheduler_type", "optim", "seed", "data_seed", "bf16", "fp16", "activation_checkpointing",
    "activation_checkpointing_kwargs", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    "logging_steps", "logging_strategy", "logging_dir", "include_num_input_tokens_seen", "remove_unused_columns",
    "deepspeed", "fsdp", "fsdp_config", "use_cpu", "resume_from_checkpoint", "local_rank", "do_train", "do_eval",
    "do_predict", "push_to_hub",
}
OWNED_PREFIXES = ("save_", "dataloader_", "eval_", "per_device_eval", "hub_")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float
    train_projector: bool | None  # None: as freeze_projector says; false: the same as freeze_projector: true
    vision: bool


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """``runs.<run>.training``; the config schema documents each field."""

    method: str
    lora: LoraSettings
    freeze_vision: bool
    freeze_projector: bool
    freeze_language: bool
    epochs: float
    max_steps: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    lr_scheduler_type: str
    optim: str
    batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    bf16: str
    max_seq_length: int
    over_length: str
    seed: int
    save_steps: int
    save_total_limit: int
    logging_steps: int
    gpus: int
    nodes: int
    deepspeed: str
    offload: bool
    runtime_min: int | str
    trainer_args: dict
    # Batching, packing and data loading (vidtune.training.batching, .packing, .loading).
    group_by_length: bool
    tokens_per_batch: int
    packing: bool
    packing_max_tokens: int
    data_workers: int | str
    attention: str

    @classmethod
    def from_config(cls, training: dict) -> TrainingSettings:
        """From a training section (validated, or partial: missing keys take the schema's defaults)."""
        values = {**schema_defaults("training"), **training}
        unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}", fix="see runs.<run>.training in the schema")
        lora = {**schema_defaults("lora"), **values.get("lora", {})}
        try:
            settings = cls(**{**values, "lora": LoraSettings(**lora)})
        except TypeError as error:
            raise ConfigError(f"training settings: {error}", fix="see runs.<run>.training in the schema") from None
        check_trainable_parts(values, "training")
        if settings.packing and (settings.group_by_length or settings.tokens_per_batch):
            raise ConfigError("packing makes its own micro-batches: group_by_length and tokens_per_batch don't apply",
                              fix="set packing: false, or leave group_by_length and tokens_per_batch out")
        return settings

    @classmethod
    def read(cls, path: str | Path) -> TrainingSettings:
        return cls.from_config(read_json(path))

    def write(self, path: str | Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @property
    def processes_per_node(self) -> int:
        return max(1, self.gpus)

    @property
    def batching(self) -> str:
        """How micro-batches are made: ``fixed`` (batch_size samples, the Trainer's sampler), ``group_by_length``,
        ``tokens_per_batch`` or ``packing``."""
        if self.packing:
            return "packing"
        if self.tokens_per_batch:
            return "tokens_per_batch"
        return "group_by_length" if self.group_by_length else "fixed"

    @property
    def uses_bf16(self) -> bool:
        """bf16 where asked, or (auto) where the GPU supports it."""
        import torch

        if self.bf16 == "auto":
            return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return self.bf16 == "true"

    def total_steps(self, num_items: int, batch_size: int | None = None) -> int:
        """Optimizer steps of the whole training, counted as the Trainer counts them: ``max_steps``, or the
        epochs over each process's share of the batches (the accelerate data loader deals whole batches).
        ``num_items`` dataset items of ``batch_size`` each: samples (batch_size samples a batch), or planned
        micro-batches (batch_size 1)."""
        if self.max_steps > 0:
            return self.max_steps
        processes = self.nodes * self.processes_per_node
        batches = math.ceil(math.ceil(num_items / (batch_size or self.batch_size)) / processes)
        per_epoch = max(1, math.ceil(batches / self.gradient_accumulation_steps))
        return math.ceil(self.epochs * per_epoch)

    def warmup_steps(self, num_items: int, batch_size: int | None = None) -> int:
        """``warmup_ratio`` of the total steps as a whole number of steps (1.0: every step warms up).
        transformers reads a float >= 1 as a step count and one below 1 as a ratio, so vidtune passes steps."""
        return math.ceil(self.warmup_ratio * self.total_steps(num_items, batch_size))


# --- trainer_args ------------------------------------------------------------------------------------------

@functools.cache
def _training_argument_types() -> dict[str, Any]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {field.name: hints.get(field.name, Any) for field in dataclasses.fields(TrainingArguments)
            if field.init}


def _matches(value, hint) -> bool:
    """Whether ``value`` (as YAML gives it) is of the type ``hint`` (a TrainingArguments field's annotation)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        enums = [arg for arg in args if isinstance(arg, type) and issubclass(arg, enum.Enum)]
        if isinstance(value, str) and enums:  # "OptimizerNames | str": one of the enum's names
            return any(value in {member.value for member in kind} for kind in enums)
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple):
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value) if args else \
            isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {member.value for member in hint}
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def owned_arg(key: str) -> bool:
    """Whether vidtune sets (or owns) this TrainingArguments key itself."""
    return key in OWNED_ARGS or key.startswith(OWNED_PREFIXES)


def trainer_arg_reaches(key: str) -> bool:
    """Whether a trainer_args key reaches training (changes the weights): every key but those in
    :data:`LOG_ONLY_ARGS`. The config schema names this function for ``trainer_args`` (``x-reaches-by-key``)."""
    return key not in LOG_ONLY_ARGS


def check_trainer_args(args: dict, where: str, config_file: str = "config") -> None:
    """:class:`ConfigError` naming the first key of ``args`` that the installed transformers'
    TrainingArguments lacks, whose value is not of the field's type, or that vidtune sets itself."""
    import transformers

    fields = _training_argument_types()
    for key in sorted(args):
        value = args[key]
        if owned_arg(key):
            raise ConfigError(f"{where}.{key}: vidtune sets this TrainingArguments key itself", file=config_file,
                              fix="use the runs.<run>.training setting of that name where there is one "
                                  "(see the config schema), or leave it out")
        if key not in fields:
            raise ConfigError(f"{where}.{key}: not a TrainingArguments key of transformers "
                              f"{transformers.__version__}", file=config_file,
                              fix="check the spelling against the TrainingArguments documentation")
        if not _matches(value, fields[key]):
            raise ConfigError(f"{where}.{key}: {value!r} is not of the key's type {_type_name(fields[key])}",
                              file=config_file, fix="give a value of that type")


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_training(training: dict, where: str, config_file: str = "config") -> None:
    """The checks of a run's training section that need transformers or the job's GPUs: trainer_args, and
    a bitsandbytes optimizer on a job without GPUs."""
    if training.get("optim") in CUDA_ONLY_OPTIMIZERS and training.get("gpus", 0) == 0:
        raise ConfigError(f"{where}.optim: {training['optim']} runs on CUDA only, and this run trains on the "
                          f"CPU (gpus: 0)", file=config_file,
                          fix="set training.gpus to 1 or more, or use optim adamw_torch or adamw_torch_fused")
    if training.get("trainer_args"):
        check_trainer_args(training["trainer_args"], f"{where}.trainer_args", config_file)
    check_trainable_parts(training, where, config_file)


def check_trainable_parts(training: dict, where: str, config_file: str | None = None) -> None:
    """Reject freeze switches and LoRA settings that contradict each other (vidtune.training.model tells the
    story): adapters on a frozen vision tower, an unfrozen vision tower LoRA cannot train, a projector both
    trained and frozen, a LoRA run with no adapter anywhere, a full run with every part frozen."""
    values = {**schema_defaults("training"), **training}
    lora = {**schema_defaults("lora"), **(values.get("lora") or {})}
    method = values["method"]
    if method == "full":
        if values["freeze_vision"] and values["freeze_projector"] and values["freeze_language"]:
            raise ConfigError(f"{where}: method full with freeze_vision, freeze_projector and freeze_language all "
                              f"true trains nothing", file=config_file, fix="unfreeze at least one part")
        return
    if lora["vision"] and values["freeze_vision"]:
        raise ConfigError(f"{where}: lora.vision: true puts adapters on the vision tower, but freeze_vision is true "
                          f"(its default) and keeps it frozen", file=config_file,
                          fix="set freeze_vision: false to train the vision tower through LoRA, or lora.vision: false")
    if not lora["vision"] and not values["freeze_vision"]:
        raise ConfigError(f"{where}: freeze_vision: false under method {method}, but LoRA trains the vision tower "
                          f"only through adapters and lora.vision is false", file=config_file,
                          fix="set lora.vision: true as well, or leave freeze_vision at true")
    if lora["train_projector"] is True and values["freeze_projector"]:
        raise ConfigError(f"{where}: lora.train_projector: true and freeze_projector: true contradict each other",
                          file=config_file, fix="leave lora.train_projector out: freeze_projector decides")
    if values["freeze_language"] and not lora["vision"]:
        raise ConfigError(f"{where}: method {method} with freeze_language: true and lora.vision: false puts no "
                          f"adapter anywhere", file=config_file,
                          fix="unfreeze the language model, or use method full to train only the projector")
