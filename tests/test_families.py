"""Model families: the registry, and that every tensor a family's processor returns reaches the model, in
training (the Trainer's batches, padded and packed) and in prediction (generate's inputs)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from transformers import InternVLForConditionalGeneration

import vidtune.predict
import vidtune.train
from vidtune.atomic import read_jsonl
from vidtune.errors import ConfigError, ModelError
from vidtune.config import schema_defaults
from vidtune.families import ModelFamily, all_families, family, family_for_architecture, family_for_folder
from vidtune.families.internvl import InternVLFamily
from vidtune.modeling import collate, move_batch
from vidtune.tiny_model import build_model, write_synthetic_dataset
from vidtune.training.model import prepare_model

torch.set_num_threads(1)
EXTRA_KEYS = ("frame_marks", "token_marks")


class MarkingFamily(InternVLFamily):
    """InternVL whose processor also returns a per-frame tensor (``frame_marks``, floating, like Qwen's
    ``second_per_grid_ts``) and a per-token one (``token_marks``, like ``mm_token_type_ids``)."""

    name = "internvl_marking"
    sequence_keys = InternVLFamily.sequence_keys | {"token_marks"}

    def processor_inputs(self, processor, media, text):
        inputs = dict(super().processor_inputs(processor, media, text))
        frames = len(media.frames)
        inputs["frame_marks"] = torch.arange(frames * 2, dtype=torch.float32).reshape(frames, 2) + 1
        inputs["token_marks"] = (inputs["input_ids"] % 2) + 1  # never the padding's 0
        return inputs


def record_model_inputs(model: torch.nn.Module, seen: list[dict]):
    """Keep what each forward of the (innermost) model is called with; drop the extra keys, which
    InternVL itself does not take, so the real forward runs."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model

    def before_forward(module, args, kwargs):
        seen.append({key: value.detach().clone() for key, value in kwargs.items() if isinstance(value, torch.Tensor)})
        return args, {key: value for key, value in kwargs.items() if key not in EXTRA_KEYS}

    inner.register_forward_pre_hook(before_forward, with_kwargs=True)
    return model


def test_registry_finds_families_by_name_folder_and_architecture(tiny, tmp_path):
    assert "internvl" in all_families()
    assert family_for_folder(tiny) is family("internvl") is family_for_architecture("internvl3-1b")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ModelError) as error:
        family_for_folder(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "config.json") in message and "'llava'" in message and "internvl (internvl" in message
    with pytest.raises(ModelError, match="no config.json"):
        family_for_folder(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="unknown model family 'llava'.*internvl"):
        family("llava")
    with pytest.raises(ConfigError, match="unknown architecture 'llava-7b'.*internvl3-1b"):
        build_model(tmp_path / "built", {"architecture": {"name": "llava-7b"}})


def test_tiny_entries_build_by_their_family(tmp_path):
    build_model(tmp_path / "tiny", {"tiny": {"family": "internvl", "image_size": 16, "patch_size": 8,
                                             "vision_hidden_size": 16, "vision_layers": 1, "text_hidden_size": 32,
                                             "text_layers": 1}})
    assert json.loads((tmp_path / "tiny" / "config.json").read_text())["model_type"] == "internvl"
    with pytest.raises(ConfigError, match="unknown model family"):
        build_model(tmp_path / "other", {"tiny": {"family": "nope"}})


def test_a_tiny_builds_size_is_known_before_it_is_built():
    """InternVL counts its parameters from the settings; the default every family has measures a build."""
    settings = {**schema_defaults("tiny_model"), "image_size": 16, "patch_size": 8, "text_layers": 1}
    internvl = family("internvl")
    counted = internvl.built_size("tiny", settings)
    measured = ModelFamily.built_size(internvl, "tiny", settings)
    # InternVL counts the tokenizer's whole vocabulary (1024) where the BPE fills fewer rows; the measure
    # includes the file's header. Otherwise the same model.
    unfilled_rows = (counted[2] - measured[2]) * settings["text_hidden_size"]
    assert measured[1] == counted[1] == 4 and 0 <= unfilled_rows
    assert abs(measured[0] - (counted[0] - unfilled_rows)) <= 0.01 * counted[0]
    with pytest.raises(NotImplementedError, match="architecture"):
        ModelFamily.built_size(internvl, "architecture", {"name": "internvl3-1b"})


