"""Length-grouped batches and padding-free packing (issue 23): the plans, and that a packed row trains each
sample exactly as it would alone (attention, logits, losses, LoRA gradients), with the tiny model in fp32."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from vidtune.check_training_data import LENGTHS, check_dataset
from vidtune.families import Media
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.modeling import collate, load_processor
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.train import train
from vidtune.training.batching import item_lengths, learned_logits_only, plan_batches
from vidtune.training.checkpoints import COMPLETE_MARKER
from vidtune.training.data import item_media, training_items
from vidtune.training.loading import data_workers
from vidtune.training.model import prepare_model
from vidtune.training.packing import collate_packed, plan_rows, sample_spans
from vidtune.training.settings import TrainingSettings

torch.set_num_threads(1)
LENGTHS_96 = [int(n) for n in np.random.default_rng(0).integers(20, 400, 96)]


def test_plans_are_deterministic_and_use_every_sample_once():
    for batching in ("group_by_length", "tokens_per_batch", "packing"):
        plan = plan_batches(LENGTHS_96, batching, batch_size=8, tokens_per_batch=1200, packing_max_tokens=1000,
                            seed=3)
        assert plan == plan_batches(LENGTHS_96, batching, batch_size=8, tokens_per_batch=1200,
                                    packing_max_tokens=1000, seed=3)
        assert plan != plan_batches(LENGTHS_96, batching, batch_size=8, tokens_per_batch=1200,
                                    packing_max_tokens=1000, seed=4)
        assert sorted(index for batch in plan for index in batch) == list(range(96))
    grouped = plan_batches(LENGTHS_96, "group_by_length", batch_size=8, tokens_per_batch=0, packing_max_tokens=0,
                           seed=3)
    assert [len(batch) for batch in grouped] == [8] * 12

    def padded(batches):
        return sum(len(batch) * max(LENGTHS_96[i] for i in batch) for batch in batches)

    random_batches = [list(range(start, start + 8)) for start in range(0, 96, 8)]
    assert padded(grouped) < 0.8 * padded(random_batches)
    budget = plan_batches(LENGTHS_96, "tokens_per_batch", batch_size=8, tokens_per_batch=1200,
                          packing_max_tokens=0, seed=3)
    assert all(len(batch) * max(LENGTHS_96[i] for i in batch) <= 1200 for batch in budget)
    rows = plan_rows(LENGTHS_96 + [1500], 1000, seed=3)
    assert [96] in rows  # longer than a row: alone
    assert all(sum(LENGTHS_96[i] for i in row) <= 1000 for row in rows if row != [96])
    assert sum(LENGTHS_96) / (1000 * (len(rows) - 1)) > 0.9  # rows are nearly full


def test_data_workers_follow_the_jobs_threads():
    assert data_workers("auto", 1, 1) == 1 and data_workers("auto", 8, 2) == 4 and data_workers("auto", 64, 1) == 8
    assert data_workers(0, 8, 1) == 0 and data_workers(3, 1, 1) == 3
    with pytest.raises(Exception, match="packing"):
        TrainingSettings.from_config({"packing": True, "group_by_length": True})


@pytest.fixture(scope="module")
def samples(tiny):
    """Three encoded samples of different lengths (video frames and an image), and the processor."""
    processor = load_processor(tiny)
    rng = np.random.default_rng(1)

    def frames(count):
        return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]

    encoded = [INTERNVL.encode(processor, Media(frames(2)), "Describe the video.", "a red square moves left"),
               INTERNVL.encode(processor, Media(frames(1), "image"), "Describe the image.", "blue"),
               INTERNVL.encode(processor, Media(frames(3)), "Describe the video.", "a green circle moves up and away")]
    return encoded, processor


def _model(tiny, attention="sdpa"):
    """The model as training prepares it (fp32, no cache, the attention kernel asked for), without dropout."""
    settings = TrainingSettings.from_config({"method": "full", "bf16": "false", "attention": attention})
    return prepare_model(tiny, settings, _silent()).eval()


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits[0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # flex: compiles for minutes on a CPU
def test_no_attention_crosses_a_sample_boundary(tiny, samples, attention):
    encoded, processor = samples
    model = _model(tiny, attention)
    packed = collate_packed(encoded, INTERNVL)
    assert "attention_mask" not in packed
    logits = _logits(model, packed)
    spans = sample_spans(packed["position_ids"])
    assert [end - start for start, end in spans] == [len(sample["input_ids"]) for sample in encoded]
    for sample, (start, end) in zip(encoded, spans):  # each sample's logits are those it has alone
        alone = _logits(model, collate([sample], processor.tokenizer.pad_token_id))
        assert torch.allclose(logits[start:end], alone, atol=1e-4), (attention, (logits[start:end] - alone).abs().max())
    # Another middle sample (other tokens, other frames) leaves the samples around it as they were.
    changed = INTERNVL.encode(processor, Media([Image.new("RGB", (32, 32), "white")] * 2), "Describe it.",
                              "nothing at all")
    other = collate_packed([encoded[0], changed, encoded[2]], INTERNVL)
    other_logits = _logits(model, other)
    other_spans = sample_spans(other["position_ids"])
    for first, second in ((spans[0], other_spans[0]), (spans[2], other_spans[2])):
        assert torch.allclose(logits[first[0]:first[1]], other_logits[second[0]:second[1]], atol=1e-5)
    middle = min(spans[1][1] - spans[1][0], other_spans[1][1] - other_spans[1][0])
    assert not torch.allclose(logits[spans[1][0]:spans[1][0] + middle],
                              other_logits[other_spans[1][0]:other_spans[1][0] + middle], atol=1e-3)


def test_packed_labels_and_per_sample_losses_equal_the_unpacked(tiny, samples):
    encoded, processor = samples
    model = _model(tiny)
    packed = collate_packed(encoded, INTERNVL)
    assert torch.equal(packed["labels"][0], torch.cat([sample["labels"] for sample in encoded]))
    assert torch.equal(packed["pixel_values"], torch.cat([sample["pixel_values"] for sample in encoded]))
    logits = _logits(model, packed)
    for sample, (start, end) in zip(encoded, sample_spans(packed["position_ids"])):
        labels = packed["labels"][0, start:end]
        packed_loss = torch.nn.functional.cross_entropy(logits[start:end - 1], labels[1:], ignore_index=-100)
        with torch.no_grad():
            alone = model(**collate([sample], processor.tokenizer.pad_token_id)).loss
        assert abs(float(packed_loss) - float(alone)) <= 1e-4


def test_lora_gradients_of_a_packed_row_equal_a_padded_batchs(tiny, samples):
    encoded, processor = samples
    settings = TrainingSettings.from_config({"method": "lora", "bf16": "false", "lora": {"dropout": 0.0}})
    model = prepare_model(tiny, settings, _silent())
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A's gradients zero
            torch.nn.init.normal_(parameter, std=0.05)
    # The Trainer's loss normalisation: the answer tokens of the whole step (num_items_in_batch).
    padded = collate(encoded, processor.tokenizer.pad_token_id)
    items = int((padded["labels"][:, 1:] != -100).sum())
    # The padded batch with every logit, and what training feeds: logits at the learned positions only, padded
    # and packed.
    gradients = []
    for batch in (padded, learned_logits_only(padded), learned_logits_only(collate_packed(encoded, INTERNVL))):
        model.zero_grad()
        model(**batch, num_items_in_batch=torch.tensor(items)).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
    assert any("lora_A" in name for name in gradients[0])
    for other in gradients[1:]:
        assert other.keys() == gradients[0].keys()
        for name, gradient in gradients[0].items():
            assert gradient.norm() > 0, name
            relative = (gradient - other[name]).norm() / gradient.norm()
            assert relative <= 1e-4, (name, float(relative))


def _silent():
    import logging

    log = logging.getLogger("test_packing")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def test_lengths_come_from_the_check_step(tiny, tmp_path):
    meta = write_synthetic_dataset(tmp_path / "data", 6, num_frames=2, size=32, images=2)
    processor = load_processor(tiny)
    check_dataset(meta.parent / "train.jsonl", meta.parent, processor, tmp_path / "checked", family=INTERNVL,
                  dataset="synthetic", max_dynamic_patch=2, max_seq_length=4096, over_length="drop")
    counted = json.loads((tmp_path / "checked" / LENGTHS).read_text())
    from vidtune.check_training_data import write_training_meta

    write_training_meta(meta, {"synthetic": tmp_path / "checked" / "train.jsonl"}, tmp_path / "meta.json")
    items, _ = training_items(tmp_path / "meta.json", 0, _silent())
    assert [item.tokens for item in items] == counted
    unchecked, _ = training_items(meta, 0, _silent())  # no lengths in this meta.json: counted the same way
    assert item_lengths(unchecked, processor, INTERNVL, _silent()) == counted
    assert counted == [len(INTERNVL.encode(processor, item_media(item), item.prompt, item.target)["input_ids"])
                       for item in items]


def test_packed_training_resumes_exactly(tiny, tmp_path):
    """Stopped after a checkpoint, a packed run goes on with the same rows in the same order: its losses are
    those of the run that was never stopped."""
    meta = write_synthetic_dataset(tmp_path / "data", 12, num_frames=2, size=32, images=2)
    settings = {"packing": True, "packing_max_tokens": 260, "epochs": 2, "save_steps": 2, "save_total_limit": 5,
                "learning_rate": 2e-3, "warmup_ratio": 0.0, "lora": {"dropout": 0.0}}
    whole = train(meta, tiny, tmp_path / "whole", settings)
    assert whole["batching"] == "packing" and whole["padding_share"] == 0.0 and whole["steps"] >= 6
    stopped = tmp_path / "stopped" / "checkpoints"
    stopped.mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-4", stopped / "checkpoint-4")
    assert (stopped / "checkpoint-4" / COMPLETE_MARKER).is_file()
    resumed = train(meta, tiny, tmp_path / "stopped", settings)
    assert resumed["resumed_from"]["step"] == 4 and resumed["steps"] == whole["steps"]
    losses = [[entry["loss"] for entry in json.loads((tmp_path / run / "loss.json").read_text())]
              for run in ("whole", "stopped")]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_packed_training_learns_with_each_method(method, tiny, tmp_path):
    meta = write_synthetic_dataset(tmp_path / "data", 8, num_frames=2, size=32, images=2)
    summary = train(meta, tiny, tmp_path / "train", {"method": method, "packing": True, "packing_max_tokens": 120,
                                                     "epochs": 4, "learning_rate": 2e-3, "warmup_ratio": 0.0,
                                                     "save_steps": 100, "lora": {"dropout": 0.0}})
    losses = [entry["loss"] for entry in json.loads((tmp_path / "train" / "loss.json").read_text())]
    assert summary["steps"] == 16 and summary["samples_per_s"] * summary["train_seconds"] == pytest.approx(32, rel=0.01)
    assert sum(losses[-4:]) < sum(losses[:4]) - 0.4
