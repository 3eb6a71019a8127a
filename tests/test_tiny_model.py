"""The tiny InternVL: a real checkpoint folder, deterministic, and encoded the way training expects."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vidtune.errors import MediaError, ModelError
from vidtune.internvl_format import record_text
from vidtune.families import Media
from vidtune.families.base import IGNORE_INDEX
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.modeling import collate, load_model, load_processor, load_record_media
from vidtune.tiny_model import build_tiny_model, synthetic_frames

from conftest import TRAINING_TEST_MODEL

torch.set_num_threads(1)


def test_folder_is_a_complete_checkpoint(tiny):
    names = {path.name for path in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
            "chat_template.jinja", "generation_config.json", "video_preprocessor_config.json"} <= names
    assert not list(tiny.parent.glob(".*tmp-*"))
    model = load_model(tiny)
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert model.config.text_config.model_type == "qwen2"
    assert tuple(model.config.vision_config.image_size) == (32, 32)


def test_same_settings_same_weights(tiny, tmp_path):
    build_tiny_model(tmp_path / "again", TRAINING_TEST_MODEL)
    first, second = load_file(tiny / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    build_tiny_model(tmp_path / "other", {**TRAINING_TEST_MODEL, "seed": 4})
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_tokenizer_encodes_demo_words_whole_and_any_text(tiny):
    tokenizer = load_processor(tiny).tokenizer
    assert len(tokenizer.tokenize("a red circle moves left")) == 5
    text = "Ünïcode – 日本語 ok"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for name in ("start_image_token", "end_image_token", "context_image_token", "video_token"):
        assert getattr(tokenizer, name) in tokenizer.get_vocab()


def test_video_sample_labels_only_the_answer(tiny):
    processor = load_processor(tiny)
    frames = synthetic_frames("red", "circle", "left", num_frames=3, size=32)
    sample = INTERNVL.encode(processor, Media(frames), "Describe the video.", "a red circle moves left")
    text = processor.tokenizer.decode(sample["input_ids"])
    assert "Frame1: <img>" in text and "Frame3: <img>" in text and "Frame4" not in text
    assert sample["pixel_values"].shape == (3, 3, 32, 32)  # one tile per frame
    image_tokens = int((sample["input_ids"] == processor.image_token_id).sum())
    assert image_tokens == 3 * processor.image_seq_length == 3 * 4
    answer = processor.tokenizer.decode(sample["input_ids"][sample["labels"] != IGNORE_INDEX])
    assert answer == "a red circle moves left<|im_end|>"
    # The chat template's generation block marks the same tokens.
    masked = processor.apply_chat_template(
        INTERNVL.build_messages("Describe the video.", Media(frames), "a red circle moves left"), tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True,
        processor_kwargs={"images": frames, "images_kwargs": {"crop_to_patches": False}})
    assert torch.equal(torch.as_tensor(masked["assistant_masks"][0]).bool(), sample["labels"] != IGNORE_INDEX)


def test_image_sample_uses_dynamic_tiles_and_batches(tiny):
    processor = load_processor(tiny)
    wide = Image.new("RGB", (64, 32), (0, 0, 255))
    image = INTERNVL.encode(processor, Media([wide], "image", None, 4), "Describe the image.", "a blue box")
    assert image["pixel_values"].shape[0] == 3  # 2 tiles + thumbnail
    prompt_only = INTERNVL.encode(processor, Media([wide], "image", None, 1), "Describe the image.")
    assert "labels" not in prompt_only and prompt_only["pixel_values"].shape[0] == 1
    batch = collate([image, prompt_only], processor.tokenizer.pad_token_id, padding_side="left")
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 4
    assert batch["attention_mask"][1, 0] == 0 and batch["labels"][1].eq(IGNORE_INDEX).all()
    model = load_model(tiny)
    assert torch.isfinite(model(**batch).loss)


def test_records_frames_sorted_by_number_and_errors(tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    for number in (10, 2, 1):
        Image.new("RGB", (8, 8), (number, 0, 0)).save(clip / f"video_{number}.jpg", quality=100)
    (clip / "notes.txt").write_text("ignored")
    record = {"id": "x", "video": "clip/", "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                                                             {"from": "gpt", "value": "it"}]}
    media = load_record_media(record, tmp_path, 1)
    assert media.media_type == "video" and media.frame_times is None  # not extracted by vidtune: no times
    assert [frame.getpixel((0, 0))[0] for frame in media.frames] == pytest.approx([1, 2, 10], abs=3)
    assert record_text(record).prompt == "What?" and record_text(record).placeholders == 1
    with pytest.raises(MediaError, match="record x"):
        load_record_media({**record, "video": "missing/"}, tmp_path, 1)
    # The frame-list form: the list's order, one <image> per frame on InternVL's Frame-<i> lines.
    listed = {"id": "x", "image": ["clip/video_10.jpg", "clip/video_1.jpg"],
              "conversations": [{"from": "human", "value": "Frame-1: <image>\nFrame-2: <image>\nWhat?"},
                                {"from": "gpt", "value": "it"}]}
    media = load_record_media(listed, tmp_path, 1)
    assert [frame.getpixel((0, 0))[0] for frame in media.frames] == pytest.approx([10, 1], abs=3)
    text = record_text(listed)
    assert (text.media_type, text.prompt, text.placeholders, text.media_count) == ("video", "What?", 2, 2)
    with pytest.raises(MediaError, match="record x"):
        load_record_media({**listed, "image": ["clip/video_1.jpg", "clip/gone.jpg"]}, tmp_path, 1)


def test_not_a_model_folder_names_it(tmp_path):
    with pytest.raises(ModelError, match=str(tmp_path)):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "internvl"}')
    (tmp_path / "pytorch_model.bin").write_text("")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(tmp_path)


def test_stock_processor_loads_where_torchvision_exists(tiny):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny)
    assert type(processor).__name__ == "InternVLProcessor" and processor.image_seq_length == 4
