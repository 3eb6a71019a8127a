"""Finetune an InternVL checkpoint on InternVL-format data (meta.json + JSONL): LoRA, QLoRA or full.

Sections, top to bottom: settings, data (read, check, encode), model (method), DeepSpeed and launching,
checkpoints and signals, training, checks and outputs. The Trainer, peft, bitsandbytes and DeepSpeed do the
work; this module decides how they are set up and checks what comes out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.integrations import TensorBoardCallback

from vidtune.atomic import atomic_dir, dumps_json, write_json
from vidtune.config import schema_defaults
from vidtune.errors import ConfigError, DataError, ModelError, command_line
from vidtune.modeling import (build_messages, collate, encode_sample, load_images, load_model, load_processor,
                              record_media_paths, record_text)

# --- Settings ----------------------------------------------------------------------------------------------

LORA_DEFAULTS = schema_defaults("lora")
TRAINING_DEFAULTS = schema_defaults("training")
DEFAULT_PROMPT = schema_defaults("dataset")["prompt"]
# Linear layers LoRA targets in the language model: Qwen2/Llama-style and InternLM2-style names.
LANGUAGE_LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                         "wqkv", "wo", "w1", "w2", "w3"}
# Submodule names in transformers' InternVL and in InternVL's own (remote-code) checkpoints.
PART_NAMES = {"vision": ("vision_tower", "vision_model"), "projector": ("multi_modal_projector", "mlp1"),
              "language": ("language_model",)}
COMPLETE_MARKER = "vidtune_checkpoint_complete"
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
# torchrun's own signals plus SLURM's warning; and how long its processes get to save before SIGKILL.
TORCHRUN_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")
SHUTDOWN_SECONDS = 300


def training_settings(training: dict) -> dict:
    settings = {**TRAINING_DEFAULTS, **training}
    settings["lora"] = {**LORA_DEFAULTS, **training.get("lora", {})}
    return settings


def use_bf16(setting: str) -> bool:
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return setting == "true"


# --- Data --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainItem:
    """One checked sample: which media files to load and the text around them."""

    id: str
    media_type: str
    paths: tuple[Path, ...]
    prompt: str
    target: str
    max_dynamic_patch: int
    length: int


def read_meta(meta_path: Path) -> dict[str, dict]:
    try:
        meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read meta.json: {error}", file=str(meta_path)) from error
    if not isinstance(meta, dict) or not meta:
        raise DataError("meta.json must map dataset names to entries", file=str(meta_path))
    return meta


def _resolve(path: str, base: Path) -> Path:
    """A meta.json path: relative ones are relative to meta.json's folder, wherever the trainer runs."""
    return base / path


def read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"not valid JSON: {error}", file=str(path), record=f"line {number}") from error
    return records


def repeat_records(records: list[dict], repeat_time: float, seed: int) -> list[dict]:
    """InternVL's repeat_time: whole copies, plus a seeded share of the records for the fraction."""
    whole, fraction = int(repeat_time), repeat_time - int(repeat_time)
    extra = random.Random(seed).sample(records, round(fraction * len(records))) if fraction else []
    return records * whole + extra


def sample_length(processor, item_text, num_tiles: list[int], media_type: str) -> int:
    """Tokenised length with visual tokens: the rendered text plus tiles x tokens per tile (+ <img></img>)."""
    text = processor.apply_chat_template(
        build_messages(item_text.prompt, media_type, len(num_tiles), item_text.target))
    text_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return text_tokens - len(num_tiles) + sum(tiles * processor.image_seq_length + 2 for tiles in num_tiles)


def _image_tiles(processor, path: Path, record: dict, max_dynamic_patch: int) -> int:
    from PIL import Image

    if "width" in record and "height" in record:
        width, height = int(record["width"]), int(record["height"])
    else:
        with Image.open(path) as image:
            width, height = image.size
    kwargs = {"crop_to_patches": max_dynamic_patch > 1, "max_patches": max_dynamic_patch}
    return processor.image_processor.get_number_of_image_patches(height, width, kwargs)


def _uniform_subset(paths: list[Path], count: int) -> list[Path]:
    step = len(paths) / count
    return [paths[int(step * index + step / 2)] for index in range(count)]


