"""Prediction shards: which test records each prediction job answers, and joining the jobs' answers.

Kept free of torch so the workflow can name base predictions at parse time. A shard is a run of whole
batches of the id-sorted records, so every batch, and so every answer, is the same for any shard count.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from vidtune.config import schema_defaults
from vidtune.reach import ANY, settings_for

EVALUATION_DEFAULTS = schema_defaults("evaluation")


def prediction_settings(evaluation: dict) -> dict:
    """The evaluation settings base predictions depend on: those that reach predict_base (the schema's
    x-reaches), with the schema's defaults, canonical."""
    return settings_for("predict_base", {**EVALUATION_DEFAULTS, **evaluation}, "runs", ANY, "evaluation")


def evaluation_key(datasets: Sequence[str], evaluation: dict) -> str:
    """A name for (datasets, prediction settings): runs with the same base model and the same key share
    their base predictions. Readable split, then a digest of the rest."""
    settings = prediction_settings(evaluation)
    canonical = json.dumps({"datasets": sorted(datasets), **settings}, sort_keys=True)
    return f"{settings['split']}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def shard_records(records: list[dict], batch_size: int, shards: int, shard: int) -> list[dict]:
    """The records of one prediction shard: sorted by id, cut into whole batches, consecutive batches per
    shard. Every batch is the same whatever the shard count, so the joined predictions are too."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    ordered = sorted(records, key=lambda record: str(record.get("id")))
    batches = -(-len(ordered) // batch_size)
    first, last = shard * batches // shards, (shard + 1) * batches // shards
    return ordered[first * batch_size:last * batch_size]


def join_predictions(shards: Sequence[list[dict]]) -> list[dict]:
    """The shards' predictions as one list sorted by id; an id predicted twice is an error."""
    joined = sorted((entry for shard in shards for entry in shard), key=lambda entry: str(entry["id"]))
    for previous, entry in zip(joined, joined[1:]):
        if previous["id"] == entry["id"]:
            raise ValueError(f"sample {entry['id']} is in two prediction shards")
    return joined
