"""What a person watching a training sees: a line every few percent of the steps, the full record in the log."""

from __future__ import annotations

import json
import logging
import sys
import time

from transformers import TrainerCallback


class ProgressLine(TrainerCallback):
    """A line on the terminal every ``every_percent`` of the steps (step/total, loss, samples/s, time left), and
    every record the Trainer logs, in full, in the log: in place of the Trainer's one printed dict per step."""

    def __init__(self, log: logging.Logger, every_percent: int = 5, stream=None,
                 samples_per_batch: float | None = None):
        """``samples_per_batch``: the mean of a planned batching's micro-batches (default: the batch size)."""
        self.log, self.every_percent, self.stream = log, every_percent, stream
        self.samples_per_batch = samples_per_batch
        self._next_percent, self._started, self._first_step = 0, 0.0, 0
        self.tokens_at_start = 0  # input tokens the Trainer had counted before this run (a resumed one's)

    def on_train_begin(self, args, state, control, **kwargs):
        self._started, self._first_step = time.perf_counter(), state.global_step
        self.tokens_at_start = state.num_input_tokens_seen

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
        samples_per_step = ((self.samples_per_batch or args.per_device_train_batch_size)
                            * args.gradient_accumulation_steps * args.world_size)
        left = (state.max_steps - state.global_step) / steps_per_s if steps_per_s else 0.0
        print(f"training: step {state.global_step}/{state.max_steps} ({percent}%), loss {logs['loss']:.4f}, "
              f"{steps_per_s * samples_per_step:.1f} samples/s, {_duration(left)} left",
              file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
