"""DeepSpeed ZeRO-2/3 and multi-process training on CPU with the tiny model.

The config and launch-command tests are quick. The `integration` ones really train: DeepSpeed needs a
launcher, so each runs `python -m vidtune.train` with the launcher's environment (RANK, WORLD_SIZE, ...),
or torchrun with two CPU processes (gloo). The first DeepSpeed run on a machine JIT-compiles its CPU
communication op (about 80 s, cached under ~/.cache/torch_extensions, shared by the later runs); optimizer
offload compiles DeepSpeed's CPU Adam once more (about 100 s).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

import vidtune.train as train_module
from conftest import Workflow, quick_config
from vidtune.merge import merge
from vidtune.modeling import load_processor
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.atomic import read_jsonl
from vidtune.train import main, train_job
from vidtune.training.checkpoints import COMPLETE_MARKER
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.training.data import EncodedDataset, training_items
from vidtune.training.launch import cli_arguments, deepspeed_config, launch_command
from vidtune.training.model import prepare_model
from vidtune.training.settings import TrainingSettings

torch.set_num_threads(1)
# 8 samples, batch 4: 2 steps an epoch, 4 steps; a checkpoint (with DeepSpeed's own state) at step 2.
QUICK = {"epochs": 2, "learning_rate": 2e-3, "batch_size": 4, "save_steps": 2, "warmup_ratio": 0.0,
         "lora": {"dropout": 0.0}}


# --- Config and command ------------------------------------------------------------------------------------

def _settings(**training) -> TrainingSettings:
    return TrainingSettings.from_config(training)


def _as_the_trainer_fills_it(config: dict, world_size: int, **arguments) -> HfTrainerDeepSpeedConfig:
    """The DeepSpeed config after transformers filled its "auto" values from the Trainer's arguments."""
    args = TrainingArguments(output_dir="unused", use_cpu=True, **arguments)
    fields = {field.name: getattr(args, field.name) for field in dataclasses.fields(args) if field.init}
    filled = HfTrainerDeepSpeedConfig(json.loads(json.dumps(config)))
    filled.trainer_config_process(SimpleNamespace(**fields, world_size=world_size))
    return filled


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("world_size", [1, 2, 16])
def test_config_batch_sizes_are_the_trainers(stage, world_size):
    # vidtune writes no batch arithmetic of its own: the Trainer fills micro-batch, accumulation, the
    # global batch over every process, clipping and bf16 from its arguments.
    config = deepspeed_config(_settings(deepspeed=stage, batch_size=2, gradient_accumulation_steps=4, gpus=8))
    filled = _as_the_trainer_fills_it(config, world_size, per_device_train_batch_size=2,
                                      gradient_accumulation_steps=4, bf16=False)
    assert filled.mismatches == []
    assert filled.config["train_micro_batch_size_per_gpu"] == 2 and filled.config["gradient_accumulation_steps"] == 4
    assert filled.config["train_batch_size"] == 2 * 4 * world_size
    assert filled.config["gradient_clipping"] == 1.0 and filled.config["bf16"]["enabled"] is False


def test_config_offload():
    zero2 = deepspeed_config(_settings(deepspeed="zero2", offload=True))["zero_optimization"]
    assert zero2["stage"] == 2 and zero2["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero2
    zero3 = deepspeed_config(_settings(deepspeed="zero3", offload=True))["zero_optimization"]
    assert zero3["stage"] == 3 and zero3["offload_optimizer"]["device"] == "cpu"
    assert zero3["offload_param"]["device"] == "cpu" and zero3["stage3_gather_16bit_weights_on_model_save"]
    plain = deepspeed_config(_settings(deepspeed="zero3"))["zero_optimization"]
    assert "offload_optimizer" not in plain and "offload_param" not in plain
    with pytest.raises(ValueError, match="zero2 or zero3"):
        deepspeed_config(_settings(deepspeed="none"))


def test_launch_command_and_cli_arguments(monkeypatch, tmp_path):
    assert launch_command("vidtune.train", ["--x"], 1) == [sys.executable, "-m", "vidtune.train", "--x"]
    command = launch_command("vidtune.train", ["--x"], 4)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=4" in command
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in command
    assert command[-3:] == ["-m", "vidtune.train", "--x"]
    assert launch_command(tmp_path / "train.py", [], 2)[-1] == str(tmp_path / "train.py")
    # Several nodes: srun starts one torchrun per node, which meet at the rendezvous on the first node.
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    command = launch_command("vidtune.train", ["--x"], 1, nodes=2, rendezvous="node1:29500", cpus_per_node=8)
    assert command[:7] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=8",
                           "--kill-on-bad-exit=1", "--label"]
    assert {"--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", "--rdzv_endpoint=node1:29500",
            "--rdzv_id=42"} <= set(command) and "--standalone" not in command
    with pytest.raises(ValueError, match="rendezvous"):
        launch_command("vidtune.train", [], 4, nodes=2)
    calls = []
    monkeypatch.setattr(train_module, "train", lambda *args, **kwargs: calls.append((args, kwargs)))
    settings = _settings(method="lora", deepspeed="zero3", lora={"rank": 8})
    out = tmp_path / "out"
    main(cli_arguments(Path("m.json"), Path("base"), out, settings))
    assert calls == [((Path("m.json"), Path("base"), out, settings), {"log": None})]
    assert calls[0][0][3].lora.rank == 8  # typed settings, read back from the file every process reads


