"""Starting the training processes: in this process, torchrun with one process per GPU, or (several nodes,
inside a SLURM allocation) srun starting one torchrun per node; and the DeepSpeed configuration they use.

torchrun passes SLURM's stop signals on to every process and gives them time to checkpoint before it
kills them; srun passes them on to every node's torchrun and ends the step when one node fails.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from vidtune.errors import ConfigError
from vidtune.training.checkpoints import STOP_SIGNALS, install_signal_handlers
from vidtune.training.settings import TrainingSettings

# torchrun's own signals plus SLURM's warning; and how long its processes get to save before SIGKILL.
TORCHRUN_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")
SHUTDOWN_SECONDS = 300


def deepspeed_config(settings: TrainingSettings) -> dict:
    """A ZeRO-2/3 configuration; the Trainer fills each ``"auto"`` from its own arguments (micro-batch,
    accumulation, global batch over all processes, clipping, bf16, bucket sizes from the model)."""
    stage = {"zero2": 2, "zero3": 3}.get(settings.deepspeed)
    if stage is None:
        raise ValueError(f"deepspeed must be zero2 or zero3, not {settings.deepspeed!r}")
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    if settings.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
            "zero_optimization": zero, "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9,
            "wall_clock_breakdown": False}


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
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"{socket.gethostname()}:{port}"


def cli_arguments(meta_path: Path, model_dir: Path, out_dir: Path, settings: TrainingSettings) -> list[str]:
    """The arguments of ``python -m vidtune.train`` (see its main) for one training; the settings go to
    ``out_dir/training_settings.json``, which every process reads."""
    settings_file = Path(out_dir) / "training_settings.json"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings.write(settings_file)
    return ["--meta", str(meta_path), "--model", str(model_dir), "--out", str(out_dir),
            "--settings", str(settings_file)]


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
    restore_signals = install_signal_handlers(lambda signum, _frame: process.send_signal(signum),
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


