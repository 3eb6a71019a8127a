"""The Qwen3-VL family: a clip as one video whose frame times are written into the prompt, every processor
tensor reaching the model (training and generate), token counts without pixels, packed rows equal to
unpacked samples, each method training and merging on the tiny build, and one step at the real
Qwen3-VL-2B width."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from PIL import Image

from family_media import clip, image, silent_log
from vidtune.atomic import read_jsonl
from vidtune.config import schema_defaults
from vidtune.families import Media, family_for_folder
from vidtune.families.qwen3_vl import FAMILY
from vidtune.merge import merge
from vidtune.modeling import collate, load_model
from vidtune.predict import Predictor
from vidtune.tiny_model import build_model, write_synthetic_dataset
from vidtune.train import train
from vidtune.training.batching import training_collator
from vidtune.training.model import prepare_model, trainable_parameters
from vidtune.training.packing import collate_packed, sample_spans
from vidtune.training.settings import TrainingSettings

torch.set_num_threads(1)
TINY = {"family": "qwen3_vl", "image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_layers": 1,
        "text_hidden_size": 64, "text_layers": 2, "seed": 0}


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_vl") / "model"
    build_model(folder, {"tiny": TINY})
    return folder


@pytest.fixture(scope="module")
def processor(tiny_qwen3):
    return FAMILY.load_processor(tiny_qwen3)


def test_the_folder_is_a_qwen3_vl_checkpoint(tiny_qwen3, processor):
    assert family_for_folder(tiny_qwen3) is FAMILY
    config = json.loads((tiny_qwen3 / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert type(processor.video_processor).__name__ == "Qwen3VLVideoProcessor"  # needs torchvision: it runs here


@pytest.mark.parametrize("times", [(0.0, 0.4, 1.0, 1.6, 2.2, 3.0), (12.0, 12.5, 13.0, 13.5), (7.25,)],
                         ids=["uneven", "from-12s", "one-frame"])
def test_the_prompts_timestamps_are_the_frames_times(processor, times):
    encoded = FAMILY.encode(processor, clip(len(times), times=times), "Describe the video.")
    prompt = processor.tokenizer.decode(encoded["input_ids"])
    written = [float(value) for value in re.findall(r"<([0-9.]+) seconds>", prompt)]
    # One per temporal patch (two frames; a lone frame goes in twice): the mean of its frames' times.
    padded = list(times) + [times[-1]] * (len(times) % 2)
    expected = [float(f"{(padded[i] + padded[i + 1]) / 2:.1f}") for i in range(0, len(padded), 2)]
    assert written == expected
    assert encoded["video_grid_thw"].tolist() == [[len(padded) // 2, 4, 4]]
    untimed = processor.tokenizer.decode(FAMILY.encode(processor, Media(clip(4).frames, "video"), "x")["input_ids"])
    assert re.findall(r"<([0-9.]+) seconds>", untimed) == ["0.5", "2.5"]  # one frame a second where unknown


@pytest.mark.parametrize("media", [clip(4), clip(5, (48, 40), (0.0, 0.3, 0.5, 1.2, 1.3)), clip(1), image(),
                                   image((57, 23)), Media([image().frames[0], image((40, 64)).frames[0]], "image")],
                         ids=["4-frames", "5-uneven-frames", "1-frame", "image", "wide-image", "2-images"])
def test_sample_length_is_the_encoded_length(processor, media):
    for target in ("a red circle moves left", None):
        encoded = FAMILY.encode(processor, media, "Describe it.", target)
        assert FAMILY.sample_length(processor, media.shape, "Describe it.", target) == len(encoded["input_ids"])


def test_the_video_pixel_budget_is_counted_too(processor):
    media = clip(8, (64, 64))  # 8 frames of 64 x 64 are over the tiny build's budget for a video
    encoded = FAMILY.encode(processor, media, "Describe it.", "x")
    assert encoded["video_grid_thw"].tolist() != [[4, 8, 8]]
    assert FAMILY.sample_length(processor, media.shape, "Describe it.", "x") == len(encoded["input_ids"])


def _recorded(owner, method: str) -> list:
    """The calls of owner's method (which still runs), as (args, kwargs)."""
    import functools

    calls, original = [], getattr(owner, method)

    @functools.wraps(original)
    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(owner, method, recording)
    return calls


def test_processor_tensors_reach_the_model_in_training_and_generate(tiny_qwen3, processor):
    samples = [FAMILY.encode(processor, clip(4), "Describe the video.", "a red circle moves left"),
               FAMILY.encode(processor, image(), "Describe the image.", "a blue square")]
    model = prepare_model(tiny_qwen3, TrainingSettings.from_config({"method": "lora", "bf16": "false"}), silent_log("test_family_qwen3_vl"),
                          FAMILY)
    inner = next(module for module in model.modules() if type(module).__name__ == "Qwen3VLModel")
    rope_inputs = _recorded(inner, "get_rope_index")
    batch = training_collator(processor.tokenizer.pad_token_id, planned=False, packed=False, family=FAMILY,
                              model_config=model.config)(samples)
    model(**batch).loss.backward()
    (args, kwargs), = rope_inputs
    assert torch.equal(kwargs["mm_token_type_ids"][0, :len(samples[0]["input_ids"])], samples[0]["mm_token_type_ids"])
    assert torch.equal(kwargs["video_grid_thw"], samples[0]["video_grid_thw"])
    assert torch.equal(kwargs["image_grid_thw"], samples[1]["image_grid_thw"])
    predictor = Predictor(tiny_qwen3)
    rope_inputs = _recorded(predictor.model.model, "get_rope_index")
    assert len(predictor.answer([(clip(4), "Describe the video."), (image(), "Describe the image.")])) == 2
    (args, kwargs), = rope_inputs
    prompt = FAMILY.encode(processor, clip(4), "Describe the video.")
    assert torch.equal(kwargs["video_grid_thw"], prompt["video_grid_thw"])
    assert torch.equal(kwargs["mm_token_type_ids"][0, -len(prompt["input_ids"]):], prompt["mm_token_type_ids"])
    assert int(predictor.model.model.rope_deltas.min()) < 0  # 3-D positions in generation


