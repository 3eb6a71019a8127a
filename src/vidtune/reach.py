"""Which workflow steps each configuration key reaches, and the settings each step is given.

Every leaf key of the config schema carries ``x-reaches``: the rules whose output the key can change
(``[]`` for job limits, which go to ``resources:``), and ``x-why`` where that is not obvious. This module
reads that one declared map. A rule's ``params:`` are built from it by :func:`settings_for`: exactly the
keys that reach the rule, in a canonical form (keys sorted, numbers typed by the schema, so ``300`` and
``300.0`` are one value), so Snakemake's comparison of params makes a job stale exactly when a setting
that changes its output changed, and never for key order, formatting or a resource limit.

A mapping of free keys (``trainer_args``) may name, as ``x-reaches-by-key``, a function that says of each
key whether it reaches the mapping's rules: the keys it turns down reach none (:func:`settings_for` leaves
them out).

The report's configuration page lists the settings that made a run's model and predictions, so every key
that reaches ``check_training_data``, ``train``, ``predict_base`` or ``predict_finetuned`` also reaches
``report_run`` (:data:`SHOWN_WITH`).
"""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vidtune.config import _schema

ANY = "*"  # a named entry: datasets.<name>, models.<name>, runs.<name>
CONFIG_PAGE = "report_run"
SHOWN_WITH = {"check_training_data", "train", "predict_base", "predict_finetuned"}
# Keys that reach training without changing the trained weights: the checkpoint fingerprint leaves them out.
NOT_IN_WEIGHTS = {("runs", ANY, "training", "logging_steps")}


@dataclass(frozen=True)
class Leaf:
    """One settable key of the configuration, with the rules it reaches."""

    path: tuple[str, ...]
    type: str | None
    reaches: tuple[str, ...]
    why: str | None
    canonical: str | None
    schema: dict = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return ".".join("<name>" if part == ANY else part for part in self.path)


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        node = _schema()["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _walk(node: dict, path: tuple[str, ...]) -> Iterator[Leaf]:
    node = _resolve(node)
    if "x-reaches" in node:
        reaches = set(node["x-reaches"])
        if reaches & SHOWN_WITH:
            reaches.add(CONFIG_PAGE)
        yield Leaf(path, node.get("type"), tuple(sorted(reaches)), node.get("x-why"), node.get("x-canonical"),
                   node)
        return
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, path + (name,))
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], path + (ANY,))


@functools.cache
def leaves() -> tuple[Leaf, ...]:
    """Every leaf key of the schema, in schema order."""
    return tuple(_walk(_schema(), ()))


def undeclared_leaves() -> list[str]:
    """Schema keys that are neither objects with properties nor annotated with x-reaches (a test checks none)."""
    missing = []

    def walk(node: dict, path: tuple[str, ...]) -> None:
        node = _resolve(node)
        if "x-reaches" in node:
            return
        children = node.get("properties", {})
        extra = node.get("additionalProperties")
        if not children and not isinstance(extra, dict):
            missing.append(".".join(path))
        for name, child in children.items():
            walk(child, path + (name,))
        if isinstance(extra, dict):
            walk(extra, path + (ANY,))

    walk(_schema(), ())
    return missing


def canonical(value: Any, leaf: Leaf | None = None) -> Any:
    """The value as the schema types it, with mappings sorted by key, so equal settings compare equal."""
    if leaf is not None and leaf.canonical == "nonzero":
        return bool(value)
    if leaf is not None and leaf.type == "number" and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def _by_key(leaf: Leaf, value: Any) -> Any:
    """A mapping leaf's keys that reach its rules (``x-reaches-by-key``); other values as they are."""
    name = leaf.schema.get("x-reaches-by-key")
    if name is None or not isinstance(value, dict):
        return value
    module, function = name.rsplit(".", 1)
    reaches = getattr(importlib.import_module(module), function)
    return {key: item for key, item in value.items() if reaches(key)}


def settings_for(rule: str, entry: dict, *section: str) -> dict:
    """The keys of one config entry that reach ``rule``, canonical and nested as in the config.

    ``section`` is where ``entry`` sits in the config with names replaced by ``*``: ``("datasets", "*")``
    for a dataset's entry, ``("runs", "*", "training")`` for a run's training block, ``("demo",)``.
    """
    settings: dict = {}
    for leaf in leaves():
        if leaf.path[:len(section)] != section or rule not in leaf.reaches:
            continue
        relative = leaf.path[len(section):]
        value: Any = entry
        for part in relative:
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            target = settings
            for part in relative[:-1]:
                target = target.setdefault(part, {})
            target[relative[-1]] = canonical(_by_key(leaf, value), leaf)
    return canonical(settings)


def weight_settings(training: dict) -> dict:
    """A run's training settings (as :func:`settings_for` gives them to ``train``) that change the trained
    weights: what the training checkpoints' fingerprint covers."""
    return {key: value for key, value in training.items()
            if ("runs", ANY, "training", key) not in NOT_IN_WEIGHTS}


def reach_table() -> str:
    """The README's "what reruns when" table, in Markdown, generated from the schema."""
    rows = ["| setting | steps it makes stale | why |", "| --- | --- | --- |"]
    for leaf in leaves():
        reaches = ", ".join(f"`{rule}`" for rule in leaf.reaches) or "nothing (job limit)"
        rows.append(f"| `{leaf.name}` | {reaches} | {leaf.why or ''} |")
    return "\n".join(rows) + "\n"


TABLE_START, TABLE_END = "<!-- reach-table:start -->\n", "<!-- reach-table:end -->"


def update_readme(path: str) -> None:
    """Rewrite the generated table between the README's markers."""
    text = Path(path).read_text(encoding="utf-8")
    head, rest = text.split(TABLE_START, 1)
    Path(path).write_text(head + TABLE_START + reach_table() + TABLE_END + rest.split(TABLE_END, 1)[1],
                          encoding="utf-8")


if __name__ == "__main__":  # python -m vidtune.reach [README.md]: print the table, or update the README's
    if len(sys.argv) > 1:
        update_readme(sys.argv[1])
    else:
        print(reach_table(), end="")
