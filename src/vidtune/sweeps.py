"""Sweeps: one run entry that names settings to vary expands into one named run per combination.

A run's ``sweep`` maps a setting to its values. Keys are paths inside the run (``training.lora.rank``,
``training.learning_rate``, ``model``, ``datasets``) or a setting of one of the run's datasets
(``datasets.<name>.frames.num_frames``). Every combination becomes a run named after its values,
``<run>@<key>=<value>+<key>=<value>`` with the keys sorted, so a name is stable and filesystem-safe. A
dataset setting makes a derived dataset named the same way (``demo@frames.num_frames=8``).

Each value is checked against the setting's own schema, and the expanded runs are what the rest of the
workflow sees: steps that a varied setting does not reach are shared by the runs, as for hand-written ones.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

from jsonschema import Draft202012Validator

from vidtune.errors import ConfigError
from vidtune.reach import ANY, canonical, leaves

SEPARATOR, JOIN = "@", "+"
_SAFE = re.compile(r"[A-Za-z0-9._,-]+")
_FIX = ("name a leaf setting of the run (training.lora.rank, training.learning_rate, evaluation.num_beams, "
        "model, datasets) or of one of its datasets (datasets.<name>.frames.num_frames), with a list of values")


def _leaf(path: tuple[str, ...]):
    return next((leaf for leaf in leaves() if leaf.path == path), None)


def label(value: Any) -> str:
    """A value as it appears in a run or dataset name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(label(item) for item in value)
    return repr(value) if isinstance(value, float) else str(value)


def _set(entry: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        entry = entry.setdefault(part, {})
    entry[path[-1]] = value


def _target(run_name: str, run: dict, key: str, config_file: str) -> tuple[str | None, list[str], Any]:
    """(dataset name or None, path inside the run or dataset, the setting's leaf) of a sweep key."""
    parts = key.split(".")
    where = f"runs.{run_name}.sweep.{key}"
    if parts[0] == "datasets" and len(parts) > 2:
        dataset, path = parts[1], parts[2:]
        if dataset not in run["datasets"]:
            raise ConfigError(f"{where}: the run does not use dataset '{dataset}'", file=config_file,
                              fix=f"vary a setting of one of its datasets: {', '.join(run['datasets'])}")
        if "datasets" in run.get("sweep", {}):
            raise ConfigError(f"{where}: a dataset setting cannot be varied together with the datasets",
                              file=config_file, fix="sweep one of the two")
        leaf = _leaf(("datasets", ANY, *path))
    else:
        dataset, path = None, parts
        leaf = _leaf(("runs", ANY, *path)) if parts != ["sweep"] else None
    if leaf is None:
        raise ConfigError(f"{where}: '{key}' is not a setting that can be varied", file=config_file, fix=_FIX)
    return dataset, path, leaf


def expand_sweeps(config: dict, config_file: str = "config") -> tuple[dict, dict[str, dict[str, Any]]]:
    """The config with every swept run replaced by its expanded runs (and derived datasets), and for each
    run the swept settings and their values (``{}`` for a hand-written run). ``config`` has the schema's
    defaults filled in; it is not changed."""
    config = copy.deepcopy(config)
    runs: dict[str, dict] = {}
    swept: dict[str, dict[str, Any]] = {}
    for name, run in config["runs"].items():
        sweep = run.pop("sweep", None)
        if not sweep:
            runs[name], swept[name] = run, {}
            continue
        keys = sorted(sweep)
        targets = {key: _target(name, {**run, "sweep": sweep}, key, config_file) for key in keys}
        for key in keys:
            leaf = targets[key][2]
            values = sweep[key]
            for value in values:
                error = next(iter(Draft202012Validator(leaf.schema).iter_errors(value)), None)
                if error is not None:
                    raise ConfigError(f"runs.{name}.sweep.{key}: value {value!r}: {error.message}",
                                      file=config_file, fix="give values the setting itself accepts")
            labels = [label(canonical(value, leaf)) for value in values]
            bad = [text for text in labels if not _SAFE.fullmatch(text)]
            if bad:
                raise ConfigError(f"runs.{name}.sweep.{key}: value '{bad[0]}' cannot be part of a run name",
                                  file=config_file, fix="use values of letters, digits and . _ , -")
            if len(set(labels)) != len(labels):
                raise ConfigError(f"runs.{name}.sweep.{key}: values repeat ({', '.join(labels)})",
                                  file=config_file, fix="list each value once")
        for combination in itertools.product(*(sweep[key] for key in keys)):
            expanded = copy.deepcopy(run)
            derived: dict[str, list[tuple[str, list[str], Any]]] = {}
            values: dict[str, Any] = {}
            for key, value in zip(keys, combination):
                dataset, path, leaf = targets[key]
                values[key] = canonical(value, leaf)
                if dataset is None:
                    _set(expanded, path, copy.deepcopy(value))
                else:
                    derived.setdefault(dataset, []).append((".".join(path), path, value))
            for dataset, settings in derived.items():
                derived_name = dataset + SEPARATOR + JOIN.join(
                    f"{key}={label(canonical(value, _leaf(('datasets', ANY, *path))))}"
                    for key, path, value in settings)
                entry = copy.deepcopy(config["datasets"][dataset])
                for _, path, value in settings:
                    _set(entry, path, copy.deepcopy(value))
                config["datasets"].setdefault(derived_name, entry)
                expanded["datasets"] = [derived_name if d == dataset else d for d in expanded["datasets"]]
            run_name = name + SEPARATOR + JOIN.join(f"{key}={label(value)}" for key, value in values.items())
            if run_name in config["runs"] or run_name in runs:
                raise ConfigError(f"runs.{name}.sweep makes a run named {run_name}, which already exists",
                                  file=config_file, fix="rename the hand-written run")
            runs[run_name], swept[run_name] = expanded, values
    config["runs"] = runs
    return config, swept
