"""Training on CPU with the tiny model: each method learns, QLoRA quantises, resume and signals work."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from safetensors.torch import save_file

from vidtune.errors import DataError, ModelError
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.train import (COMPLETE_MARKER, ProgressLine, check_weights_changed, deepspeed_config,
                           launch_command, load_training_items, train)

torch.set_num_threads(1)
FAST = {"epochs": 4, "learning_rate": 2e-3, "batch_size": 4, "save_steps": 4, "warmup_ratio": 0.0,
        "lora": {"dropout": 0.0}}


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), 8, num_frames=2, size=32, images=2)


def _losses(out_dir: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((out_dir / "loss.json").read_text())]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_each_method_learns(method, tiny, meta, tmp_path):
    summary = train(meta, tiny, tmp_path, {**FAST, "method": method})
    losses = _losses(tmp_path)
    assert len(losses) == summary["steps"] == 8
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.1
    final = tmp_path / "final"
    settings = json.loads((final / "vidtune.json").read_text())
    assert settings["prompt"] == "Describe the video." and settings["frames"]["num_frames"] == 2
    assert (final / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "runs").iterdir())
    for key in ("samples_per_s", "tokens_per_s", "peak_memory_gib", "trainable_params"):
        assert summary[key] > 0
    assert summary["weights_check"]["unchanged_tensors"] == 0
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 8
    if method == "full":
        assert summary["trainable_params"] < summary["total_params"]  # vision tower frozen by default


def test_qlora_quantises_the_language_model_only(tiny):
    import bitsandbytes as bnb

    from vidtune.modeling import load_model

    model = load_model(tiny, quantization="nf4")
    quantised = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert quantised and all(name.startswith("model.language_model.") for name in quantised)
    assert all(not module.support_avx512bf16_for_cpu for module in model.modules()
               if isinstance(module, bnb.nn.Linear4bit))


def test_lora_targets_the_language_model_only(tiny):
    from vidtune.modeling import load_model
    from vidtune.train import lora_target_modules

    model = load_model(tiny)
    targets = lora_target_modules(model)
    assert targets and all(name.startswith("model.language_model.") for name in targets)
    assert {name.rsplit(".", 1)[1] for name in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj"}
    assert any(".vision_tower." in name for name in lora_target_modules(model, vision=True))


def test_over_long_samples_dropped_or_truncated(tiny, meta):
    from vidtune.modeling import load_processor

    processor = load_processor(tiny)
    limit = 50  # one 32px frame is 4 visual tokens + 2; two frames and the text don't fit
    items, dropped, truncated, _ = load_training_items(
        meta, processor, {"max_seq_length": limit, "over_length": "truncate_frames", "seed": 0}, _log())
    assert truncated and all("to 1 frames" in entry["reason"] for entry in truncated)
    assert all(item.length <= limit for item in items)
    with pytest.raises(DataError, match="no usable training sample"):
        load_training_items(meta, processor, {"max_seq_length": 20, "over_length": "drop", "seed": 0}, _log())


def test_both_video_forms_give_the_same_items_from_any_working_directory(tiny, meta, tmp_path, monkeypatch):
    """A frame folder (``video``) and a frame list (``image`` + ``Frame-<i>: <image>`` lines) train alike;
    meta.json's relative root and annotation are read from meta.json's folder, not the working directory."""
    from vidtune.internvl_files import frame_lines
    from vidtune.modeling import load_processor

    folder = meta.parent
    listed = []
    for record in map(json.loads, (folder / "train.jsonl").read_text().splitlines()):
        if "video" in record:
            frames = sorted((folder / record["video"]).iterdir(), key=lambda p: int(p.stem.split("_")[-1]))
            human, gpt = record["conversations"]
            prompt = human["value"].replace("<video>\n", "")
            record = {"id": record["id"], "image": [f"{record['video']}{frame.name}" for frame in frames],
                      "conversations": [{"from": "human", "value": f"{frame_lines(len(frames))}\n{prompt}"}, gpt]}
        listed.append(record)
    (tmp_path / "listed.jsonl").write_text("".join(json.dumps(record) + "\n" for record in listed))
    entry = {**json.loads(meta.read_text())["synthetic"], "annotation": "listed.jsonl",
             "root": os.path.relpath(folder, tmp_path) + "/"}
    (tmp_path / "meta.json").write_text(json.dumps({"synthetic": entry}))
    monkeypatch.chdir("/")
    processor = load_processor(tiny)
    settings = {"max_seq_length": 4096, "over_length": "drop", "seed": 0}

    def described(meta_path):
        items, dropped, _, _ = load_training_items(meta_path, processor, settings, _log())
        assert not dropped
        return [(i.id, i.media_type, [p.resolve() for p in i.paths], i.prompt, i.target, i.length) for i in items]

    assert described(tmp_path / "meta.json") == described(meta)


def _log():
    import logging

    return logging.getLogger("test")


def test_weights_check_catches_untrained_lora(tmp_path):
    model = torch.nn.Linear(2, 2)
    before = {name: p.detach().flatten().clone() for name, p in model.named_parameters()}
    with pytest.raises(ModelError, match="changed no trainable weight"):
        check_weights_changed(model, before, tmp_path)
    with torch.no_grad():
        model.weight.add_(1)
    save_file({"base_model.model.layer.lora_A.weight": torch.ones(2, 2),
               "base_model.model.layer.lora_B.weight": torch.zeros(2, 2)}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ModelError, match="1 of 1 saved LoRA B matrices are all zeros"):
        check_weights_changed(model, before, tmp_path)


def test_deepspeed_config_and_launch():
    config = deepspeed_config({"deepspeed": "zero3", "offload": True, "batch_size": 2,
                               "gradient_accumulation_steps": 4, "gpus": 4})
    assert config["train_batch_size"] == 2 * 4 * 4
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 4
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"]
    assert "offload_param" not in deepspeed_config({"deepspeed": "zero2", "offload": True})["zero_optimization"]
    assert launch_command("train.py", ["--x"], 1) == [sys.executable, "train.py", "--x"]
    command = launch_command("train.py", ["--x"], 4)
    assert "torch.distributed.run" in command and "--nproc_per_node=4" in command and command[-2:] == ["train.py", "--x"]


SLOW_TRAIN = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
import vidtune.train as t
get = t.EncodedDataset.__getitem__
t.EncodedDataset.__getitem__ = lambda self, i: (time.sleep(float(sys.argv[4])), get(self, i))[1]
t.train(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
        {"epochs": 6, "learning_rate": 2e-3, "batch_size": 2, "save_steps": 3, "save_total_limit": 2,
         "lora": {"dropout": 0.0}}, log=Path(sys.argv[3]) / "train.log")
"""


