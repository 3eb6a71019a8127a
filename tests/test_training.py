"""Training on CPU with the tiny model: each method learns, QLoRA quantises, resume and signals work."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
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
from vidtune.internvl_format import frame_lines
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.train import train
from vidtune.training.checkpoints import COMPLETE_MARKER
from vidtune.training.data import repeat_records, training_items
from vidtune.training.launch import deepspeed_config, launch_command
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.training.model import check_weights_changed, lora_target_modules
from vidtune.training.progress import ProgressLine
from vidtune.training.settings import TrainingSettings

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
    settings = json.loads((final / "vidtune.json").read_text())["datasets"]["synthetic"]
    assert settings["prompt"] == "Describe the video." and settings["frames"]["num_frames"] == 2
    assert (final / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "runs").iterdir())
    for key in ("samples_per_s", "tokens_per_s", "peak_memory_gib", "trainable_params"):
        assert summary[key] > 0
    assert summary["weights_check"]["unchanged_tensors"] == 0
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 8
    # The defaults: vision tower frozen; projector fully and language model (adapters or fully) trained.
    parts = summary["trainable_parameters"]
    assert parts["vision"] == 0 and parts["projector"] > 0 and parts["language"] > 0
    assert sum(parts.values()) == summary["trainable_params"] < summary["total_params"]
    assert summary["family"] == "internvl"


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_frozen_parts_get_no_weight_adapter_or_optimizer_state(method, tiny, meta, tmp_path):
    """Only the vision tower trains (through adapters under LoRA): the projector and the language model get
    no trainable weight, no adapter and no optimizer state."""
    only_vision = {"freeze_vision": False, "freeze_projector": True, "freeze_language": True}
    if method != "full":
        only_vision["lora"] = {**FAST["lora"], "vision": True}
    summary = train(meta, tiny, tmp_path, {**FAST, "epochs": 1, "save_steps": 1, "method": method, **only_vision})
    parts = summary["trainable_parameters"]
    assert parts["vision"] > 0 and parts["projector"] == parts["language"] == parts["other"] == 0
    if method != "full":
        from safetensors import safe_open

        with safe_open(tmp_path / "final" / "adapter_model.safetensors", "pt") as handle:
            saved = list(handle.keys())
        assert saved and all(".vision_tower." in key for key in saved)
    optimizer = torch.load(tmp_path / "checkpoints" / "checkpoint-1" / "optimizer.pt", weights_only=False)
    in_optimizer = sum(len(group["params"]) for group in optimizer["param_groups"])
    assert in_optimizer == summary["weights_check"]["trainable_tensors"] == len(optimizer["state"])


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

    model = load_model(tiny)
    targets = lora_target_modules(model, INTERNVL)
    assert targets and all(name.startswith("model.language_model.") for name in targets)
    assert {name.rsplit(".", 1)[1] for name in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj"}
    assert any(".vision_tower." in name for name in lora_target_modules(model, INTERNVL, vision=True))
    assert all(".vision_tower." in name for name in lora_target_modules(model, INTERNVL, language=False, vision=True))


def test_both_video_forms_give_the_same_items_from_any_working_directory(meta, tmp_path, monkeypatch):
    """A frame folder (``video``) and a frame list (``image`` + ``Frame-<i>: <image>`` lines) train alike;
    meta.json's relative root and annotation are read from meta.json's folder, not the working directory."""
    listed_meta = write_frame_list_copy(meta, tmp_path)
    monkeypatch.chdir("/")

    def described(meta_path):
        items, _ = training_items(meta_path, 0, _log())
        return [(i.id, i.media_type, [p.resolve() for p in i.paths], i.prompt, i.target) for i in items]

    assert described(listed_meta) == described(meta)
    assert any(media_type == "video" for _, media_type, *_ in described(meta))


def write_frame_list_copy(meta: Path, out: Path) -> Path:
    """The dataset of ``meta`` with its frame-folder records rewritten as frame lists, in ``out``."""
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
    (out / "listed.jsonl").write_text("".join(json.dumps(record) + "\n" for record in listed))
    entry = {**json.loads(meta.read_text())["synthetic"], "annotation": "listed.jsonl",
             "root": os.path.relpath(folder, out) + "/"}
    (out / "meta.json").write_text(json.dumps({"synthetic": entry}))
    return out / "meta.json"


def test_training_stops_at_a_record_it_cannot_load(meta, tmp_path):
    """Training does not check records again, but one whose media went missing after the check fails naming
    it rather than being skipped."""
    copy = write_frame_list_copy(meta, tmp_path)
    lines = (tmp_path / "listed.jsonl").read_text().splitlines()
    broken = json.loads(lines[0])
    broken["image"] = ["gone.jpg"] * len(broken["image"]) if isinstance(broken["image"], list) else "gone.jpg"
    (tmp_path / "listed.jsonl").write_text("\n".join([json.dumps(broken), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=f"media not found.*{broken['id']}|{broken['id']}.*media not found"):
        training_items(copy, 0, _log())


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
    config = deepspeed_config(TrainingSettings.from_config({"deepspeed": "zero3", "offload": True, "gpus": 4}))
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"]
    assert config["train_batch_size"] == "auto"  # the Trainer fills it (tests/test_deepspeed.py)
    assert launch_command("train.py", ["--x"], 1) == [sys.executable, "train.py", "--x"]
    command = launch_command("train.py", ["--x"], 4)
    assert "torch.distributed.run" in command and "--nproc_per_node=4" in command and command[-2:] == ["train.py", "--x"]


def test_settings_are_typed_and_take_the_schemas_defaults():
    settings = TrainingSettings.from_config({"method": "qlora", "lora": {"rank": 4}})
    assert settings.method == "qlora" and settings.lora.rank == 4 and settings.lora.alpha == 32
    assert settings.max_seq_length == 8192 and settings.processes_per_node == 1
    with pytest.raises(Exception, match="unknown training settings \\['lora_rank'\\]"):
        TrainingSettings.from_config({"lora_rank": 4})


SLOW_TRAIN = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
import vidtune.train as t
from vidtune.training.data import EncodedDataset
get = EncodedDataset.__getitem__
EncodedDataset.__getitem__ = lambda self, i: (time.sleep(float(sys.argv[4])), get(self, i))[1]
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


def test_resume_from_a_checkpoint_of_the_last_step_trains_nothing_more(tiny, meta, tmp_path):
    """A job killed after its last checkpoint, before final/: the rerun finishes from that checkpoint. Here
    max_steps (3) ends inside an epoch (4 steps), where the Trainer would otherwise train a step 4."""
    settings = {**FAST, "batch_size": 2, "max_steps": 3, "save_steps": 3}
    first = train(meta, tiny, tmp_path, settings)
    assert first["steps"] == 3 and (tmp_path / "checkpoints" / "checkpoint-3" / COMPLETE_MARKER).is_file()
    adapter = (tmp_path / "final" / "adapter_model.safetensors").read_bytes()
    for output in ("final", "train_summary.json", "loss.json"):  # what the killed job had not written yet
        path = tmp_path / output
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    again = train(meta, tiny, tmp_path, settings)
    assert again["resumed_from"]["step"] == 3
    assert again["steps"] == 3 and again["steps_this_run"] == 0
    assert [entry["step"] for entry in json.loads((tmp_path / "loss.json").read_text())] == [1, 2, 3]
    assert (tmp_path / "final" / "adapter_model.safetensors").read_bytes() == adapter


def test_repeat_time_follows_internvl():
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
    state = SimpleNamespace(global_step=0, max_steps=900, is_world_process_zero=True, num_input_tokens_seen=0)
    progress.on_train_begin(args, state, None)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for step in range(1, 901):
            state.global_step = step
            progress.on_log(args, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-4, "epoch": step / 90})
    lines = stream.getvalue().splitlines()
    assert 19 <= len(lines) <= 21 and lines[-1].startswith("training: step 900/900 (100%), loss 0.0011, ")
    assert " samples/s, " in lines[0] and lines[0].endswith(" left")
    assert len([r for r in caplog.records if r.name == "test.progress"]) == 900
