"""Train/val/test assignment that stays put as data grows.

A sample's split depends only on ``(seed, group key)``: the group key is hashed to a number in [0, 1)
and compared with the cumulative ratios. So the same data always gives the same split, adding samples
never moves an existing one, and all samples of a group (the clips of one source video) share a split.

Official splits win (``use_official``): a sample that carries one keeps it, and the other samples of its
group follow it (the group's most common official split), so a group never straddles splits.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

from vidtune.config import schema_defaults
from vidtune.errors import ConfigError
from vidtune.samples import SPLITS, Sample

DEFAULTS = schema_defaults("split")


def hash_fraction(seed: int, group_key: str) -> float:
    """A uniform number in [0, 1) from (seed, group key), the same on every machine and Python run."""
    digest = hashlib.sha256(f"{seed}\x00{group_key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for(fraction: float, ratios: dict[str, float]) -> str:
    total = sum(ratios[name] for name in SPLITS)
    edge = 0.0
    for name in SPLITS:
        edge += ratios[name] / total
        if fraction < edge:
            return name
    return next(name for name in reversed(SPLITS) if ratios[name] > 0)  # rounding at the top edge


def assign_splits(samples: list[Sample], split_cfg: dict) -> list[str]:
    """The split of each sample, in the order given."""
    cfg = {**DEFAULTS, **(split_cfg or {})}
    ratios = {name: float(cfg[name]) for name in SPLITS}
    if sum(ratios.values()) <= 0:
        raise ConfigError("split ratios train + val + test add up to 0",
                          fix="give at least one of split.train, split.val, split.test a positive share")
    official: dict[str, Counter] = defaultdict(Counter)
    if cfg["use_official"]:
        for sample in samples:
            if sample.official_split in SPLITS:
                official[sample.group_key][sample.official_split] += 1
    splits = []
    for sample in samples:
        if cfg["use_official"] and sample.official_split in SPLITS:
            splits.append(sample.official_split)
        elif sample.group_key in official:
            # Most common official split of the group; ties broken by name so the result is stable.
            counts = official[sample.group_key]
            splits.append(min(counts, key=lambda name: (-counts[name], name)))
        else:
            splits.append(split_for(hash_fraction(int(cfg["seed"]), sample.group_key), ratios))
    return splits
