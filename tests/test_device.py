"""Device and dtype: prediction and merging put the model and every batch on the job's device.

No GPU is needed: the choice is a pure function, and the placement is checked by making the job's device
the CPU in bf16 (what a GPU job does with cuda:0).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

import vidtune.merge
import vidtune.predict
from vidtune.merge import merge
from vidtune.modeling import checkpoint_dtype, choose_device, load_adapter_model
from vidtune.predict import Predictor
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.atomic import read_jsonl
from vidtune.train import train

torch.set_num_threads(1)


@pytest.mark.parametrize("gpus, checkpoint, bf16, expected", [
    (0, torch.float32, False, ("cpu", torch.float32)),           # CPU: as today, the checkpoint's dtype
    (0, torch.bfloat16, False, ("cpu", torch.bfloat16)),
    (1, torch.bfloat16, True, ("cuda:0", torch.bfloat16)),       # the job's GPU, in bf16 where supported
    (4, torch.float32, True, ("cuda:0", torch.bfloat16)),
    (1, torch.bfloat16, False, ("cuda:0", torch.float32)),       # no bf16 (V100): never bf16 in fp16
    (1, torch.float16, False, ("cuda:0", torch.float16)),
])
def test_choose_device(gpus, checkpoint, bf16, expected):
    assert choose_device(gpus, checkpoint, bf16) == expected


def test_checkpoint_dtype_and_adapter_base_dtype(tiny, tmp_path):
    assert checkpoint_dtype(tiny) == torch.float32
    config = json.loads((tiny / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert checkpoint_dtype(tmp_path) == torch.bfloat16
    assert checkpoint_dtype(tmp_path / "missing") == torch.float32


@pytest.fixture(scope="module")
def adapter_run(tiny, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    meta = write_synthetic_dataset(data, 4, num_frames=2, size=32, images=1)
    out = tmp_path_factory.mktemp("lora")
    train(meta, tiny, out, {"method": "lora", "max_steps": 2, "batch_size": 2, "save_steps": 100,
                            "learning_rate": 5e-3, "warmup_ratio": 0.0})
    return out / "final", data, read_jsonl(data / "train.jsonl")


def _job_on(device: str, dtype: torch.dtype):
    return lambda path: (device, dtype)


def test_predictor_puts_model_and_batch_on_the_job_device(tiny, adapter_run, monkeypatch):
    adapter, data, records = adapter_run
    monkeypatch.setattr(vidtune.predict, "job_device", _job_on("cpu", torch.bfloat16))
    for adapter_dir in (None, adapter):
        predictor = Predictor(tiny, adapter_dir, {"max_new_tokens": 3, "batch_size": 2})
        assert (predictor.device, predictor.dtype) == ("cpu", torch.bfloat16)
        base = predictor.model.get_base_model() if adapter_dir else predictor.model
        assert base.dtype == torch.bfloat16 and base.device.type == "cpu"
        seen = []
        generate = predictor.model.generate

        def spy(**batch):
            seen.append({key: (value.device.type, value.dtype) for key, value in batch.items()
                         if isinstance(value, torch.Tensor)})
            return generate(**batch)

        monkeypatch.setattr(predictor.model, "generate", spy)
        samples = [(vidtune.predict.load_record_media(record, data, 1), "Describe the video.")
                   for record in records[:3]]
        answers = predictor.answer(samples)
        assert len(answers) == 3 and len(seen) == 2  # two batches of at most 2
        for batch in seen:
            assert batch["pixel_values"] == ("cpu", torch.bfloat16)
            assert batch["input_ids"] == ("cpu", torch.int64)


def test_merge_runs_on_the_job_device_in_the_checkpoint_dtype(tiny, adapter_run, tmp_path, monkeypatch):
    """A bf16 checkpoint merges in bf16 (half an fp32 merge's memory) and passes the bf16 logit check."""
    adapter, data, records = adapter_run
    monkeypatch.setattr(vidtune.merge, "job_device", _job_on("cpu", torch.bfloat16))
    monkeypatch.setattr(vidtune.merge, "checkpoint_dtype", lambda path: torch.bfloat16)
    loaded = []
    real_load = vidtune.merge.load_adapter_model

    def spy(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded.append((model.get_base_model().dtype, kwargs.get("device")))
        return model

    monkeypatch.setattr(vidtune.merge, "load_adapter_model", spy)
    check = merge(tiny, adapter, tmp_path / "merged", records, data)
    assert loaded == [(torch.bfloat16, "cpu")]
    assert check["passed"] and (check["device"], check["dtype"]) == ("cpu", "bfloat16")
    assert check["tolerance"] == vidtune.merge.TOLERANCES[torch.bfloat16]
    assert checkpoint_dtype(tmp_path / "merged") == torch.bfloat16


def test_adapter_model_loads_in_the_checkpoint_dtype_by_default(tiny, adapter_run):
    adapter, _, _ = adapter_run
    model = load_adapter_model(tiny, adapter)
    assert model.get_base_model().dtype == checkpoint_dtype(tiny)