def _start(meta, tiny, out, delay):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, str(meta), str(tiny), str(out), str(delay)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_resume_after_sigkill_and_checkpoint_on_sigterm(tiny, meta, tmp_path):
    # 8 samples, batch 2 -> 4 steps an epoch, 24 steps; checkpoints every 3.
    first = _start(meta, tiny, tmp_path, 0.15)
    _wait_for(tmp_path / "checkpoints" / "checkpoint-3" / COMPLETE_MARKER, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    half_written = tmp_path / "checkpoints" / "checkpoint-999"
    half_written.mkdir()
    (half_written / "trainer_state.json").write_text("{")

    second = _start(meta, tiny, tmp_path, 0.15)
    _wait_for(tmp_path / "checkpoints" / "checkpoint-6" / COMPLETE_MARKER, second)
    second.send_signal(signal.SIGTERM)  # SLURM's time-limit warning: checkpoint now, then exit
    assert second.wait(timeout=120) == 128 + signal.SIGTERM
    log = (tmp_path / "train.log").read_text()
    assert "resuming from" in log and "checkpoint-3" in log and "removing half-written" in log
    stopped = max(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert stopped >= 6 and (tmp_path / "checkpoints" / f"checkpoint-{stopped}" / COMPLETE_MARKER).is_file()
    assert not (tmp_path / "final").exists()

    third = _start(meta, tiny, tmp_path, 0.0)
    assert third.wait(timeout=300) == 0, third.stderr.read()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["resumed_from"]["step"] == stopped
    assert summary["resumed_from"]["optimizer_step"] == stopped  # Adam's state came back with the checkpoint
    assert summary["steps"] == 24 and summary["steps_this_run"] == 24 - stopped
    steps = [entry["step"] for entry in json.loads((tmp_path / "loss.json").read_text())]
    assert steps == list(range(1, 25))
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()


def test_repeat_time_follows_internvl():
    from vidtune.train import repeat_records

    records = [{"id": str(index)} for index in range(10)]
    assert len(repeat_records(records, 2, seed=0)) == 20
    half = repeat_records(records, 0.5, seed=0)
    assert len(half) == 5 and half == repeat_records(records, 0.5, seed=0)
    assert len(repeat_records(records, 1.3, seed=0)) == 13


def test_progress_is_a_line_every_few_percent_and_every_record_in_the_log(caplog):
    """The terminal gets step/total, loss, samples/s and time left every 5%; the log keeps each step."""
    stream = io.StringIO()
    progress = ProgressLine(logging.getLogger("test.progress"), stream=stream)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1)
    state = SimpleNamespace(global_step=0, max_steps=900, is_world_process_zero=True)
    progress.on_train_begin(args, state, None)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for step in range(1, 901):
            state.global_step = step
            progress.on_log(args, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-4, "epoch": step / 90})
    lines = stream.getvalue().splitlines()
    assert 19 <= len(lines) <= 21 and lines[-1].startswith("training: step 900/900 (100%), loss 0.0011, ")
    assert " samples/s, " in lines[0] and lines[0].endswith(" left")
    assert len([r for r in caplog.records if r.name == "test.progress"]) == 900
