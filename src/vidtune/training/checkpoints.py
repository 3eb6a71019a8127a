"""Checkpoints a job can resume from, and stopping cleanly on a signal.

The Trainer writes ``checkpoint-<step>/`` folders; vidtune marks each one complete only after the Trainer
has finished writing it (``COMPLETE_MARKER``), so a job killed while saving resumes from the one before,
never from a half-written folder. SIGTERM or SIGUSR1 (SLURM's warning before its time limit) make every
process save after the same step and stop; the next run resumes there.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

COMPLETE_MARKER = "vidtune_checkpoint_complete"
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


def checkpoint_step(checkpoint: Path) -> int:
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
        elif folder.is_dir() and checkpoint_step(folder) >= 0:
            if log:
                log.warning("removing half-written checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
    return max(complete, key=checkpoint_step) if complete else None


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


def install_signal_handlers(handler: Callable, signals: tuple[str, ...] = STOP_SIGNALS) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {name: signal.signal(getattr(signal, name), handler) for name in signals}
    return lambda: [signal.signal(getattr(signal, name), handler) for name, handler in previous.items()]
