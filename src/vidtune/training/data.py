"""The training data: the records of a meta.json (as the check_training_data step wrote it), repeated as its
``repeat_time`` says, with their lengths in tokens where the check step counted them, and encoded on the fly
by the model's family with the model's own processor."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import torch

from vidtune.errors import DataError
from vidtune.internvl_format import MetaDataset, read_meta, record_media_paths, record_text
from vidtune.families import Media, ModelFamily
from vidtune.modeling import frame_times, load_images


@dataclasses.dataclass(frozen=True)
class TrainItem:
    """One sample: which media files to load and the text around them."""

    id: str
    media_type: str
    paths: tuple[Path, ...]
    prompt: str
    target: str
    max_dynamic_patch: int
    tokens: int | None = None  # text plus visual tokens, as the check step counted them


def repeat_records(records: list[dict], repeat_time: float, seed: int) -> list[dict]:
    """InternVL's repeat_time: whole copies, plus a seeded share of the records for the fraction."""
    whole, fraction = int(repeat_time), repeat_time - int(repeat_time)
    extra = random.Random(seed).sample(records, round(fraction * len(records))) if fraction else []
    return records * whole + extra


def record_lengths(dataset: MetaDataset, meta_dir: Path, count: int) -> list[int | None]:
    """The check step's token count of each of the dataset's records (the entry's ``lengths`` file, in
    record order), or None each where the entry has none."""
    if "lengths" not in dataset.entry:
        return [None] * count
    path = meta_dir / dataset.entry["lengths"]
    try:
        lengths = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the token counts: {error}", file=str(path),
                        fix="re-run the check_training_data step (snakemake reruns it)") from error
    if not isinstance(lengths, list) or len(lengths) != count:
        raise DataError(f"{len(lengths) if isinstance(lengths, list) else 'no'} token counts for {count} records "
                        f"of {dataset.annotation}", file=str(path),
                        fix="re-run the check_training_data step (snakemake reruns it)")
    return lengths


def train_item(record: dict, dataset: MetaDataset, tokens: int | None = None) -> TrainItem:
    """The item of one record; a record without an answer or media fails naming it (the check step leaves
    such records out, so this only happens to data that changed after it, or was never checked)."""
    file, record_id = str(dataset.annotation), str(record.get("id"))
    text = record_text(record, file)
    paths = record_media_paths(record, dataset.root)
    if text.target is None or not paths:
        raise DataError("no gpt turn" if text.target is None else "media not found", file=file, record=record_id,
                        fix="train on the check_training_data step's output (snakemake reruns it)")
    return TrainItem(record_id, text.media_type, tuple(paths), text.prompt, text.target, dataset.max_dynamic_patch,
                     tokens)


def training_items(meta_path: str | Path, seed: int, log: logging.Logger) -> tuple[list[TrainItem], dict]:
    """The items of every dataset of meta.json, each with its dataset's prompt and tiling, and each
    dataset's settings (prompt, frames, tiling) that the trained model keeps, by dataset name."""
    items, datasets = [], {}
    for dataset in read_meta(meta_path):
        datasets[dataset.name] = dataset.model_settings
        records = dataset.records()
        counted = list(zip(records, record_lengths(dataset, Path(meta_path).parent, len(records))))
        items += [train_item(record, dataset, tokens)
                  for record, tokens in repeat_records(counted, dataset.repeat_time, seed)]
    if not items:
        raise DataError("no training sample", file=str(meta_path),
                        fix="see the check step's rejects.jsonl: every sample was left out")
    log.info("%d training samples", len(items))
    return items, datasets


def item_media(item: TrainItem) -> Media:
    """The item's frames or image, decoded (frames with their times where vidtune extracted them)."""
    times = frame_times(item.paths) if item.media_type == "video" else None
    return Media(load_images(item.paths, item.id), item.media_type, times, item.max_dynamic_patch)


class EncodedDataset(torch.utils.data.Dataset):
    """The items, each encoded by the family when the data loader asks for it."""

    def __init__(self, items: list[TrainItem], processor, family: ModelFamily):
        self.items, self.processor, self.family = items, processor, family

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return self.family.encode(self.processor, item_media(item), item.prompt, item.target)
