"""Model families: a registry of the modules of this package, each defining ``FAMILY`` (a
:class:`~vidtune.families.base.ModelFamily`), found by name or by a model folder's config.json.

A new family is a new module here; nothing else registers it (docs/families.md).
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from pathlib import Path

from vidtune.errors import ConfigError, ModelError
from vidtune.families.base import Media, MediaShape, ModelFamily

DEFAULT_FAMILY = "internvl"  # a tiny model or architecture entry that names no family
__all__ = ["DEFAULT_FAMILY", "Media", "MediaShape", "ModelFamily", "all_families", "family",
           "family_for_architecture", "family_for_folder"]


@functools.cache
def all_families() -> dict[str, ModelFamily]:
    """Every family of this package, by name."""
    families = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        found = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FAMILY", None)
        if isinstance(found, ModelFamily):
            families[found.name] = found
    return dict(sorted(families.items()))


def family(name: str) -> ModelFamily:
    """The family called ``name``."""
    families = all_families()
    if name not in families:
        raise ConfigError(f"unknown model family {name!r}", fix=f"use one of: {', '.join(families)}")
    return families[name]


def family_for_architecture(name: str) -> ModelFamily:
    """The family that builds the architecture called ``name`` (the schema's architecture names)."""
    for candidate in all_families().values():
        if name in candidate.architectures:
            return candidate
    known = [arch for candidate in all_families().values() for arch in candidate.architectures]
    raise ConfigError(f"unknown architecture {name!r}", fix=f"use one of: {', '.join(known)}")


def family_for_folder(path: str | Path) -> ModelFamily:
    """The family of a model folder, from its config.json's ``model_type``."""
    config_path = Path(path) / "config.json"
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError as error:
        raise ModelError("no config.json in the model folder", file=config_path,
                         fix="point at a checkpoint folder (config.json, weights, tokenizer, processor)") from error
    except (OSError, ValueError, AttributeError) as error:
        raise ModelError(f"cannot read the model's config: {error}", file=config_path,
                         fix="re-download or rebuild the checkpoint") from error
    for candidate in all_families().values():
        if model_type in candidate.model_types:
            return candidate
    supported = "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in all_families().values())
    raise ModelError(f"model_type {model_type!r} is not of a supported model family", file=config_path,
                     fix=f"use a checkpoint of a supported family: {supported}")
