"""Data loading off the critical path, and what it costs: worker processes that decode and tile the next
batches while the model computes, and the share of the training time spent waiting for them.

The workers only load: the sampler (the order of samples and micro-batches) runs in the training process,
so any number of workers gives the same batches in the same order, and a resumed run skips exactly the
micro-batches already trained.
"""

from __future__ import annotations

import os
import time

import torch
from transformers import Trainer, TrainerCallback

from vidtune.training.packing import sample_spans

MAX_WORKERS = 8
PREFETCH_BATCHES = 2  # per worker


def data_workers(setting: int | str, threads: int, processes: int) -> int:
    """Loading processes per training process: the setting, or (``auto``) the job's threads shared among its
    training processes, at least 1 and at most MAX_WORKERS."""
    if setting != "auto":
        return int(setting)
    return max(1, min(MAX_WORKERS, threads // max(1, processes)))


def job_threads() -> int:
    """The job's CPU threads: OMP_NUM_THREADS (set from the rule's threads), else the CPUs this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else len(os.sched_getaffinity(0))


def dataloader_arguments(workers: int) -> dict:
    """TrainingArguments for ``workers`` loading processes, kept for the whole run and pinning memory for a GPU."""
    return {"dataloader_num_workers": workers, "dataloader_prefetch_factor": PREFETCH_BATCHES if workers else None,
            "dataloader_persistent_workers": workers > 0, "dataloader_pin_memory": torch.cuda.is_available()}


class BatchStats(TrainerCallback):
    """Time the training loop waited for its batches, and their tokens (with and without padding) and samples;
    each logged record gets ``data_wait_share`` since the one before."""

    def __init__(self):
        self.wait_s = 0.0
        self.tokens = self.padded_tokens = self.samples = 0
        self._since = (0.0, 0.0)  # (wait, clock) at the last log

    def add_batch(self, batch: dict, seconds: float) -> None:
        self.wait_s += seconds
        input_ids = batch["input_ids"]
        self.padded_tokens += input_ids.numel()
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())
            self.samples += input_ids.shape[0]
        else:  # a packed row: every token is a sample's; a sample starts where its positions restart
            self.tokens += input_ids.numel()
            self.samples += len(sample_spans(batch["position_ids"])) if "position_ids" in batch else input_ids.shape[0]

    def on_train_begin(self, args, state, control, **kwargs):
        self._since = (self.wait_s, time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        wait, clock = self.wait_s, time.perf_counter()
        if logs is not None and "loss" in logs and clock > self._since[1]:
            logs["data_wait_share"] = round((wait - self._since[0]) / (clock - self._since[1]), 4)
            self._since = (wait, clock)

    def totals(self, accelerator) -> dict:
        """This run's figures summed over every process (a collective: every process calls it)."""
        values = torch.tensor([self.wait_s, self.tokens, self.padded_tokens, self.samples], dtype=torch.float64,
                              device=accelerator.device)
        wait_s, tokens, padded, samples = accelerator.reduce(values, reduction="sum").tolist()
        return {"data_wait_s": wait_s / accelerator.num_processes, "tokens": int(tokens),
                "padded_tokens": int(padded), "samples": int(samples),
                "padding_share": round(1 - tokens / padded, 4) if padded else 0.0}


class MeasuredTrainer(Trainer):
    """The Trainer, timing each wait for a micro-batch from the data loader (``batch_stats``, which must also
    be one of its callbacks, before any that prints the logs), and training no step past max_steps on a
    resume."""

    def __init__(self, *args, batch_stats: BatchStats, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_stats = batch_stats

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        return super().get_batch_samples(_Timed(epoch_iterator, self.batch_stats), num_batches, device)

    def _run_epoch(self, *args, **kwargs):
        # A resume from a checkpoint of the last step (a job killed after it, before final/) must train nothing
        # more; the Trainer checks max_steps only after a step, so where max_steps ends inside an epoch it
        # would train one step past it.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)


class _Timed:
    def __init__(self, iterator, stats: BatchStats):
        self.iterator, self.stats = iterator, stats

    def __iter__(self):
        return self

    def __next__(self):
        started = time.perf_counter()
        batch = next(self.iterator)
        self.stats.add_batch(batch, time.perf_counter() - started)
        return batch
