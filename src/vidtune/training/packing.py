"""Padding-free packing: several whole samples in one row, trained as if each were alone.

A packed row is the samples' tokens one after the other, with ``position_ids`` restarting at 0 for each
sample and no ``attention_mask``: transformers (masking_utils.find_packed_sequence_indices) then builds a
block-diagonal causal mask from the restarting positions for sdpa, eager and flex attention, and
flash-attention's variable-length kernel takes the same positions (a batch of one row), so no token attends
across a sample boundary. The labels are each sample's own; a sample's first label is -100 (its first token
is never predicted, alone or packed), so the row's last token of one sample never learns the next sample's
first. Every other per-token tensor of the family (its ``sequence_keys``) is concatenated the same way, and
every other tensor (``pixel_values``, grid sizes, ...) follows in the samples' order, which is the order of
their image tokens in the row. The loss is per token over the row (the Trainer's ``num_items_in_batch``: the answer
tokens of the whole step), so a packed step weighs every token as a padded step of the same samples does.

The positions are the family's (:meth:`vidtune.families.base.ModelFamily.packed_position_ids`): 1-D by
default; a family with multi-dimensional (Qwen2-VL-style rope) positions builds them per sample from its own
inputs and restarts them the same way.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from vidtune.families import ModelFamily
from vidtune.families.base import IGNORE_INDEX

OPEN_ROWS = 64  # rows still filled at once: a sample goes to the first of them with room (first fit)


def plan_rows(lengths: Sequence[int], max_tokens: int, seed: int) -> list[list[int]]:
    """Packed rows of sample indices, each at most ``max_tokens`` tokens (a longer sample gets a row of its
    own): the samples in a seeded random order, each put into the first of the last ``OPEN_ROWS`` rows with
    room (first fit over a window: near-full rows, linear time)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    room: list[int] = []
    first_open = 0
    for index in order:
        length = lengths[index]
        for row in range(first_open, len(rows)):
            if room[row] >= length:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(max_tokens - length)
            first_open = max(first_open, len(rows) - OPEN_ROWS)
    return rows


def collate_packed(samples: Sequence[dict[str, torch.Tensor]], family: ModelFamily,
                   model_config=None) -> dict[str, torch.Tensor]:
    """One packed row (batch of one) of encoded samples: their per-token tensors (the family's
    ``sequence_keys``) one after the other but the attention mask, the family's ``position_ids``, and every
    other tensor concatenated along dim 0. ``model_config`` is the model's config, for a family whose
    positions depend on it."""
    labels = []
    for sample in samples:
        own = sample.get("labels", torch.full_like(sample["input_ids"], IGNORE_INDEX)).clone()
        own[0] = IGNORE_INDEX
        labels.append(own)
    row = {"labels": torch.cat(labels)[None]}
    for key in dict.fromkeys(key for sample in samples for key in sample):
        if key in ("labels", "attention_mask"):
            continue
        if key in family.sequence_keys:
            row[key] = torch.cat([sample.get(key, torch.zeros_like(sample["input_ids"])) for sample in samples])[None]
        else:
            row[key] = torch.cat([sample[key] for sample in samples if key in sample])
    row["position_ids"] = family.packed_position_ids(samples, model_config=model_config)
    return row


def text_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """A packed row's 1-D positions: the row itself, or the first of a family's multi-dimensional positions
    (transformers' packed 3-D rope positions lead with the 1-D ones the attention mask is built from)."""
    return position_ids.reshape(-1, position_ids.shape[-1])[0]


def sample_spans(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of every sample of a packed row, from its restarting positions."""
    positions = text_positions(position_ids)
    starts = [int(index) for index in torch.nonzero(positions == 0).flatten()]
    return list(zip(starts, starts[1:] + [positions.numel()]))
