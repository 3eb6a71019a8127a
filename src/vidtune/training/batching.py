"""Which samples share a micro-batch: batch_size samples drawn at random (the Trainer's own sampler), or a
plan made once, before training, from every sample's length in tokens (the check step's counts):

- ``group_by_length``: batch_size samples of similar length (the Trainer's length grouping: random
  mega-batches, each sorted by length, cut into micro-batches), so a batch pads less;
- ``tokens_per_batch``: the same grouping, cut into micro-batches of as many samples as fit a token budget
  (samples x the longest, the padded size);
- ``packing``: rows of whole samples up to ``packing_max_tokens`` (vidtune.training.packing), no padding.

A plan depends only on the lengths and the seed (deterministic); it is a dataset of micro-batches, so the
Trainer shuffles their order per epoch with its seeded sampler, deals them out to the processes and skips
the ones already trained when it resumes, as it does with single samples.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from vidtune.families import ModelFamily
from vidtune.families.base import IGNORE_INDEX
from vidtune.modeling import collate, media_shape
from vidtune.training.data import TrainItem
from vidtune.training.packing import collate_packed, plan_rows


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """The samples in the Trainer's group_by_length order: each run of ``batch_size`` has similar lengths."""
    generator = torch.Generator().manual_seed(seed)
    return [int(index) for index in get_length_grouped_indices(list(lengths), batch_size, generator=generator)]


def group_by_length(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    order = length_grouped_order(lengths, batch_size, seed)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def token_budget_batches(lengths: Sequence[int], tokens_per_batch: int, seed: int) -> list[list[int]]:
    """Length-grouped micro-batches whose padded size (samples x the longest) stays within the budget; a sample
    over the budget alone."""
    typical = max(1, tokens_per_batch // max(1, round(sum(lengths) / max(1, len(lengths)))))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in length_grouped_order(lengths, typical, seed):
        longer = max(longest, lengths[index])
        if current and longer * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current, longer = [], lengths[index]
        current.append(index)
        longest = longer
    if current:
        batches.append(current)
    return batches


def plan_batches(lengths: Sequence[int], batching: str, *, batch_size: int, tokens_per_batch: int,
                 packing_max_tokens: int, seed: int) -> list[list[int]]:
    """The micro-batches (sample indices) of one of the planned batchings (see the module's description)."""
    if batching == "group_by_length":
        return group_by_length(lengths, batch_size, seed)
    if batching == "tokens_per_batch":
        return token_budget_batches(lengths, tokens_per_batch, seed)
    if batching == "packing":
        return plan_rows(lengths, packing_max_tokens, seed)
    raise ValueError(f"no plan for batching {batching!r}")


def item_lengths(items: Sequence[TrainItem], processor, family: ModelFamily, log: logging.Logger) -> list[int]:
    """Every item's length in tokens: the check step's count where meta.json has it, else counted now the way
    the check step counts (a meta.json written by something else)."""
    missing = [item for item in items if item.tokens is None]
    if missing:
        log.info("%d samples have no token count from the check step: counting them now", len(missing))
    return [item.tokens if item.tokens is not None else
            family.sample_length(processor, media_shape(item.paths, {}, item.media_type, item.max_dynamic_patch),
                                 item.prompt, item.target)
            for item in items]


class PlannedBatches(torch.utils.data.Dataset):
    """A dataset whose items are whole micro-batches of a plan: a list of encoded samples each, which
    :func:`training_collator` makes one batch of (in the data-loading process)."""

    def __init__(self, samples: torch.utils.data.Dataset, plan: list[list[int]]):
        self.samples, self.plan = samples, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> list[dict]:
        return [self.samples[sample] for sample in self.plan[index]]


def learned_logits_only(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with the model asked for logits only where the next token is learned: ``logits_to_keep`` (a
    boolean mask, each row its own positions) and the labels those positions predict (``shift_labels``, which
    the causal-LM loss and the Trainer's ``num_items_in_batch`` take as they are). The loss is the same; the
    vocabulary projection (the largest single term of a small model, and gigabytes of logits for long visual
    sequences) is computed for the answers only."""
    labels = batch["labels"]
    predicted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # the label after each position
    keep = predicted != IGNORE_INDEX
    return {**batch, "logits_to_keep": keep, "shift_labels": predicted[keep]}


def training_collator(pad_token_id: int, planned: bool, packed: bool, family: ModelFamily, model_config=None):
    """What turns the Trainer's batch (samples, or one planned micro-batch) into model inputs: every tensor the
    family's processor returned, batched (``model_config``: for a family whose packed positions need it)."""
    return functools.partial(_collate, pad_token_id=pad_token_id, planned=planned, packed=packed, family=family,
                             model_config=model_config)


def _collate(batch: list, pad_token_id: int, planned: bool, packed: bool, family: ModelFamily,
             model_config=None) -> dict[str, torch.Tensor]:
    if planned:
        (batch,) = batch  # the Trainer's batch of one planned micro-batch
    if packed:
        inputs = collate_packed(batch, family, model_config)
    else:
        inputs = collate(batch, pad_token_id=pad_token_id, padding_side="right", sequence_keys=family.sequence_keys)
    return learned_logits_only(inputs)