def check_sample(processor, record: dict, root: Path, max_dynamic_patch: int, settings: dict,
                 file: str) -> tuple[TrainItem | None, str | None]:
    """A trainable item, or None and the reason it was left out. Over-long videos may lose frames."""
    text = record_text(record, file)
    record_id = str(record.get("id"))
    if text.target is None:
        return None, "no gpt turn"
    if text.placeholders != text.media_count:
        return None, f"{text.placeholders} media placeholders in the human turn (expected {text.media_count})"
    paths = record_media_paths(record, root)
    if not paths:
        return None, "media not found"
    if text.media_type == "video":
        tiles = [1] * len(paths)
    else:
        tiles = [_image_tiles(processor, paths[0], record, max_dynamic_patch)]
    length = sample_length(processor, text, tiles, text.media_type)
    limit = settings["max_seq_length"]
    reason = None
    if length > limit:
        if settings["over_length"] == "truncate_frames" and text.media_type == "video":
            for count in range(len(paths) - 1, 0, -1):
                length = sample_length(processor, text, [1] * count, text.media_type)
                if length <= limit:
                    reason = f"truncated from {len(paths)} to {count} frames"
                    paths = _uniform_subset(paths, count)
                    break
        if length > limit:
            return None, f"over max_seq_length ({length} > {limit} tokens)"
    item = TrainItem(record_id, text.media_type, tuple(paths), text.prompt, text.target, max_dynamic_patch,
                     length)
    return item, reason


def load_training_items(meta_path: Path, processor, settings: dict, log: logging.Logger) \
        -> tuple[list[TrainItem], list[dict], list[dict], dict]:
    """Checked items of every dataset in meta.json, what was dropped or truncated, and the data settings."""
    meta_path = Path(meta_path)
    items, dropped, truncated = [], [], []
    data_settings: dict | None = None
    for name, entry in read_meta(meta_path).items():
        annotation = _resolve(entry["annotation"], meta_path.parent)
        root = _resolve(entry.get("root", "."), meta_path.parent)
        max_dynamic_patch = int(entry.get("max_dynamic_patch", schema_defaults("dataset")["max_dynamic_patch"]))
        records = repeat_records(read_jsonl(annotation), float(entry.get("repeat_time", 1)), settings["seed"])
        entry_settings = {"prompt": DEFAULT_PROMPT, "frames": {}, **entry.get("data_settings", {}),
                          "max_dynamic_patch": max_dynamic_patch}
        if data_settings is None:
            data_settings = entry_settings
        elif entry_settings != data_settings:
            log.warning("dataset %s has other prompt/frame settings than the first; the model keeps the first's",
                        name)
        for record in records:
            item, reason = check_sample(processor, record, root, max_dynamic_patch, settings, str(annotation))
            if item is None:
                dropped.append({"dataset": name, "id": str(record.get("id")), "reason": reason})
            else:
                items.append(item)
                if reason:
                    truncated.append({"dataset": name, "id": item.id, "reason": reason})
    for entry in dropped:
        log.warning("left out %s/%s: %s", entry["dataset"], entry["id"], entry["reason"])
    for entry in truncated:
        log.warning("%s/%s: %s to fit max_seq_length", entry["dataset"], entry["id"], entry["reason"])
    if not items:
        raise DataError("no usable training sample", file=str(meta_path),
                        fix="check the frames exist and max_seq_length leaves room for the visual tokens")
    log.info("%d training samples, %d left out, %d truncated", len(items), len(dropped), len(truncated))
    return items, dropped, truncated, data_settings or {"prompt": DEFAULT_PROMPT, "frames": {}}


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[TrainItem], processor):
        self.items, self.processor = items, processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        images = load_images(item.paths, item.id)
        return encode_sample(self.processor, images, item.prompt, item.target, media_type=item.media_type,
                             max_dynamic_patch=item.max_dynamic_patch)


