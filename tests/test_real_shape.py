"""The real path at the real shape: an InternVL3-1B architecture (random weights, 2 text layers, 1 vision layer,
a 4096-token vocabulary) on real 448-pixel frames, 8 per clip, through the whole workflow on the CPU.

What the tiny 64-pixel model cannot show: 256 visual tokens per tile, about 2,100 tokens per sample, the
released chat template, max_seq_length biting at that size, and QLoRA quantising the real layer set.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from PIL import Image

from conftest import Workflow, load_default_config
from vidtune.atomic import read_jsonl
from vidtune.check_training_data import check_record
from vidtune.internvl_format import record_media_paths, record_text
from vidtune.families import Media
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.modeling import load_images, load_model, load_processor, load_record_media
from vidtune.training.model import lora_target_modules, prepare_model
from vidtune.training.settings import TrainingSettings

torch.set_num_threads(1)
FRAMES = 8
TOKENS_PER_TILE = 256
ARCHITECTURE = {"name": "internvl3-1b", "text_layers": 2, "vision_layers": 1, "vocab_size": 4096}


def real_shape_config() -> dict:
    config = load_default_config()
    config["demo"] = {"num_videos": 6, "seconds": 1, "size": 448, "fps": 10}
    dataset = config["datasets"]["demo"]
    dataset["frames"] = {"policy": "uniform", "num_frames": FRAMES, "short_side": 448}
    dataset["shards"] = 1
    # 4 clips train, 2 test: one batch of 2 for each prediction, the slowest steps here (bf16 on a CPU).
    dataset["split"] = {"train": 0.8, "val": 0.0, "test": 0.2, "seed": 0}
    config["models"] = {"internvl3-1b-2l": {"architecture": ARCHITECTURE}}
    config["runs"] = {"real": {
        "datasets": ["demo"], "model": "internvl3-1b-2l",
        "training": {"method": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}, "max_steps": 2,
                     "batch_size": 1, "learning_rate": 1e-3, "save_steps": 100, "warmup_ratio": 0.0},
        "evaluation": {"max_new_tokens": 4, "batch_size": 2}}}
    return config


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Workflow:
    workflow = Workflow(tmp_path_factory.mktemp("real") / "work", real_shape_config())
    workflow.snakemake("train_all", timeout=1500)
    return workflow


def test_workflow_runs_end_to_end_at_the_real_shape(real_run):
    config = json.loads(real_run.path("results/models/internvl3-1b-2l/config.json").read_text())
    assert config["vision_config"]["image_size"] == [448, 448] and config["vision_config"]["patch_size"] == [14, 14]
    assert config["image_seq_length"] == TOKENS_PER_TILE and config["downsample_ratio"] == 0.5
    assert config["text_config"]["hidden_size"] == 896 and config["text_config"]["num_hidden_layers"] == 2
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    summary = json.loads(real_run.path("results/runs/real/train/train_summary.json").read_text())
    assert summary["steps"] == 2
    checked = json.loads(real_run.path("results/runs/real/training_data/demo/summary.json").read_text())
    assert checked["rejected"] == 0 and checked["accepted"] == summary["num_samples"]
    assert checked["tokens"]["longest"] > FRAMES * TOKENS_PER_TILE  # the visual tokens are counted
    check = json.loads(real_run.path("results/runs/real/merged/merge_check.json").read_text())
    assert check["passed"] and check["dtype"] == "bfloat16" and check["device"] == "cpu"
    metrics = json.loads(real_run.path("results/runs/real/metrics.json").read_text())
    assert metrics  # scored base and finetuned on the same samples
    logs = list(real_run.path("results/logs/predict").glob("*/*/**/*.log"))
    assert len(logs) == 2 and all("predicting on cpu in bfloat16" in log.read_text() for log in logs)
    print(f"real-shape training: {summary['train_seconds'] / summary['steps']:.1f} s/step, "
          f"{summary['tokens_per_s']} tokens/s, peak {summary['peak_memory_gib']:.2f} GiB "
          f"({summary['peak_memory_kind']})")


def _train_records(workflow):
    path = workflow.path("results/datasets/demo/internvl/train.jsonl")
    return read_jsonl(path), workflow.path("results")  # record paths are relative to the results folder


def test_visual_tokens_per_sample_and_max_seq_length_at_448(real_run):
    processor = load_processor(real_run.path("results/models/internvl3-1b-2l"))
    assert processor.tokenizer.chat_template.startswith("{% for message in messages %}")
    records, root = _train_records(real_run)
    record = records[0]
    text = record_text(record)
    media = load_record_media(record, root, 6)
    assert len(media.frames) == FRAMES and min(media.frames[0].size) == 448
    sample = INTERNVL.encode(processor, media, text.prompt, text.target)
    context = int((sample["input_ids"] == processor.tokenizer.context_image_token_id).sum())
    assert context == FRAMES * TOKENS_PER_TILE
    assert tuple(sample["pixel_values"].shape) == (FRAMES, 3, 448, 448)
    length = len(sample["input_ids"])
    rendered = INTERNVL.render(processor, text.prompt, media, text.target)
    assert rendered.startswith("<|im_start|>user\nFrame1: <IMG_CONTEXT>\n")

    # A limit between 5 and 6 frames' worth: truncate_frames keeps the most frames that fit, drop drops.
    per_frame = TOKENS_PER_TILE + 2 + len(processor.tokenizer("Frame1: \n")["input_ids"])
    limit = length - 2 * per_frame - 1
    checked = check_record(INTERNVL, processor, record, root, 6, limit, "truncate_frames", "train.jsonl")
    paths = record_media_paths(checked.record, root)
    assert 1 < len(paths) < FRAMES and checked.tokens <= limit and "truncated" in checked.reason
    kept = INTERNVL.encode(processor, Media(load_images(paths)), text.prompt, text.target)
    assert len(kept["input_ids"]) == checked.tokens  # the check counts exactly what training encodes
    assert len(INTERNVL.encode(processor, Media(load_images(paths[:1] * (len(paths) + 1))), text.prompt,
                               text.target)["input_ids"]) > limit  # one frame more would not fit
    dropped = check_record(INTERNVL, processor, record, root, 6, limit, "drop", "train.jsonl")
    assert dropped.record is None and dropped.reason.startswith("over_length: ")


def test_images_are_tiled_dynamically(real_run, tmp_path):
    processor = load_processor(real_run.path("results/models/internvl3-1b-2l"))
    wide = Image.new("RGB", (896, 448), (200, 30, 30))
    sample = INTERNVL.encode(processor, Media([wide], "image", None, 6), "Describe the image.")
    tiles = sample["pixel_values"].shape[0]
    assert tiles == 3  # two 448-pixel tiles plus the thumbnail
    assert int((sample["input_ids"] == processor.tokenizer.context_image_token_id).sum()) == tiles * TOKENS_PER_TILE


def test_qlora_quantises_the_real_layer_set(real_run):
    import bitsandbytes as bnb

    model_dir = real_run.path("results/models/internvl3-1b-2l")
    model = prepare_model(model_dir, TrainingSettings.from_config({"method": "qlora", "lora": {"rank": 8}}),
                          __import__("logging").getLogger("test"))
    quantised = {name.removeprefix("base_model.model.").rsplit(".", 1)[0] if name.endswith(".base_layer")
                 else name.removeprefix("base_model.model.")
                 for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    expected = set(lora_target_modules(load_model(model_dir), INTERNVL))
    assert quantised == expected and len(expected) == 2 * 7  # q k v o gate up down in each text layer
    assert not any(part in name for name in quantised
                   for part in ("vision_tower", "multi_modal_projector", "lm_head"))