# --- Real runs ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return folder, write_synthetic_dataset(folder, 8, num_frames=2, size=32, images=2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_one_process(meta: Path, tiny: Path, out: Path, training: dict) -> subprocess.CompletedProcess:
    """`python -m vidtune.train` as process 0 of 1, with the environment a launcher gives it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    command = [sys.executable, "-m", "vidtune.train", *cli_arguments(meta, tiny, out, _settings(**training))]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _lora_b(adapter: Path) -> dict[str, torch.Tensor]:
    with safe_open(adapter / "adapter_model.safetensors", "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if "lora_B" in key}


@pytest.mark.integration
@pytest.mark.parametrize("stage, offload", [("zero2", False), ("zero3", False), ("zero3", True)])
def test_zero_stage_trains_lora_that_merges(stage, offload, tiny, data, tmp_path):
    folder, meta = data
    training = {**QUICK, "deepspeed": stage, "offload": offload}
    done = _train_one_process(meta, tiny, tmp_path / "train", training)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((tmp_path / "train" / "train_summary.json").read_text())
    assert summary["deepspeed"] == stage and summary["steps"] == 4
    losses = [entry["loss"] for entry in json.loads((tmp_path / "train" / "loss.json").read_text())]
    assert losses[-1] < losses[0]
    # Parameter counts are the whole model's, also where ZeRO-3 holds shards.
    plain = prepare_model(tiny, _settings(), logging.getLogger("test"))
    assert summary["trainable_params"] == sum(p.numel() for p in plain.parameters() if p.requires_grad)
    assert summary["total_params"] == sum(p.numel() for p in plain.parameters())
    assert summary["weights_check"] == {"trainable_tensors": len([p for p in plain.parameters() if p.requires_grad]),
                                        "unchanged_tensors": 0}
    # DeepSpeed really ran: the checkpoint holds its engine state.
    assert list((tmp_path / "train" / "checkpoints" / "checkpoint-2").glob("global_step2/*optim_states.pt"))
    final = tmp_path / "train" / "final"
    lora_b = _lora_b(final)
    assert lora_b and all(tensor.any() for tensor in lora_b.values())  # not the "ZeRO-3 trains nothing" zeros
    check = merge(tiny, final, tmp_path / "merged", read_jsonl(folder / "train.jsonl"), folder)
    assert check["passed"]
    AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")


@pytest.mark.integration
def test_zero3_weights_check_sees_through_shards(tiny, data, tmp_path):
    # Full finetuning with a learning rate of 0 under ZeRO-3: every weight is a shard after training, and
    # the check must still gather and compare them (it used to skip the empty local tensors and pass).
    _, meta = data
    training = {**QUICK, "method": "full", "learning_rate": 0.0, "max_steps": 1, "deepspeed": "zero3"}
    done = _train_one_process(meta, tiny, tmp_path / "train", training)
    assert done.returncode != 0 and "training changed no trainable weight" in done.stderr
    assert not (tmp_path / "train" / "final").exists()


@pytest.mark.integration
@pytest.mark.parametrize("deepspeed, packing", [("none", False), ("zero2", False), ("zero3", False), ("zero3", True)])
def test_two_processes_under_torchrun(deepspeed, packing, tiny, data, tmp_path):
    # What the train rule does with gpus: 2. Without GPUs torchrun's two processes train on CPU over gloo;
    # with ZeRO-3 both take part in gathering the shards for saving and for the weights check.
    _, meta = data
    log_file = tmp_path / "train.log"
    log = logging.getLogger(f"test.torchrun.{deepspeed}")
    log.setLevel(logging.INFO)
    log.addHandler(logging.FileHandler(log_file))
    # Packed: rows of about 2 samples (issue 23), one row per process and step.
    training = {**QUICK, "gpus": 2, "deepspeed": deepspeed,
                **({"packing": True, "packing_max_tokens": 120} if packing else {"batch_size": 2})}
    summary = train_job(meta, tiny, tmp_path / "train", _settings(**training), log=log)
    text = log_file.read_text()
    assert "torch.distributed.run" in text and "--nproc_per_node=2" in text and "8 training samples" in text
    # 8 samples over 2 processes x 2 per batch: 2 steps an epoch, 4 in all, each of 4 samples.
    assert summary["deepspeed"] == deepspeed and summary["steps"] == (2 * -(-summary["micro_batches"] // 2)
                                                                      if packing else 4)
    assert summary["padding_share"] == 0.0 if packing else summary["padding_share"] > 0
    assert summary["samples_per_s"] * summary["train_seconds"] == pytest.approx(16, rel=0.01)
    # tokens/s counts both processes' tokens: every sample's real tokens, twice (2 epochs).
    processor = load_processor(tiny)
    items = training_items(meta, 0, log)[0]
    tokens = 2 * sum(int(sample["attention_mask"].sum()) for sample in EncodedDataset(items, processor, INTERNVL))
    assert summary["tokens_per_s"] * summary["train_seconds"] == pytest.approx(tokens, rel=0.01)
    assert summary["weights_check"]["unchanged_tensors"] == 0
    assert (tmp_path / "train" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.integration
def test_train_rule_launches_one_process_per_gpu(tmp_path):
    # The train rule with gpus: 2 on a machine without GPUs: its script claims the checkpoint folder, then
    # torchrun's two CPU processes train.
    config = quick_config()
    config["runs"]["demo"]["training"].update({"gpus": 2, "deepspeed": "zero2"})
    workflow = Workflow(tmp_path / "work", config)
    workflow.snakemake("results/runs/demo/train/train_summary.json")
    log = workflow.path("results/logs/train/demo.log").read_text()
    assert "launching 2 training processes" in log and "--nproc_per_node=2" in log
    summary = json.loads(workflow.path("results/runs/demo/train/train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["deepspeed"] == "zero2"
    assert workflow.path("results/runs/demo/train/checkpoints/FINGERPRINT").is_file()
    assert workflow.path("results/runs/demo/train/final/adapter_model.safetensors").is_file()


LAUNCH = """
import json, logging, sys
from pathlib import Path
from vidtune.train import train_job
from vidtune.training.settings import TrainingSettings
logging.basicConfig(filename=sys.argv[4], level=logging.INFO)
train_job(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
          TrainingSettings.from_config(json.loads(sys.argv[5])), logging.getLogger("job"))
"""


@pytest.mark.integration
def test_stop_signal_reaches_every_process(tiny, data, tmp_path):
    # SLURM's time-limit warning to the job: torchrun passes it on, both processes stop after the same step,
    # checkpoint, and exit.
    _, meta = data
    out, log_file = tmp_path / "train", tmp_path / "train.log"
    training = {**QUICK, "batch_size": 2, "gpus": 2, "epochs": 5000}  # far more than the signal lets it run
    job = subprocess.Popen([sys.executable, "-c", LAUNCH, str(meta), str(tiny), str(out), str(log_file),
                            json.dumps(training)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    marker = out / "checkpoints" / "checkpoint-2" / COMPLETE_MARKER
    deadline = time.time() + 300
    while not marker.exists():
        assert job.poll() is None and time.time() < deadline, "no checkpoint-2"
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=300) != 0
    assert log_file.read_text().count("stopped by SIGUSR1 after a checkpoint") == 2  # one line per process
    steps = [int(folder.name.split("-")[1]) for folder in (out / "checkpoints").glob("checkpoint-*")]
    assert max(steps) > 2 and (out / "checkpoints" / f"checkpoint-{max(steps)}" / COMPLETE_MARKER).is_file()
    assert max(steps) < 200 and not (out / "final").exists()