class CountingCollator:
    """Pads a batch (right padding) and counts the real tokens seen, for tokens/s."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id, self.tokens = pad_token_id, 0

    def __call__(self, samples: list[dict]) -> dict:
        batch = collate(samples, self.pad_token_id, padding_side="right")
        self.tokens += int(batch["attention_mask"].sum())
        return batch


# --- Model and method --------------------------------------------------------------------------------------

def find_part(model: nn.Module, part: str) -> tuple[str, nn.Module] | None:
    """The (shortest-named) submodule for vision/projector/language, under any wrapper prefix."""
    matches = [(name, module) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in PART_NAMES[part]]
    return min(matches, key=lambda match: len(match[0])) if matches else None


def lora_target_modules(model: nn.Module, vision: bool = False) -> list[str]:
    """Full names of the language model's attention/MLP linears (plus the vision tower's linears if asked)."""
    language = find_part(model, "language")
    if language is None:
        raise ModelError("cannot find the language model to put LoRA on",
                         fix="use an InternVL checkpoint (transformers' or InternVL's own layout)")
    prefix = language[0] + "."
    targets = [name for name, module in model.named_modules()
               if name.startswith(prefix) and isinstance(module, nn.Linear)
               and name.rsplit(".", 1)[-1] in LANGUAGE_LORA_TARGETS]
    if vision and (tower := find_part(model, "vision")) is not None:
        targets += [name for name, module in model.named_modules()
                    if name.startswith(tower[0] + ".") and isinstance(module, nn.Linear)]
    if not targets:
        raise ModelError("no q/k/v/o/gate/up/down (or wqkv/wo/w1/w2/w3) linears in the language model",
                         fix="use method full for this architecture")
    return targets


def prepare_model(model_dir: Path, settings: dict, trust_remote_code: bool, log: logging.Logger):
    """Load the base model and make exactly the chosen parts trainable."""
    method = settings["method"]
    bf16 = use_bf16(settings["bf16"])
    if method == "qlora":
        model = load_model(model_dir, trust_remote_code=trust_remote_code, quantization="nf4",
                           dtype=torch.bfloat16)
    else:
        # LoRA keeps the frozen base in bf16 where training runs in bf16 (adapters stay fp32, peft's default).
        base_dtype = torch.bfloat16 if bf16 and method == "lora" else torch.float32
        model = load_model(model_dir, trust_remote_code=trust_remote_code, dtype=base_dtype)
    model.config.use_cache = False
    if method == "full":
        frozen = {"vision": settings["freeze_vision"], "projector": settings["freeze_projector"],
                  "language": settings["freeze_language"]}
        for part, freeze in frozen.items():
            found = find_part(model, part)
            if found is not None:
                found[1].requires_grad_(not freeze)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            head.requires_grad_(not settings["freeze_language"])
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = settings["lora"]
    projector = find_part(model, "projector")
    modules_to_save = [projector[0].rsplit(".", 1)[-1]] if lora["train_projector"] and projector else None
    config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora_target_modules(model, lora["vision"]), modules_to_save=modules_to_save)
    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("%s: %d trainable of %d parameters (%d LoRA targets%s)", method, trainable, total,
             len(config.target_modules), ", projector trained" if modules_to_save else "")
    return model


# --- DeepSpeed and launching -------------------------------------------------------------------------------

def deepspeed_config(training: dict, world_size: int | None = None) -> dict:
    """A ZeRO-2/3 config whose batch sizes match the Trainer's (micro x accumulation x processes).

    ``world_size`` is the number of training processes over all nodes; by default one per configured GPU
    (at least one) on each of the configured nodes.
    """
    settings = training_settings(training)
    stage = {"zero2": 2, "zero3": 3}.get(settings["deepspeed"])
    if stage is None:
        raise ValueError(f"deepspeed must be zero2 or zero3, not {settings['deepspeed']!r}")
    processes = world_size if world_size is not None else max(1, settings["gpus"]) * settings["nodes"]
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    if settings["offload"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": settings["batch_size"],
        "gradient_accumulation_steps": settings["gradient_accumulation_steps"],
        "train_batch_size": settings["batch_size"] * settings["gradient_accumulation_steps"] * processes,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": use_bf16(settings["bf16"]) if settings["bf16"] != "auto" else "auto"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def launch_command(target: str | Path, args: list[str], gpus: int, nodes: int = 1,
                   rendezvous: str | None = None, cpus_per_node: int = 1) -> list[str]:
    """How to start a script (a ``.py`` path) or a module (``vidtune.train``): one plain process, torchrun
    with one process per GPU on this node, or (``nodes`` > 1, inside a SLURM allocation of that many nodes)
    ``srun`` starting one torchrun per node, all meeting at ``rendezvous`` (``host:port`` on this, the first,
    node). torchrun passes SLURM's stop signals on to every process and gives them time to checkpoint before
    it kills them; srun passes them on to every node's torchrun and ends the step when one node fails."""
    entry = [str(target)] if Path(target).suffix == ".py" else ["-m", str(target)]
    if gpus <= 1 and nodes <= 1:
        return [sys.executable, *entry, *args]
    if nodes <= 1:
        placement, srun = ["--standalone"], []
    elif rendezvous is None:
        raise ValueError("several nodes need a rendezvous endpoint (host:port on the first node)")
    else:
        placement = [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rendezvous}",
                     f"--rdzv_id={os.environ.get('SLURM_JOB_ID', 'vidtune')}"]
        srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
                f"--cpus-per-task={cpus_per_node}", "--kill-on-bad-exit=1", "--label"]
    return [*srun, sys.executable, "-m", "torch.distributed.run", *placement, f"--nproc_per_node={max(1, gpus)}",
            f"--signals-to-handle={','.join(TORCHRUN_SIGNALS)}", f"--shutdown-timeout={SHUTDOWN_SECONDS}",
            *entry, *args]


