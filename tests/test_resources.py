"""Job requests sized from the work (vidtune.resources): the model's size before it is built, memory from it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import InternVLForConditionalGeneration

from conftest import TRAINING_TEST_MODEL
from vidtune import resources
from vidtune.config import schema_defaults
from vidtune.tiny_model import (ARCHITECTURES, INTERNVL3_CHAT_TEMPLATE, INTERNVL3_SPECIAL_TOKENS, VOCAB_SIZE,
                                architecture_config, build_tokenizer, model_config)


def built_parameters(config) -> int:
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in InternVLForConditionalGeneration(config).parameters())


@pytest.mark.parametrize("settings", [{"name": "internvl3-1b", "text_layers": 2, "vision_layers": 2},
                                      {"name": "internvl3-8b", "text_layers": 1, "vision_layers": 1,
                                       "vocab_size": 4096},
                                      {"name": "internvl3-2b"}])
def test_architecture_parameters_are_what_transformers_builds(settings):
    settings = {**schema_defaults("architecture"), **settings}
    tokenizer = build_tokenizer(8192, INTERNVL3_SPECIAL_TOKENS, INTERNVL3_CHAT_TEMPLATE)
    expected = built_parameters(architecture_config(settings, tokenizer))
    assert resources.internvl_parameters(*resources.architecture_dims(settings)) == expected


def test_published_shapes_are_the_builders():
    for name, published in ARCHITECTURES.items():
        text, vision = resources.architecture_dims({"name": name})
        assert {key: published["text"][key] for key in resources.PUBLISHED_TEXT[name]} == resources.PUBLISHED_TEXT[name]
        assert {key: published["vision"][key] for key in resources.INTERNVIT_300M} == resources.INTERNVIT_300M
        assert text["vocab_size"] == published["text"]["vocab_size"]
    assert resources.TINY_VOCABULARY == VOCAB_SIZE


@pytest.mark.parametrize("settings", [{}, TRAINING_TEST_MODEL])
def test_tiny_parameters_bound_what_transformers_builds(settings):
    """The tokenizer of a tiny model has at most VOCAB_SIZE tokens: the count is an upper bound, close to it."""
    settings = {**schema_defaults("tiny_model"), **settings}
    built = built_parameters(model_config(settings, build_tokenizer()))
    counted = resources.internvl_parameters(*resources.tiny_dims(settings))
    assert built <= counted <= built * 1.15


def test_model_size_of_a_folder_and_of_a_build(tiny, tmp_path):
    weights = sum(path.stat().st_size for path in tiny.glob("*.safetensors"))
    vocab = json.loads((tiny / "config.json").read_text())["text_config"]["vocab_size"]
    assert weights > 0
    assert resources.model_size({"path": str(tiny)}, tiny) == resources.ModelSize(weights, 4, vocab)  # float32
    assert resources.largest_weight_file_bytes(tiny) == max(p.stat().st_size for p in tiny.glob("*.safetensors"))
    built = resources.model_size({"tiny": TRAINING_TEST_MODEL}, tmp_path / "not built yet")
    assert built.dtype_bytes == 4 and weights * 0.9 < built.weight_bytes < weights * 1.2  # the file has a header
    eight_b = resources.model_size({"architecture": {"name": "internvl3-8b"}}, tmp_path)
    assert eight_b.dtype_bytes == 2 and 15e9 < eight_b.weight_bytes < 17e9  # 8B parameters in bf16
    assert eight_b.vocab_size == resources.PUBLISHED_VOCABULARY
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"dtype": "float32", "vocab_size": 4096}}))
    assert resources.folder_size(tmp_path) == resources.ModelSize(0, 4, 4096)


TINY = resources.ModelSize(1_100_000, 4, 653)
EIGHT_B = resources.ModelSize(16 * 10**9, 2, resources.PUBLISHED_VOCABULARY)


def test_memory_has_a_floor_grows_with_the_model_and_on_a_retry():
    merge = resources.MEMORY["merge"]
    assert resources.memory_mb("merge", TINY) >= resources.FLOOR_MB
    assert resources.memory_mb("merge", TINY) < 1.5 * merge.fixed_mb  # a tiny model needs the fixed cost only
    # An 8B merge: the model, one 2 GB shard being written, and the logit check at the full vocabulary.
    expected = merge.fixed_mb + 16e9 / 2**20 + 2048 + merge.activation_mb
    assert resources.memory_mb("merge", EIGHT_B) == pytest.approx(expected, abs=1)
    assert resources.memory_mb("merge", EIGHT_B, attempt=2) == pytest.approx(
        expected * resources.RETRY_FACTOR, abs=resources.RETRY_FACTOR)
    assert resources.memory_mb("check_training_data", EIGHT_B) == resources.MEMORY["check_training_data"].fixed_mb
    for kind in resources.MEMORY:
        assert resources.memory_mb(kind, TINY) <= resources.memory_mb(kind, EIGHT_B)


def test_full_finetuning_adds_the_optimizer_where_it_is_in_host_memory():
    size, training = resources.ModelSize(4 * 10**9, 2, 151674), {"method": "full", "gpus": 0, "offload": False}
    lora = resources.train_memory_mb(size, {**training, "method": "lora"})
    cpu_full = resources.train_memory_mb(size, training)
    assert cpu_full - lora == pytest.approx(16 * size.weight_bytes / 2 / 2**20, abs=1)
    assert resources.train_memory_mb(size, {**training, "gpus": 1}) == lora
    assert resources.train_memory_mb(size, {**training, "gpus": 1, "offload": True}) == cpu_full


def test_streaming_memory_follows_the_largest_file():
    assert resources.streaming_memory_mb(0) == resources.STREAM_FIXED_MB
    # The measured 8B conversion (4.08 GB shards) peaked at 7.3 GB: the request covers it.
    assert resources.streaming_memory_mb(int(4.08e9)) * resources.MB > 7.3e9
    assert resources.streaming_memory_mb(5 * 2**30) == resources.STREAM_FIXED_MB + 3 * 5 * 1024
    assert resources.streaming_memory_mb(5 * 2**30, attempt=2) == 2 * (resources.STREAM_FIXED_MB + 15 * 1024)


# --- Time limits ----------------------------------------------------------------------------------------------

def training(**settings) -> dict:
    return {**schema_defaults("training"), **settings}


def test_training_data_from_the_files_that_exist(tmp_path):
    lengths = [tmp_path / "a_lengths.json", tmp_path / "b_lengths.json"]
    records = [tmp_path / "a_train.jsonl", tmp_path / "b_train.jsonl"]
    assert resources.training_data(lengths, records) == resources.TrainingData(None, None)
    for path, count in zip(records, (3, 2)):
        path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(count)))
    assert resources.training_data(lengths, records) == resources.TrainingData(5, None)  # records, no tokens
    lengths[0].write_text(json.dumps([100, 200]))
    assert resources.training_data(lengths, records).tokens is None  # one dataset is not checked yet
    lengths[1].write_text(json.dumps([300]))
    assert resources.training_data(lengths, records) == resources.TrainingData(3, 600)  # the checked ones


def test_runtime_from_the_steps():
    # The demo's run as measured (its train_summary.json): 21 samples of 133 tokens, 150 epochs of 6 steps.
    data = resources.TrainingData(samples=21, tokens=21 * 133)
    demo = training(epochs=150, batch_size=4)
    tiny = resources.ModelSize(338_240 * 4, 4, 1024)
    step = resources.train_step_seconds(tiny, 3.5 * 133, 1, False, demo)
    assert step == pytest.approx(resources.STEP_OVERHEAD_S["cpu"] + 3.5 * 133 * 338_240 * 1.5e-10)
    startup = resources.STARTUP_S + tiny.weight_bytes / resources.STARTUP_READ_BYTES_PER_S
    needed = resources.train_runtime_needed_min(tiny, demo, data)
    assert needed == math.ceil(resources.RUNTIME_MARGIN * (startup + 900 * step) / 60)
    assert needed * 60 > 921 + startup  # the measured 921 s of training fit, with the margin on top
    # Twice the epochs, about twice the time; max_steps counts instead of the epochs.
    assert resources.train_runtime_needed_min(tiny, {**demo, "epochs": 300}, data) > 1.8 * needed
    assert resources.train_runtime_needed_min(tiny, {**demo, "max_steps": 90}, data) < needed / 3
    # An 8B model on GPUs: the tokens x parameters term; four GPUs share a step's tokens; full costs more.
    big = resources.TrainingData(samples=10_000, tokens=10_000 * 2_000)
    one_gpu = resources.train_runtime_needed_min(EIGHT_B, training(gpus=1), big)
    seconds = 8e9 * 2e7 * 4 / 80e12 + 10_000 * resources.STEP_OVERHEAD_S["gpu"] + 120 + 16e9 / 200e6
    assert one_gpu == pytest.approx(resources.RUNTIME_MARGIN * seconds / 60, rel=0.01)
    four_gpus = resources.train_runtime_needed_min(EIGHT_B, training(gpus=4), big)
    assert one_gpu / 4 < four_gpus < one_gpu / 3.5  # the start-up and the steps' fixed part are not shared
    half_the_tokens_term = resources.RUNTIME_MARGIN * 0.5 * 8e9 * 2e7 * 4 / 80e12 / 60
    for costlier in ({"method": "full"}, {"gradient_checkpointing": True}):  # 1.5 x the tokens term
        assert resources.train_runtime_needed_min(EIGHT_B, training(gpus=1, **costlier), big) == \
            pytest.approx(one_gpu + half_the_tokens_term, abs=1)
    assert 1000 * one_gpu < resources.train_runtime_needed_min(EIGHT_B, training(gpus=0), big)  # a CPU


def test_runtime_before_the_data_exists():
    unknown = resources.TrainingData(None, None)
    assert resources.train_runtime_needed_min(TINY, training(), unknown) == resources.UNKNOWN_DATA_RUNTIME_MIN
    # max_steps needs no sample count: max_seq_length tokens a sample are assumed.
    steps = resources.train_runtime_needed_min(EIGHT_B, training(gpus=1, max_steps=1000), unknown)
    startup = resources.STARTUP_S + EIGHT_B.weight_bytes / resources.STARTUP_READ_BYTES_PER_S
    assert steps == math.ceil(resources.RUNTIME_MARGIN / 60 * (
        startup + 1000 * resources.train_step_seconds(EIGHT_B, 8192, 1, True, training())))
    # records known but not their tokens: max_seq_length each, an upper bound
    counted = resources.TrainingData(1000, None)
    assert resources.train_runtime_needed_min(EIGHT_B, training(gpus=1), counted) > \
        resources.train_runtime_needed_min(EIGHT_B, training(gpus=1), resources.TrainingData(1000, 1000 * 2000))


def test_runtime_floor_retry_cap_and_override():
    data = resources.TrainingData(8, 8 * 100)
    assert resources.train_runtime_needed_min(TINY, training(max_steps=3), data) == resources.RUNTIME_FLOOR_MIN
    big = resources.TrainingData(100_000, 100_000 * 2_000)
    first = resources.train_runtime_min(EIGHT_B, training(gpus=1), big)
    assert first > 600
    assert resources.train_runtime_min(EIGHT_B, training(gpus=1), big, attempt=2) == first * resources.RETRY_FACTOR
    assert resources.train_runtime_min(EIGHT_B, training(gpus=1), big, attempt=2, limit_min=240) == 240
    assert resources.train_runtime_min(TINY, training(max_steps=3), data, limit_min=240) == resources.RUNTIME_FLOOR_MIN
    # training.runtime_min as a number overrides the computation (old configs keep their limit), still capped.
    assert resources.train_runtime_min(EIGHT_B, training(gpus=1, runtime_min=720), big) == 720
    assert resources.train_runtime_min(EIGHT_B, training(runtime_min=720), big, limit_min=240) == 240
    assert schema_defaults("training")["runtime_min"] == "auto"