def test_a_packed_row_equals_its_samples_alone(tiny_qwen3, processor):
    model = prepare_model(tiny_qwen3, TrainingSettings.from_config({"method": "full", "bf16": "false"}), silent_log("test_family_qwen3_vl"),
                          FAMILY).eval()
    samples = [FAMILY.encode(processor, clip(4), "Describe the video.", "a red circle moves left"),
               FAMILY.encode(processor, image((40, 24)), "Describe the image.", "a blue square"),
               FAMILY.encode(processor, clip(3, times=(0.0, 0.4, 1.5)), "Describe the video.", "it moves")]
    row = collate_packed(samples, FAMILY, model.config)
    with torch.no_grad():
        packed = model(**row).logits[0]
    spans = sample_spans(row["position_ids"])  # from the first, 1-D row of the (4, 1, n) positions
    assert [end - start for start, end in spans] == [len(sample["input_ids"]) for sample in samples]
    for sample, (start, end) in zip(samples, spans):
        with torch.no_grad():
            alone = model(**collate([sample], processor.tokenizer.pad_token_id, sequence_keys=FAMILY.sequence_keys))
        assert torch.allclose(packed[start:end], alone.logits[0], atol=1e-4)
        loss = torch.nn.functional.cross_entropy(packed[start:end - 1], row["labels"][0, start + 1:end],
                                                 ignore_index=-100)
        assert abs(float(loss) - float(alone.loss)) <= 1e-4


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_each_method_trains_and_merges(method, tiny_qwen3, tmp_path):
    data = tmp_path / "data"
    meta = write_synthetic_dataset(data, 4, num_frames=3, size=32, images=1)
    summary = train(meta, tiny_qwen3, tmp_path / "run", {"method": method, "max_steps": 3, "batch_size": 2,
                                                         "learning_rate": 5e-3, "save_steps": 100,
                                                         "warmup_ratio": 0.0, "lora": {"dropout": 0.0}})
    assert summary["steps"] == 3 and summary["weights_check"]["unchanged_tensors"] == 0
    check = merge(tiny_qwen3, tmp_path / "run" / "final", tmp_path / "merged", read_jsonl(data / "train.jsonl"), data)
    assert check["passed"] and family_for_folder(tmp_path / "merged") is FAMILY


def test_one_step_at_the_real_qwen3_vl_2b_width(tmp_path):
    """Qwen3-VL-2B's published shape (2 layers each, a small vocabulary, random fp32 weights): a 448-pixel
    clip and image at the native 16-pixel patches, one forward and backward."""
    architecture = {"name": "qwen3-vl-2b", "text_layers": 2, "vision_layers": 2, "vocab_size": 4096, "dtype": "float32"}
    build_model(tmp_path / "model", {"architecture": architecture})
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_attention_heads"], text["num_key_value_heads"],
            text["head_dim"]) == (2048, 6144, 16, 8, 128)
    assert (vision["hidden_size"], vision["intermediate_size"], vision["out_hidden_size"], vision["patch_size"],
            vision["num_position_embeddings"]) == (1024, 4096, 2048, 16, 2304)
    assert vision["deepstack_visual_indexes"] == [1]  # the published [5, 11, 17] beyond 2 layers: the last
    processor = FAMILY.load_processor(tmp_path / "model")
    model = load_model(tmp_path / "model")
    # The jobs' memory is planned from the count the family makes without building (vidtune.resources).
    counted = FAMILY.built_size("architecture", {**schema_defaults("architecture"), **architecture})
    assert counted == (sum(p.numel() for p in model.parameters()), 4, 4096)
    frames = [Image.new("RGB", (448, 448), colour) for colour in ("red", "green")]
    for media in (Media(frames, "video", (0.0, 0.5)), Media(frames[:1], "image")):
        encoded = FAMILY.encode(processor, media, "Describe it.", "a colour")
        grid = encoded["video_grid_thw" if media.media_type == "video" else "image_grid_thw"]
        assert grid.tolist() == [[1, 28, 28]]  # 448 / 16 patches a side, 196 tokens after the 2 x 2 merge
        assert FAMILY.sample_length(processor, media.shape, "Describe it.", "a colour") == len(encoded["input_ids"])
        batch = collate([encoded], processor.tokenizer.pad_token_id, sequence_keys=FAMILY.sequence_keys)
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert model.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        assert model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    counts = trainable_parameters(model, FAMILY)
    assert counts["projector"] == sum(p.numel() for p in model.model.visual.merger.parameters())
