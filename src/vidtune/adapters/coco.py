"""``coco``: InternVL's COCO Karpathy caption files (images).

Layout (InternVL's ``data/coco``)::

    <root>/annotations/coco_karpathy_train_567k.jsonl  InternVL conversations, one caption per line:
                                                       {"id", "image": "train2014/COCO_train2014_...jpg",
                                                        "conversations": [human, gpt]}
    <root>/annotations/coco_karpathy_test.json         [{"image": "val2014/COCO_val2014_000000391895.jpg"}]
    <root>/annotations/coco_karpathy_test_gt.json      COCO format: {"annotations": [{"image_id", "caption"}]}
    <root>/train2014/, <root>/val2014/                 the images

Image ids are parsed from the file names (``..._000000391895.jpg`` -> 391895). Training lines keep their
own prompt and caption; their references are all training captions of the image. Test samples take the
first ground-truth caption as target and keep all of them as references. Official splits: train, test.
Set ``train_file`` or ``test_file`` to null to leave that part out.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from vidtune.adapters.base import REPAIR, iter_jsonl, option_file, parse_options, reason, sample, shape_error
from vidtune.adapters.table import TableOptions, record_sample
from vidtune.atomic import read_json
from vidtune.config import schema_defaults
from vidtune.samples import Reject, Sample

_IMAGE_ID = re.compile(r"(\d+)\.[A-Za-z]+$")
TRAIN_FIELDS = TableOptions(**schema_defaults("table_options"))  # the training JSONL is InternVL's own


@dataclasses.dataclass(frozen=True)
class CocoOptions:
    """The config schema's coco_options (descriptions and defaults there)."""

    train_file: str | None
    test_file: str | None
    test_gt_file: str


def image_id(path: str) -> int:
    """COCO's image id from a file name like ``COCO_val2014_000000391895.jpg``; ValueError if none."""
    match = _IMAGE_ID.search(path)
    if not match:
        raise ValueError(f"no image id in file name {path!r}")
    return int(match.group(1))


def read(name: str, cfg: dict) -> Iterator[Sample | Reject]:
    options = parse_options(name, cfg, CocoOptions)
    if options.train_file:
        yield from _train(name, cfg, option_file(name, cfg, "train_file", options.train_file))
    if options.test_file:
        yield from _test(name, cfg, option_file(name, cfg, "test_file", options.test_file),
                         option_file(name, cfg, "test_gt_file", options.test_gt_file))


def _train(name: str, cfg: dict, path: Path) -> Iterator[Sample | Reject]:
    parsed: list[Sample | Reject] = []
    for label, row in iter_jsonl(path):
        if isinstance(row, dict):
            row = {key: value for key, value in row.items() if key != "id"}  # ids are per line, not stable
        parsed.append(row if isinstance(row, Reject) else
                      record_sample(name, cfg, TRAIN_FIELDS, path, label, row))
    captions: dict[int, list[str]] = defaultdict(list)
    keyed: list[tuple[Sample | Reject, int | None]] = []
    for item in parsed:
        if isinstance(item, Reject):
            keyed.append((item, None))
            continue
        try:
            number = image_id(item.media_path)
        except ValueError as error:
            record = item.source.rsplit(":", 1)[-1]
            keyed.append((Reject(str(path), record, reason("malformed_record", str(error))), None))
            continue
        captions[number].append(item.target)
        keyed.append((item, number))
    seen: dict[int, int] = defaultdict(int)
    for item, number in keyed:
        if number is None:
            yield item
            continue
        # One sample per caption line; the n-th caption of an image is id train/<image id>/<n>.
        index = seen[number]
        seen[number] += 1
        yield dataclasses.replace(item, sample_id=f"{name}/train/{number}/{index}",
                                  references=tuple(captions[number]), group_key=str(number),
                                  official_split="train")


def _test(name: str, cfg: dict, path: Path, gt_path: Path) -> Iterator[Sample | Reject]:
    entries, gt = read_json(path, REPAIR), read_json(gt_path, REPAIR)
    if not isinstance(entries, list):
        raise shape_error(path, "a JSON list of {\"image\": ...} records")
    if not (isinstance(gt, dict) and isinstance(gt.get("annotations"), list)):
        raise shape_error(gt_path, "COCO annotation format with an \"annotations\" list")
    references: dict[int, list[str]] = defaultdict(list)
    for annotation in gt["annotations"]:
        if isinstance(annotation, dict) and isinstance(annotation.get("caption"), str):
            references[annotation.get("image_id")].append(annotation["caption"].strip())
    for index, entry in enumerate(entries):
        label = f"[{index}]"
        try:
            image = entry["image"]
            number = image_id(image)
        except (KeyError, TypeError) as error:
            yield Reject(str(path), label, reason("missing_field", f"no image: {error!r}"))
            continue
        except ValueError as error:
            yield Reject(str(path), label, reason("malformed_record", str(error)))
            continue
        captions = tuple(c for c in references.get(number, []) if c)
        if not captions:
            yield Reject(str(path), label, reason("empty_target", f"no caption for image {number} in {gt_path}"))
            continue
        yield sample(name, cfg, f"test/{number}", media_type="image", media_path=image, target=captions[0],
                     references=captions, group_key=str(number), official_split="test",
                     source=f"{path}:{label}")
