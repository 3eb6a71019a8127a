"""Finetune a checkpoint of any model family (vidtune.families) on InternVL-format data (meta.json + JSONL):
LoRA, QLoRA or full.

The recipe, top to bottom: typed settings, processor and model, dataset and collator, the Trainer (which
counts tokens, fills DeepSpeed's "auto" values and resumes), then vidtune's own checks of what came out: the
trainable weights moved, LoRA B matrices are not all zeros. The data was checked before, by the
check_training_data step. The rule runs :func:`train_job`: this process, or torchrun/srun with one process
per GPU (vidtune.training.launch), each running :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import socket
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import get_model_param_count

from vidtune.atomic import atomic_dir, read_json, write_json
from vidtune.errors import ConfigError, command_line
from vidtune.internvl_checkpoint.convert import conversion_record
from vidtune.families import family_for_folder
from vidtune.report import loss_curve
from vidtune.training.batching import PlannedBatches, item_lengths, plan_batches, training_collator
from vidtune.training.checkpoints import (CheckpointCallback, checkpoint_step, install_signal_handlers,
                                          latest_complete_checkpoint)
from vidtune.training.data import EncodedDataset, training_items
from vidtune.training.launch import cli_arguments, deepspeed_available, deepspeed_config, launch
from vidtune.training.loading import BatchStats, MeasuredTrainer, dataloader_arguments, data_workers, job_threads
from vidtune.training.model import check_weights_changed, prepare_model, trainable_fingerprints, trainable_parameters
from vidtune.training.progress import ProgressLine
from vidtune.training.settings import CUDA_ONLY_OPTIMIZERS, TrainingSettings


def training_arguments(settings: TrainingSettings, checkpoints_dir: Path, num_batches: int, log: logging.Logger,
                       batch_size: int | None = None, workers: int = 0) -> TrainingArguments:
    """The Trainer's arguments: vidtune's settings, then ``trainer_args`` (checked when the workflow was
    parsed: none of them is a key set here, except the logging defaults disable_tqdm and report_to).
    ``num_batches`` items of the dataset, each of ``batch_size`` (1 where each item is a planned micro-batch)."""
    deepspeed = None
    if settings.deepspeed != "none":
        if deepspeed_available():
            deepspeed = deepspeed_config(settings)
        else:
            log.warning("deepspeed %s asked for but the deepspeed package is not installed: training without it",
                        settings.deepspeed)
    if settings.optim in CUDA_ONLY_OPTIMIZERS and not torch.cuda.is_available():
        raise ConfigError(f"optimizer {settings.optim} runs on CUDA only and this job has no GPU",
                          fix="train on a GPU (training.gpus 1 or more), or use adamw_torch or adamw_torch_fused")
    warmup_steps = settings.warmup_steps(num_batches, batch_size)
    log.info("%d optimizer steps, the first %d warming up (warmup_ratio %g)",
             settings.total_steps(num_batches, batch_size), warmup_steps, settings.warmup_ratio)
    logging_defaults = {"report_to": "none", "disable_tqdm": True}
    return TrainingArguments(
        output_dir=str(checkpoints_dir), per_device_train_batch_size=batch_size or settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, num_train_epochs=settings.epochs,
        max_steps=settings.max_steps, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        warmup_steps=warmup_steps, lr_scheduler_type=settings.lr_scheduler_type, optim=settings.optim,
        seed=settings.seed, data_seed=settings.seed, bf16=settings.uses_bf16,
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}, save_strategy="steps",
        save_steps=settings.save_steps, save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps,
        # A packed row has no padding and no attention_mask (the Trainer would warn at every step).
        include_num_input_tokens_seen="all" if settings.packing else "non_padding",
        remove_unused_columns=False, deepspeed=deepspeed, **dataloader_arguments(workers),
        use_cpu=not torch.cuda.is_available(), **{**logging_defaults, **settings.trainer_args})


def train(meta_path: Path, model_dir: Path, out_dir: Path, settings: TrainingSettings | dict,
          log=None) -> dict:
    """Train on meta.json's data; write checkpoints/, final/, train_summary.json, loss.json, loss.png, runs/.

    Resumes from the newest complete checkpoint in out_dir/checkpoints when there is one. Returns the summary
    (in process 0; the others return an empty dict).
    """
    log = _logger(log)
    if not isinstance(settings, TrainingSettings):
        settings = TrainingSettings.from_config(settings)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # every process says where it runs
        print(f"training process {os.environ.get('RANK', 0)} of {os.environ['WORLD_SIZE']} on "
              f"{socket.gethostname()}", flush=True)
    out_dir, model_dir = Path(out_dir), Path(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)

    family = family_for_folder(model_dir)
    processor = family.load_processor(model_dir)
    items, datasets = training_items(meta_path, settings.seed, log)
    model = prepare_model(model_dir, settings, log, family)
    before = trainable_fingerprints(model)

    resume = latest_complete_checkpoint(out_dir / "checkpoints", log)
    if resume is not None:
        log.info("resuming from %s (step %d): optimizer, scheduler, RNG and data position restored",
                 resume, checkpoint_step(resume))
    samples = EncodedDataset(items, processor, family)
    plan = None
    if settings.batching != "fixed":
        plan = plan_batches(item_lengths(items, processor, family, log), settings.batching, batch_size=settings.batch_size,
                            tokens_per_batch=settings.tokens_per_batch,
                            packing_max_tokens=settings.packing_max_tokens, seed=settings.seed)
        samples = PlannedBatches(samples, plan)
        log.info("batching: %s, %d micro-batches of %.1f samples on average", settings.batching, len(plan),
                 len(items) / len(plan))
    collator = training_collator(processor.tokenizer.pad_token_id, planned=plan is not None, packed=settings.packing,
                                 family=family, model_config=model.config)
    workers = data_workers(settings.data_workers, job_threads(), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    args = training_arguments(settings, out_dir / "checkpoints", len(plan) if plan else len(items), log,
                              batch_size=1 if plan else None, workers=workers)
    log.info("training on %s (bf16: %s, attention: %s, %d data-loading processes)", args.device,
             settings.uses_bf16, settings.attention, workers)
    batch_stats, checkpointing = BatchStats(), CheckpointCallback()
    progress = ProgressLine(log, samples_per_batch=len(items) / len(plan) if plan else None)
    callbacks = [batch_stats, checkpointing, progress]
    if args.process_index == 0:
        from torch.utils.tensorboard import SummaryWriter

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "runs"))))
    trainer = MeasuredTrainer(model=model, args=args, train_dataset=samples, data_collator=collator,
                              callbacks=callbacks, batch_stats=batch_stats)
    trainer.remove_callback(PrinterCallback)  # one dict per step on the terminal; ProgressLine instead
    restore_signals = install_signal_handlers(checkpointing.handle_signal)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        restore_signals()
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
    loaded = batch_stats.totals(trainer.accelerator)  # every process: a sum over them
    trainable, total = (model.get_nb_trainable_parameters() if hasattr(model, "get_nb_trainable_parameters")
                        else (get_model_param_count(model, True), get_model_param_count(model)))
    per_part = trainable_parameters(model, family)
    if not trainer.is_world_process_zero():
        return {}
    with atomic_dir(out_dir / "final") as final:
        for path in staging.iterdir():
            shutil.move(str(path), final / path.name)
        _sort_adapter_targets(final / "adapter_config.json")
        processor.save_pretrained(final)
        conversion = conversion_record(model_dir)  # a converted base: name the folder the user gave
        write_json(final / "vidtune.json", {"method": settings.method, "family": family.name,
                                           "base_model": str(model_dir),
                                           **({"base_model_original": conversion["source"]} if conversion else {}),
                                           "datasets": datasets})
    shutil.rmtree(staging, ignore_errors=True)

    history = [{"step": entry["step"], "loss": entry["loss"], "learning_rate": entry.get("learning_rate")}
               for entry in trainer.state.log_history if "loss" in entry]
    seconds = result.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen - progress.tokens_at_start
    peak, peak_kind = _peak_memory_gib()
    summary = {
        "method": settings.method, "steps": trainer.state.global_step,
        "steps_this_run": trainer.state.global_step - (checkpoint_step(resume) if resume else 0),
        "epochs": trainer.state.epoch, "train_seconds": round(seconds, 3),
        "samples_per_s": round(loaded["samples"] / seconds, 3) if seconds else None,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "batching": settings.batching, "micro_batches": len(plan) if plan else None,
        "padding_share": loaded["padding_share"], "data_workers": workers,
        "data_wait_s": round(loaded["data_wait_s"], 3),
        "data_wait_share": round(loaded["data_wait_s"] / seconds, 4) if seconds else None,
        "peak_memory_gib": round(peak, 3), "peak_memory_kind": peak_kind,
        "trainable_params": trainable, "total_params": total, "num_samples": len(items),
        "family": family.name, "trainable_parameters": per_part,
        "final_loss": history[-1]["loss"] if history else None, "train_loss": result.training_loss,
        "warmup_steps": args.warmup_steps, "bf16": settings.uses_bf16,
        "deepspeed": settings.deepspeed if args.deepspeed else "none",
        "weights_check": weights,
        "resumed_from": None if resume is None else {
            "checkpoint": resume.name, "step": checkpoint_step(resume),
            "optimizer_step": checkpointing.restored_optimizer_step},
    }
    write_json(out_dir / "loss.json", history)
    loss_curve(history, out_dir / "loss.png")
    write_json(out_dir / "train_summary.json", summary)
    log.info("trained %d steps in %.1f s (%s samples/s, %s tokens/s, final loss %s); padding %.1f%% of the tokens, "
             "%.1f%% of the time waiting for data", summary["steps"], seconds, summary["samples_per_s"],
             summary["tokens_per_s"], summary["final_loss"], 100 * summary["padding_share"],
             100 * (summary["data_wait_share"] or 0))
    return summary


def train_job(meta_path: Path, model_dir: Path, out_dir: Path, settings: TrainingSettings,
              log: logging.Logger) -> dict:
    """What the train rule runs: training in this process, or (``gpus`` or ``nodes`` above 1) one process
    per GPU, at least one per node."""
    if settings.gpus <= 1 and settings.nodes <= 1:
        return train(meta_path, model_dir, out_dir, settings, log=log)
    launch(cli_arguments(meta_path, model_dir, out_dir, settings), settings.gpus, log,
           settings.nodes)
    return read_json(Path(out_dir) / "train_summary.json")


def _logger(log) -> logging.Logger:
    if isinstance(log, logging.Logger):
        return log
    logger = logging.getLogger("vidtune.train")
    logger.setLevel(logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING)  # one reports
    if log is not None and not any(getattr(handler, "baseFilename", None) == str(Path(log).resolve())
                                   for handler in logger.handlers):
        handler = logging.FileHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    elif not logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return logger


def _peak_memory_gib() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30, "cuda_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "cpu_max_rss"


def _sort_adapter_targets(path: Path) -> None:
    """peft writes target_modules from a set, in another order in every process: sort them, so the same
    training gives the same bytes."""
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


@command_line
def main(argv: list[str] | None = None) -> None:
    """``python -m vidtune.train``: one training process; torchrun starts one per GPU (see train_job)."""
    parser = argparse.ArgumentParser(prog="python -m vidtune.train", description=main.__doc__)
    parser.add_argument("--meta", type=Path, required=True, help="the checked training data's meta.json")
    parser.add_argument("--model", type=Path, required=True, help="the base model folder")
    parser.add_argument("--out", type=Path, required=True, help="the training folder (final/, checkpoints/)")
    parser.add_argument("--settings", type=Path, help="runs.<run>.training as a JSON file (default: defaults)")
    parser.add_argument("--log", type=Path, help="log file (default: standard error)")
    options = parser.parse_args(argv)
    settings = TrainingSettings.read(options.settings) if options.settings else TrainingSettings.from_config({})
    train(options.meta, options.model, options.out, settings, log=options.log)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Process 0 writes the outputs while the others are done: they leave the group together, so no process
        # exits with the group's threads still running (an abort, "terminate called without an active exception").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