def test_batches_keep_every_key_and_move_floats_to_the_model_dtype():
    samples = [{"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long),
                "pixel_values": torch.ones(2, 3, 4, 4), "video_grid_thw": torch.tensor([[1, 2, 2]]),
                "second_per_grid_ts": torch.tensor([0.5]), "mm_token_type_ids": torch.tensor([0, 2, 2])},
               {"input_ids": torch.tensor([8]), "attention_mask": torch.ones(1, dtype=torch.long),
                "pixel_values": torch.ones(1, 3, 4, 4), "image_grid_thw": torch.tensor([[1, 1, 1]]),
                "mm_token_type_ids": torch.tensor([1])}]
    batch = collate(samples, pad_token_id=0, padding_side="left")
    assert batch["mm_token_type_ids"].tolist() == [[0, 2, 2], [0, 0, 1]]
    assert batch["pixel_values"].shape[0] == 3 and batch["video_grid_thw"].tolist() == [[1, 2, 2]]
    assert batch["image_grid_thw"].tolist() == [[1, 1, 1]] and batch["second_per_grid_ts"].tolist() == [0.5]
    moved = move_batch(batch, "cpu", torch.bfloat16)
    assert moved.keys() == batch.keys()
    assert moved["pixel_values"].dtype == moved["second_per_grid_ts"].dtype == torch.bfloat16
    assert moved["video_grid_thw"].dtype == moved["mm_token_type_ids"].dtype == torch.int64


@pytest.mark.parametrize("packing", [False, True])
def test_every_processor_tensor_reaches_the_model_in_training(packing, tiny, tmp_path, monkeypatch):
    meta = write_synthetic_dataset(tmp_path / "data", 4, num_frames=2, size=32, images=1)
    seen: list[dict] = []
    marking = MarkingFamily()
    monkeypatch.setattr(vidtune.train, "family_for_folder", lambda folder: marking)
    monkeypatch.setattr(vidtune.train, "prepare_model",
                        lambda *args, **kwargs: record_model_inputs(prepare_model(*args, **kwargs), seen))
    settings = {"method": "lora", "max_steps": 2, "batch_size": 2, "save_steps": 100, "data_workers": 0,
                "warmup_ratio": 0.0, **({"packing": True, "packing_max_tokens": 400} if packing else {})}
    vidtune.train.train(meta, tiny, tmp_path / "train", settings)
    training = [inputs for inputs in seen if "labels" in inputs]
    assert len(training) == 2
    for inputs in training:
        assert {*EXTRA_KEYS, "input_ids", "pixel_values"} <= inputs.keys()
        assert inputs["token_marks"].shape == inputs["input_ids"].shape  # per token: padded or packed alike
        assert inputs["frame_marks"].shape == (len(inputs["pixel_values"]), 2)  # one row per frame or image
        assert ("position_ids" in inputs) == packing and ("attention_mask" in inputs) != packing
        if not packing:
            assert (inputs["token_marks"] == 0).equal(inputs["attention_mask"] == 0)  # padding only
        else:
            assert inputs["token_marks"].min() >= 1  # a packed row: no padding


class MarkedInternVL(InternVLForConditionalGeneration):
    """The real model, taking the marking family's extra inputs by name as a family's own model does
    (generate refuses inputs its model's forward does not name); they are recorded, not used."""

    seen: list[dict]

    def forward(self, input_ids=None, pixel_values=None, frame_marks=None, token_marks=None, **kwargs):
        given = {"input_ids": input_ids, "pixel_values": pixel_values, "frame_marks": frame_marks,
                 "token_marks": token_marks}
        self.seen.append({key: value for key, value in given.items() if value is not None})
        return super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)


def test_every_processor_tensor_reaches_generate(tiny, tmp_path, monkeypatch):
    meta = write_synthetic_dataset(tmp_path / "data", 3, num_frames=2, size=32, images=1)
    monkeypatch.setattr(vidtune.predict, "family_for_folder", lambda folder: MarkingFamily())
    predictor = vidtune.predict.Predictor(tiny, evaluation={"batch_size": 3, "max_new_tokens": 2})
    predictor.model.__class__ = MarkedInternVL
    seen: list[dict] = []
    predictor.model.seen = seen
    records = read_jsonl(meta.parent / "train.jsonl")
    samples = predictor.record_samples(records, meta.parent, [None] * len(records))
    assert len(predictor.answer(samples)) == 3
    first = seen[0]
    assert set(EXTRA_KEYS) <= first.keys()
    assert first["token_marks"].shape == first["input_ids"].shape
    assert first["frame_marks"].shape == (2 + 2 + 1, 2) == (len(first["pixel_values"]), 2)
    assert first["frame_marks"][:2].tolist() == [[1.0, 2.0], [3.0, 4.0]]
