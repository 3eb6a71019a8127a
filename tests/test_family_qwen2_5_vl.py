"""The Qwen2.5-VL family: a clip's frames as one video with their real times, every processor tensor reaching
the model (training and generate), token counts without pixels, packed rows equal to unpacked samples, each
method training and merging on the tiny build, and one step at the real Qwen2.5-VL-3B width."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from PIL import Image

from family_media import clip, image, silent_log
from vidtune.atomic import read_jsonl
from vidtune.config import schema_defaults
from vidtune.families import Media, family_for_folder
from vidtune.families.qwen2_5_vl import FAMILY
from vidtune.merge import merge
from vidtune.modeling import collate, load_model
from vidtune.predict import Predictor
from vidtune.tiny_model import build_model, write_synthetic_dataset
from vidtune.train import train
from vidtune.training.batching import training_collator
from vidtune.training.model import lora_target_modules, prepare_model, trainable_parameters
from vidtune.training.packing import collate_packed, sample_spans
from vidtune.training.settings import TrainingSettings

torch.set_num_threads(1)
TINY = {"family": "qwen2_5_vl", "image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_layers": 1,
        "text_hidden_size": 64, "text_layers": 2, "seed": 0}
VIDEO_KEYS = {"mm_token_type_ids", "video_grid_thw", "second_per_grid_ts", "pixel_values_videos"}


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2_5_vl") / "model"
    build_model(folder, {"tiny": TINY})
    return folder


@pytest.fixture(scope="module")
def processor(tiny_qwen):
    return FAMILY.load_processor(tiny_qwen)


def test_the_folder_is_a_qwen2_5_vl_checkpoint(tiny_qwen, processor):
    assert family_for_folder(tiny_qwen) is FAMILY
    config = json.loads((tiny_qwen / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"  # needs torchvision: it runs here


def test_a_clip_is_one_video_with_its_frames_times(processor):
    encoded = FAMILY.encode(processor, clip(4), "Describe the video.", "a red circle")
    assert VIDEO_KEYS <= set(encoded) and "pixel_values" not in encoded
    assert encoded["video_grid_thw"].tolist() == [[2, 4, 4]]  # 4 frames in 2 temporal patches of 4 x 4
    tokens = encoded["input_ids"]
    assert int((tokens == processor.video_token_id).sum()) == 2 * 2 * 2  # merged 2 x 2 per temporal patch
    assert torch.equal(encoded["mm_token_type_ids"], (tokens == processor.video_token_id).long() * 2)
    # Frames 0.5 s apart: a temporal patch (2 frames) lasts 1 s.
    assert encoded["second_per_grid_ts"].tolist() == [1.0]
    uneven = FAMILY.encode(processor, clip(4, times=(0.0, 0.2, 1.0, 1.5)), "Describe the video.")
    assert uneven["second_per_grid_ts"].tolist() == pytest.approx([1.0])  # the mean spacing: 1.5 s / 3 gaps
    untimed = FAMILY.encode(processor, Media(clip(3).frames, "video", None), "Describe the video.")
    assert untimed["second_per_grid_ts"].tolist() == [2.0]  # one frame a second where the times are unknown
    assert untimed["video_grid_thw"].tolist() == [[2, 4, 4]]  # an odd last frame is repeated
    images = FAMILY.encode(processor, image(), "Describe the image.")
    assert {"pixel_values", "image_grid_thw", "mm_token_type_ids"} <= set(images)
    assert not VIDEO_KEYS - {"mm_token_type_ids"} & set(images)


def test_uneven_frames_are_logged_once(processor, caplog, monkeypatch):
    from vidtune.families import qwen2_5_vl

    monkeypatch.setattr(qwen2_5_vl, "_logged_uneven", False)
    with caplog.at_level(logging.INFO, logger=qwen2_5_vl.__name__):
        FAMILY.encode(processor, clip(4), "Describe the video.")  # even: nothing to say
        assert not caplog.records
        for _ in range(2):
            FAMILY.encode(processor, clip(4, times=(0.0, 0.2, 1.0, 1.5)), "Describe the video.")
    assert [record.getMessage() for record in caplog.records] == [
        "frames unevenly spaced (times 0, 0.2, 1, 1.5 s): rope time uses their mean spacing, 0.500 s (logged once)"]


@pytest.mark.parametrize("media", [clip(4), clip(5, (48, 40), (0.0, 0.3, 0.5, 1.2, 1.3)), clip(1), image(),
                                   image((57, 23)), Media([image().frames[0], image((40, 64)).frames[0]], "image")],
                         ids=["4-frames", "5-uneven-frames", "1-frame", "image", "wide-image", "2-images"])
def test_sample_length_is_the_encoded_length(processor, media):
    for target in ("a red circle moves left", None):
        encoded = FAMILY.encode(processor, media, "Describe it.", target)
        assert FAMILY.sample_length(processor, media.shape, "Describe it.", target) == len(encoded["input_ids"])


def test_the_per_frame_pixel_cap_is_counted_too(processor):
    video = processor.video_processor
    saved = video.max_video_tokens
    try:  # a budget so small that 6 frames of 64 x 64 are shrunk to the minimum
        video.max_video_tokens = 1
        media = clip(6, (64, 64))
        encoded = FAMILY.encode(processor, media, "Describe it.", "x")
        assert encoded["video_grid_thw"].tolist() == [[3, 2, 2]]
        assert FAMILY.sample_length(processor, media.shape, "Describe it.", "x") == len(encoded["input_ids"])
    finally:
        video.max_video_tokens = saved


def _inner_model_inputs(model) -> list[dict]:
    """Every call of the Qwen2.5-VL model under the head, with its keyword arguments."""
    calls = []
    inner = next(module for module in model.modules() if type(module).__name__ == "Qwen2_5_VLModel")
    inner.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def test_processor_tensors_reach_the_model_in_training_and_generate(tiny_qwen, processor):
    samples = [FAMILY.encode(processor, clip(4), "Describe the video.", "a red circle moves left"),
               FAMILY.encode(processor, image(), "Describe the image.", "a blue square")]
    model = prepare_model(tiny_qwen, TrainingSettings.from_config({"method": "lora", "bf16": "false"}), silent_log("test_family_qwen2_5_vl"),
                          FAMILY)
    calls = _inner_model_inputs(model)
    for packed in (False, True):
        batch = training_collator(processor.tokenizer.pad_token_id, planned=False, packed=packed, family=FAMILY,
                                  model_config=model.config)(samples)
        model(**batch).loss.backward()
        seen = calls[-1]
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            assert torch.equal(seen[key], torch.cat([sample[key] for sample in samples if key in sample])), key
        if packed:  # the family's 3-D positions; the text model builds the packed mask from the first row
            assert seen["position_ids"].shape == (4, 1, sum(len(sample["input_ids"]) for sample in samples))
        else:
            assert torch.equal(seen["mm_token_type_ids"][0], samples[0]["mm_token_type_ids"])
            # The model built 3-D positions: the video's 8 tokens take fewer positions than tokens.
            assert int(model.base_model.model.model.rope_deltas[0]) < 0
    # generate encodes the pixels first (mm_encoder_outputs) and builds the 3-D positions from the grids, the
    # seconds per grid and the token types (get_rope_index; without them it falls back to 1-D, silently).
    predictor = Predictor(tiny_qwen)
    calls = _inner_model_inputs(predictor.model)
    rope_inputs = _recorded(predictor.model.model, "get_rope_index")
    answers = predictor.answer([(clip(4), "Describe the video."), (image(), "Describe the image.")])
    assert len(answers) == 2
    prompts = [FAMILY.encode(processor, clip(4), "Describe the video."),
               FAMILY.encode(processor, image(), "Describe the image.")]
    (args, kwargs), = rope_inputs  # once, for the prompt
    assert torch.equal(kwargs["video_grid_thw"], prompts[0]["video_grid_thw"])
    assert torch.equal(kwargs["image_grid_thw"], prompts[1]["image_grid_thw"])
    assert torch.equal(kwargs["second_per_grid_ts"].float(), prompts[0]["second_per_grid_ts"])
    rows = [prompt["mm_token_type_ids"] for prompt in prompts]
    assert torch.equal(kwargs["mm_token_type_ids"][0, -len(rows[0]):], rows[0])  # left padded
    assert torch.equal(kwargs["mm_token_type_ids"][1, -len(rows[1]):], rows[1])
    prefill = calls[0]
    assert set(prefill["mm_encoder_outputs"]) == {"image", "video"}
    assert prefill["position_ids"].shape[0] == 4  # text positions + the 3-D ones
    assert int(predictor.model.model.rope_deltas.min()) < 0


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


def test_a_packed_row_equals_its_samples_alone(tiny_qwen, processor):
    settings = TrainingSettings.from_config({"method": "full", "bf16": "false"})
    model = prepare_model(tiny_qwen, settings, silent_log("test_family_qwen2_5_vl"), FAMILY).eval()
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
        difference = (packed[start:end] - alone.logits[0]).abs().max()
        assert difference <= 1e-4, difference
        labels = row["labels"][0, start:end]
        loss = torch.nn.functional.cross_entropy(packed[start:end - 1], labels[1:], ignore_index=-100)
        assert abs(float(loss) - float(alone.loss)) <= 1e-4


def test_lora_targets_parts_and_qlora_skips(tiny_qwen):
    import bitsandbytes as bnb

    model = load_model(tiny_qwen)
    targets = lora_target_modules(model, FAMILY)
    assert targets and all(name.startswith("model.language_model.") for name in targets)
    vision = lora_target_modules(model, FAMILY, language=False, vision=True)
    assert vision and all(name.startswith("model.visual.") and ".merger." not in name for name in vision)
    assert FAMILY.find_part(model, "projector")[0] == "model.visual.merger"
    settings = TrainingSettings.from_config({"method": "full", "bf16": "false", "freeze_vision": True})
    counts = trainable_parameters(prepare_model(tiny_qwen, settings, silent_log("test_family_qwen2_5_vl"), FAMILY), FAMILY)
    merger = sum(p.numel() for p in model.model.visual.merger.parameters())
    assert counts["vision"] == 0 and counts["projector"] == merger and counts["language"] > 0
    quantised = load_model(tiny_qwen, quantization="nf4")
    names = [name for name, module in quantised.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert names and all(name.startswith("model.language_model.") for name in names)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_each_method_trains_and_merges(method, tiny_qwen, tmp_path):
    data = tmp_path / "data"
    meta = write_synthetic_dataset(data, 4, num_frames=3, size=32, images=1)
    summary = train(meta, tiny_qwen, tmp_path / "run", {"method": method, "max_steps": 3, "batch_size": 2,
                                                        "learning_rate": 5e-3, "save_steps": 100,
                                                        "warmup_ratio": 0.0, "lora": {"dropout": 0.0}})
    assert summary["steps"] == 3 and summary["weights_check"]["unchanged_tensors"] == 0
    losses = [entry["loss"] for entry in json.loads((tmp_path / "run" / "loss.json").read_text())]
    assert all(loss == loss and loss < 20 for loss in losses)
    check = merge(tiny_qwen, tmp_path / "run" / "final", tmp_path / "merged", read_jsonl(data / "train.jsonl"), data)
    assert check["passed"] and family_for_folder(tmp_path / "merged") is FAMILY


def test_one_step_at_the_real_qwen2_5_vl_3b_width(tmp_path):
    """Qwen2.5-VL-3B's published shape (2 layers each, a small vocabulary, random fp32 weights): a 448-pixel
    clip and image at the native patch size, one forward and backward."""
    architecture = {"name": "qwen2.5-vl-3b", "text_layers": 2, "vision_layers": 2, "vocab_size": 4096,
                    "dtype": "float32"}
    build_model(tmp_path / "model", {"architecture": architecture})
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_attention_heads"],
            text["num_key_value_heads"]) == (2048, 11008, 16, 2)
    assert text["rope_parameters"]["mrope_section"] == [16, 24, 24] and config["tie_word_embeddings"]
    assert (vision["hidden_size"], vision["intermediate_size"], vision["out_hidden_size"], vision["patch_size"],
            vision["window_size"], vision["tokens_per_second"]) == (1280, 3420, 2048, 14, 112, 2)
    assert vision["fullatt_block_indexes"] == [1]  # the published [7, 15, 23, 31] beyond 2 layers: the last
    processor = FAMILY.load_processor(tmp_path / "model")
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12845056}
    model = load_model(tmp_path / "model")
    # The jobs' memory is planned from the count the family makes without building (vidtune.resources).
    counted = FAMILY.built_size("architecture", {**schema_defaults("architecture"), **architecture})
    assert counted == (sum(p.numel() for p in model.parameters()), 4, 4096)
    frames = [Image.new("RGB", (448, 448), colour) for colour in ("red", "green")]
    for media in (Media(frames, "video", (0.0, 0.5)), Media(frames[:1], "image")):
        encoded = FAMILY.encode(processor, media, "Describe it.", "a colour")
        grid = encoded["video_grid_thw" if media.media_type == "video" else "image_grid_thw"]
        assert grid.tolist() == [[1, 32, 32]]  # 448 / 14 patches a side, 256 tokens after the 2 x 2 merge
        assert FAMILY.sample_length(processor, media.shape, "Describe it.", "a colour") == len(encoded["input_ids"])
        batch = collate([encoded], processor.tokenizer.pad_token_id, sequence_keys=FAMILY.sequence_keys)
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert model.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        assert model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
