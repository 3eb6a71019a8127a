"""Training settings, typed: built from ``runs.<run>.training`` of the validated configuration (defaults
from the config schema, the one place they live), and handed to training processes as a JSON file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from vidtune.atomic import write_json
from vidtune.config import schema_defaults
from vidtune.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float
    train_projector: bool
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
    runtime_min: int
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
        if settings.packing and (settings.group_by_length or settings.tokens_per_batch):
            raise ConfigError("packing makes its own micro-batches: group_by_length and tokens_per_batch don't apply",
                              fix="set packing: false, or leave group_by_length and tokens_per_batch out")
        return settings

    @classmethod
    def read(cls, path: str | Path) -> TrainingSettings:
        return cls.from_config(json.loads(Path(path).read_text(encoding="utf-8")))

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
        if self.bf16 == "auto":
            return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return self.bf16 == "true"