def rendezvous_endpoint() -> str:
    """``host:port`` for torchrun's rendezvous on this node (the first of the job's nodes, where the batch
    script runs): its host name as the other nodes resolve it, and a port free now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"{socket.gethostname()}:{port}"


def cli_arguments(meta_path: Path, model_dir: Path, out_dir: Path, training: dict,
                  trust_remote_code: bool = False) -> list[str]:
    """The arguments of ``python -m vidtune.train`` (see main) for one training."""
    return ["--meta", str(meta_path), "--model", str(model_dir), "--out", str(out_dir),
            "--training", json.dumps(training, sort_keys=True), *(["--trust-remote-code"] * trust_remote_code)]


def launch(args: list[str], gpus: int, log: logging.Logger, nodes: int = 1) -> None:
    """Run ``python -m vidtune.train <args>`` in ``gpus`` processes per node under torchrun (on ``nodes``
    nodes through srun), relaying their output to ``log`` and SIGTERM/SIGUSR1/SIGINT to the launcher;
    exits with the processes' status when they fail."""
    if torch.cuda.is_available() and torch.cuda.device_count() < gpus:
        raise ConfigError(f"training.gpus is {gpus} but this job sees {torch.cuda.device_count()} GPUs",
                          fix="give the job as many GPUs as training.gpus (CUDA_VISIBLE_DEVICES, SLURM --gpus)")
    processes = max(1, gpus)
    cpus = int(os.environ.get("OMP_NUM_THREADS", processes))  # Snakemake sets it to the job's threads
    threads = max(1, cpus // processes)
    rendezvous = rendezvous_endpoint() if nodes > 1 else None
    command = launch_command("vidtune.train", args, gpus, nodes, rendezvous, cpus_per_node=cpus)
    log.info("launching %d training processes (%d per node on %d node%s): %s", processes * nodes, processes,
             nodes, "s" * (nodes > 1), " ".join(command))
    # Its own session: a signal to this job's process group reaches torchrun once, through this process.
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    restore_signals = _install_signal_handlers(lambda signum, _frame: process.send_signal(signum),
                                               (*STOP_SIGNALS, "SIGINT"))
    try:
        for line in process.stdout:
            log.info("| %s", line.rstrip())
        status = process.wait()
    finally:
        restore_signals()
    if status != 0:
        log.error("training processes exited with status %d", status)
        raise SystemExit(status)


def train_job(meta_path: Path, model_dir: Path, out_dir: Path, training: dict, trust_remote_code: bool,
              log: logging.Logger) -> dict:
    """What the train rule runs: training in this process, or with ``gpus`` above 1 or ``nodes`` above 1
    one process per GPU (at least one per node)."""
    settings = training_settings(training)
    gpus, nodes = settings["gpus"], settings["nodes"]
    if gpus <= 1 and nodes <= 1:
        return train(meta_path, model_dir, out_dir, training, trust_remote_code=trust_remote_code, log=log)
    launch(cli_arguments(meta_path, model_dir, out_dir, training, trust_remote_code), gpus, log, nodes)
    return json.loads((Path(out_dir) / "train_summary.json").read_text(encoding="utf-8"))


# --- Checkpoints and signals -------------------------------------------------------------------------------

def _step(checkpoint: Path) -> int:
    try:
        return int(checkpoint.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def latest_complete_checkpoint(checkpoints_dir: Path, log: logging.Logger | None = None) -> Path | None:
    """The newest checkpoint with our completion marker; half-written ones are removed (never resumed)."""
    if not checkpoints_dir.is_dir():
        return None
    complete = []
    for folder in checkpoints_dir.glob("checkpoint-*"):
        if (folder / COMPLETE_MARKER).is_file() and (folder / "trainer_state.json").is_file():
            complete.append(folder)
        elif folder.is_dir() and _step(folder) >= 0:
            if log:
                log.warning("removing half-written checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
    return max(complete, key=_step) if complete else None


class CheckpointCallback(TrainerCallback):
    """Marks finished checkpoints, saves and stops on SIGTERM/SIGUSR1, and notes what a resume restored."""

    def __init__(self):
        self.stop_signal: str | None = None
        self.restored_optimizer_step: int | None = None
        self._checked_resume = False

    def handle_signal(self, signum, _frame) -> None:
        self.stop_signal = signal.Signals(signum).name

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if not self._checked_resume:
            self._checked_resume = True
            steps = [int(s["step"]) for s in (optimizer.state.values() if optimizer else []) if "step" in s]
            self.restored_optimizer_step = max(steps) if steps else 0

    def on_step_end(self, args, state, control, **kwargs):
        if args.world_size > 1:
            # Processes may see a signal a step apart: all stop after the same step, or the save hangs.
            signum = torch.tensor(getattr(signal, self.stop_signal) if self.stop_signal else 0, device=args.device)
            torch.distributed.all_reduce(signum, op=torch.distributed.ReduceOp.MAX)
            self.stop_signal = signal.Signals(int(signum)).name if signum else None
        if self.stop_signal:
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / COMPLETE_MARKER).write_text(f"{state.global_step}\n")


class ProgressLine(TrainerCallback):
    """A line on the terminal every ``every_percent`` of the steps (step/total, loss, samples/s, time left), and
    every record the Trainer logs, in full, in the log: in place of the Trainer's one printed dict per step."""

    def __init__(self, log: logging.Logger, every_percent: int = 5, stream=None):
        self.log, self.every_percent, self.stream = log, every_percent, stream
        self._next_percent, self._started, self._first_step = 0, 0.0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started, self._first_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.log.info("step %d/%d: %s", state.global_step, state.max_steps, json.dumps(logs))
        percent = 100 * state.global_step // max(state.max_steps, 1)
        if "loss" not in logs or (percent < self._next_percent and state.global_step < state.max_steps):
            return
        self._next_percent = (percent // self.every_percent + 1) * self.every_percent
        seconds = time.perf_counter() - self._started
        steps_per_s = (state.global_step - self._first_step) / seconds if seconds > 0 else 0.0
        samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        left = (state.max_steps - state.global_step) / steps_per_s if steps_per_s else 0.0
        print(f"training: step {state.global_step}/{state.max_steps} ({percent}%), loss {logs['loss']:.4f}, "
              f"{steps_per_s * samples_per_step:.1f} samples/s, {_duration(left)} left",
              file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


# --- Training ----------------------------------------------------------------------------------------------

def _logger(log) -> logging.Logger:
    if isinstance(log, logging.Logger):
        return log
    logger = logging.getLogger("vidtune.train")
    # Every process checks the data; one reports it.
    logger.setLevel(logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING)
    if log is not None and not any(getattr(handler, "baseFilename", None) == str(Path(log).resolve())
                                   for handler in logger.handlers):
        handler = logging.FileHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    elif not logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return logger


def _gathered(param: nn.Parameter):
    """The whole tensor inside the block, also when DeepSpeed ZeRO-3 holds only this process's shard of it
    (a collective: every process must enter it)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([param])
    return contextlib.nullcontext()


def trainable_fingerprints(model: nn.Module) -> dict[str, torch.Tensor]:
    """A small slice of every trainable tensor, to tell afterwards whether training changed it.

    Under ZeRO-3 every process must call it (each tensor is gathered in turn)."""
    fingerprints = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            with _gathered(param):
                if param.numel() > 0:
                    fingerprints[name] = param.detach().flatten()[:4096].float().cpu().clone()
    return fingerprints


def check_weights_changed(model: nn.Module, before: dict[str, torch.Tensor], final_dir: Path) -> dict:
    """Fail when nothing trainable moved, or when a saved LoRA B matrix is all zeros (LoRA + ZeRO-3 bug).

    Under ZeRO-3 every process must call it."""
    from safetensors import safe_open

    after = trainable_fingerprints(model)
    unchanged = [name for name, value in before.items() if name in after and torch.equal(after[name], value)]
    if before and len(unchanged) == len(before):
        raise ModelError("training changed no trainable weight", file=str(final_dir),
                         fix="check the learning rate, the data and (with DeepSpeed ZeRO-3) the LoRA setup")
    zero_lora_b = []
    adapter = final_dir / "adapter_model.safetensors"
    if adapter.is_file():
        with safe_open(adapter, "pt") as handle:
            lora_b = [key for key in handle.keys() if "lora_B" in key]
            zero_lora_b = [key for key in lora_b if not handle.get_tensor(key).any()]
        if not lora_b or zero_lora_b:
            raise ModelError(f"{len(zero_lora_b)} of {len(lora_b)} saved LoRA B matrices are all zeros",
                             file=str(adapter), fix="the adapter did not train; with ZeRO-3 gather weights on save")
    return {"trainable_tensors": len(before), "unchanged_tensors": len(unchanged)}


def _peak_memory_gib() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30, "cuda_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "cpu_max_rss"


def _install_signal_handlers(handler: Callable, signals: tuple[str, ...] = STOP_SIGNALS) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {name: signal.signal(getattr(signal, name), handler) for name in signals}
    return lambda: [signal.signal(getattr(signal, name), handler) for name, handler in previous.items()]


def train(meta_path: Path, model_dir: Path, out_dir: Path, training: dict, trust_remote_code: bool = False,
          log=None) -> dict:
    """Train on meta.json's data; write checkpoints/, final/, train_summary.json, loss.json, loss.png, runs/.

    Resumes from the newest complete checkpoint in out_dir/checkpoints when there is one. Returns the summary.
    """
    log = _logger(log)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:  # every process says where it runs (its logger reports warnings only)
        print(f"training process {os.environ.get('RANK', 0)} of {world_size} on {socket.gethostname()}",
              flush=True)
    settings = training_settings(training)
    out_dir, model_dir = Path(out_dir), Path(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings["seed"])

    processor = load_processor(model_dir)
    items, dropped, truncated, data_settings = load_training_items(Path(meta_path), processor, settings, log)
    model = prepare_model(model_dir, settings, trust_remote_code, log)
    before = trainable_fingerprints(model)

    checkpoints_dir = out_dir / "checkpoints"
    resume = latest_complete_checkpoint(checkpoints_dir, log)
    if resume is not None:
        log.info("resuming from %s (step %d): optimizer, scheduler, RNG and data position restored",
                 resume, _step(resume))
    bf16 = use_bf16(settings["bf16"])
    deepspeed = None
    if settings["deepspeed"] != "none":
        if deepspeed_available():
            deepspeed = deepspeed_config(settings, world_size=int(os.environ.get("WORLD_SIZE", 1)))
        else:
            log.warning("deepspeed %s asked for but the deepspeed package is not installed: training without it",
                        settings["deepspeed"])
    args = TrainingArguments(
        output_dir=str(checkpoints_dir), per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
        num_train_epochs=settings["epochs"], max_steps=settings["max_steps"],
        learning_rate=settings["learning_rate"], weight_decay=settings["weight_decay"],
        warmup_steps=settings["warmup_ratio"] if settings["warmup_ratio"] < 1 else 0,
        lr_scheduler_type="cosine", seed=settings["seed"], data_seed=settings["seed"], bf16=bf16,
        activation_checkpointing=settings["gradient_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False}, save_strategy="steps",
        save_steps=settings["save_steps"], save_total_limit=settings["save_total_limit"],
        logging_steps=settings["logging_steps"], report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0, deepspeed=deepspeed, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True)
    log.info("training on %s (bf16: %s)", args.device, bf16)
    from torch.utils.tensorboard import SummaryWriter

    collator = CountingCollator(processor.tokenizer.pad_token_id)
    checkpointing = CheckpointCallback()
    callbacks = [checkpointing, ProgressLine(log)]
    if args.process_index == 0:
        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "runs"))))
    trainer = Trainer(model=model, args=args, train_dataset=EncodedDataset(items, processor),
                      data_collator=collator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # one dict per step on the terminal; ProgressLine instead
    restore_signals = _install_signal_handlers(checkpointing.handle_signal)
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        restore_signals()
    seconds = time.perf_counter() - started
    if checkpointing.stop_signal:
        log.warning("stopped by %s after a checkpoint at step %d; run again to resume",
                    checkpointing.stop_signal, trainer.state.global_step)
        raise SystemExit(128 + getattr(signal, checkpointing.stop_signal))
    # Every process takes part in saving (ZeRO-3 gathers the weights); process 0 finishes final/.
    staging = out_dir / ".final-staging"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    weights = check_weights_changed(model, before, staging)  # every process: ZeRO-3 gathers the weights
    tokens = int(trainer.accelerator.reduce(torch.tensor(collator.tokens, device=args.device), "sum"))
    if not trainer.is_world_process_zero():
        return {}

    history = [{"step": entry["step"], "loss": entry["loss"], "learning_rate": entry.get("learning_rate")}
               for entry in trainer.state.log_history if "loss" in entry]
    steps_done = trainer.state.global_step - (_step(resume) if resume else 0)
    samples = steps_done * settings["batch_size"] * settings["gradient_accumulation_steps"] * args.world_size
    peak, peak_kind = _peak_memory_gib()
    trainable, total = _parameter_counts(model)
    with atomic_dir(out_dir / "final") as final:
        for path in staging.iterdir():
            shutil.move(str(path), final / path.name)
        _sort_adapter_targets(final / "adapter_config.json")
        processor.save_pretrained(final)
        write_json(final / "vidtune.json", {"method": settings["method"], "base_model": str(model_dir),
                                           **data_settings})
    shutil.rmtree(staging, ignore_errors=True)
    summary = {
        "method": settings["method"], "steps": trainer.state.global_step, "steps_this_run": steps_done,
        "epochs": trainer.state.epoch, "train_seconds": round(seconds, 3),
        "samples_per_s": round(samples / seconds, 3) if seconds else None,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "peak_memory_gib": round(peak, 3), "peak_memory_kind": peak_kind,
        "trainable_params": trainable, "total_params": total, "num_samples": len(items),
        "dropped_samples": dropped, "truncated_samples": truncated, "final_loss": history[-1]["loss"]
        if history else None, "train_loss": result.training_loss, "bf16": bf16,
        "deepspeed": settings["deepspeed"] if deepspeed else "none", "weights_check": weights,
        "resumed_from": None if resume is None else {
            "checkpoint": resume.name, "step": _step(resume),
            "optimizer_step": checkpointing.restored_optimizer_step},
    }
    write_json(out_dir / "loss.json", history)
    plot_loss(history, out_dir / "loss.png")
    write_json(out_dir / "train_summary.json", summary)
    log.info("trained %d steps in %.1f s; summary: %s", trainer.state.global_step, seconds,
             dumps_json({k: summary[k] for k in ("samples_per_s", "tokens_per_s", "final_loss")}).strip())
    return summary


def _sort_adapter_targets(path: Path) -> None:
    """peft writes target_modules from a set, in another order in every process: sort them, so the same
    training gives the same bytes."""
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def _parameter_counts(model: nn.Module) -> tuple[int, int]:
    # ds_numel: a ZeRO-3 parameter's full size (its own tensor is this process's shard, or empty).
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return trainable, total


def plot_loss(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidtune.atomic import atomic_path

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([entry["step"] for entry in history], [entry["loss"] for entry in history])
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
    plt.close(figure)


@command_line
def main(argv: list[str] | None = None) -> None:
    """``python -m vidtune.train``: one training process; torchrun starts one per GPU (see launch)."""
    parser = argparse.ArgumentParser(prog="python -m vidtune.train", description=main.__doc__)
    parser.add_argument("--meta", type=Path, required=True, help="the run's meta.json")
    parser.add_argument("--model", type=Path, required=True, help="the base model folder")
    parser.add_argument("--out", type=Path, required=True, help="the training folder (final/, checkpoints/)")
    parser.add_argument("--training", type=json.loads, default={}, help="runs.<run>.training as JSON")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--log", type=Path, help="log file (default: standard error)")
    options = parser.parse_args(argv)
    train(options.meta, options.model, options.out, options.training,
          trust_remote_code=options.trust_remote_code, log=options.log)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Process 0 writes the outputs while the others are done: they leave the group together, so no process
        # exits with the group's threads still running (an abort, "terminate called without an active exception").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
