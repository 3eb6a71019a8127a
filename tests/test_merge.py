"""Merging: the merged folder loads on its own and answers like the adapter; a damaged adapter fails loudly."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from vidtune.errors import ModelError
from vidtune.merge import merge
from vidtune.modeling import load_processor
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.atomic import read_jsonl
from vidtune.train import train

torch.set_num_threads(1)
QUICK = {"max_steps": 3, "learning_rate": 5e-3, "batch_size": 2, "save_steps": 100, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    meta = write_synthetic_dataset(data, 4, num_frames=2, size=32, images=1)
    return tiny, meta, data, read_jsonl(data / "train.jsonl")


@pytest.fixture(scope="module")
def adapter(setup, tmp_path_factory):
    base, meta, _, _ = setup
    out = tmp_path_factory.mktemp("lora")
    train(meta, base, out, {**QUICK, "method": "lora"})
    return out / "final"


def test_merged_lora_matches_adapter_and_loads_standalone(setup, adapter, tmp_path):
    base, _, data, records = setup
    check = merge(base, adapter, tmp_path / "merged", records, data)
    assert check["passed"] and check["max_abs_logit_difference"] <= check["allowed_difference"]
    assert len(check["records"]) == 3 and check["allowed_difference"] < 1e-2
    merged = tmp_path / "merged"
    assert json.loads((merged / "merge_check.json").read_text()) == check
    model = AutoModelForImageTextToText.from_pretrained(merged)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert load_processor(merged).tokenizer.chat_template
    assert (merged / "generation_config.json").is_file() and (merged / "vidtune.json").is_file()
    # The merge really carried the training: the merged weights differ from the base's.
    merged_weights, base_weights = load_file(merged / "model.safetensors"), load_file(base / "model.safetensors")
    assert any(not torch.equal(merged_weights[key], base_weights[key]) for key in base_weights)


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_qlora_and_full_merge(method, setup, tmp_path):
    base, meta, data, records = setup
    train(meta, base, tmp_path / "run", {**QUICK, "method": method})
    check = merge(base, tmp_path / "run" / "final", tmp_path / "merged", records, data)
    assert check["passed"] and check["source"] == ("full" if method == "full" else "adapter")


def test_corrupted_adapter_fails_loudly(setup, adapter, tmp_path):
    base, _, data, records = setup
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated file
    with pytest.raises(ModelError, match="adapter"):
        merge(base, broken, tmp_path / "out1", records, data)
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({key.replace("q_proj", "k_proj_renamed"): value for key, value in tensors.items()}, weights)
    with pytest.raises(ModelError, match="don't match the base"):
        merge(base, broken, tmp_path / "out2", records, data)
    key = next(key for key in tensors if "lora_B" in key)
    save_file({**tensors, key: torch.full_like(tensors[key], float("nan"))}, weights)
    with pytest.raises(ModelError, match="NaN"):
        merge(base, broken, tmp_path / "out3", records, data)
    assert not any((tmp_path / name).exists() for name in ("out1", "out2", "out3"))


def test_merge_check_fails_beyond_tolerance(setup, adapter, tmp_path):
    base, _, data, records = setup
    with pytest.raises(ModelError, match="differ from the trained model's"):
        merge(base, adapter, tmp_path / "merged", records, data, tolerance=-1.0)
    assert not (tmp_path / "merged").exists()
