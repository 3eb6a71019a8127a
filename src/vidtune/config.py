"""The configuration's schema and the checks on it that a JSON schema cannot express.

The schema (``config.schema.yaml`` beside this module, also reachable as workflow/schemas/config.schema.yaml)
checks keys and types and holds every default; :func:`schema_defaults` gives them to the library, so code
used outside Snakemake defaults exactly as the workflow does. :func:`check_config` checks what the keys refer
to: datasets and models that runs name, folders that must exist, model folders that must be models, and a
run's training settings against the installed transformers (vidtune.training.settings.check_training). Both
run when the workflow is parsed, so a bad config fails before any job starts.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import yaml

from vidtune.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def schema_defaults(definition: str) -> dict:
    """The defaults of one of the schema's definitions (``training``, ``frames``...), one level deep (a copy:
    the caller may change it)."""
    properties = _schema()["definitions"][definition]["properties"]
    return copy.deepcopy({name: spec["default"] for name, spec in properties.items() if "default" in spec})


def options_definition(fmt: str) -> str:
    """The schema definition of a dataset format's ``options`` (``ego4d_options``, ``table_options``...)."""
    for rule in _schema()["definitions"]["dataset"]["allOf"]:
        formats = rule["if"]["properties"]["format"]
        if fmt in formats.get("enum", [formats.get("const")]):
            return rule["then"]["properties"]["options"]["$ref"].rsplit("/", 1)[1]
    raise ConfigError(f"unknown dataset format {fmt!r}")


def check_against_schema(value, definition: str, where: str) -> None:
    """Check a value against one of the schema's definitions, as the workflow does when it is parsed, for
    library use outside Snakemake: :class:`ConfigError` naming the key (``where`` + its path) at fault."""
    import jsonschema

    schema = {"definitions": _schema()["definitions"], "$ref": f"#/definitions/{definition}"}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return
    key = ".".join([where, *map(str, error.absolute_path)])
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        unknown = sorted(set(error.instance) - set(known))
        raise ConfigError(f"unknown key {key}.{unknown[0]}", fix=f"use one of: {', '.join(known)}")
    raise ConfigError(f"{key}: {error.message}", fix="see the key's description in the config schema")

# Dataset formats whose files the workflow generates itself, so they need not exist at parse time.
GENERATED_FORMATS = {"demo"}


def check_config(config: dict, config_file: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key at fault, or return quietly."""
    datasets, models, runs = config["datasets"], config.get("models", {}), config.get("runs", {})
    for name, dataset in datasets.items():
        if dataset["format"] in GENERATED_FORMATS:
            continue
        root = Path(dataset["root"])
        if not root.is_dir():
            raise ConfigError(f"datasets.{name}.root: folder {root} does not exist", file=config_file,
                              fix="point root at the dataset's folder (absolute, or relative to the "
                                  "working directory)")
        annotations = dataset.get("annotations")
        if annotations and not Path(annotations).is_file():
            raise ConfigError(f"datasets.{name}.annotations: file {annotations} does not exist",
                              file=config_file, fix="point annotations at the dataset's annotation file")
    for name, model in models.items():
        if "path" in model:
            check_model_folder(model["path"], f"models.{name}.path", config_file)
    for name, run in runs.items():
        for dataset in run["datasets"]:
            if dataset not in datasets:
                raise ConfigError(
                    f"runs.{name}.datasets names '{dataset}', which is not defined under datasets",
                    file=config_file, fix=f"define datasets.{dataset} or use one of: {', '.join(datasets)}")
        if run["model"] not in models:
            raise ConfigError(f"runs.{name}.model names '{run['model']}', which is not defined under models",
                              file=config_file, fix=f"define models.{run['model']} or use one of: "
                                                    f"{', '.join(models)}")
        if run["evaluation"]["split"] == "val" and all(datasets[d]["split"]["val"] == 0 for d in run["datasets"]):
            raise ConfigError(f"runs.{name}.evaluation.split is val but every dataset has a val ratio of 0",
                              file=config_file, fix="give a dataset a val ratio or evaluate on test")
        from vidtune.training.settings import check_training  # transformers only for a run's trainer_args

        check_training(run["training"], f"runs.{name}.training", config_file)


def model_folder_problem(path: str | Path) -> tuple[str, str] | None:
    """What keeps ``path`` from being a model folder (a transformers config.json with a model_type, and
    safetensors weights), with the fix; None when it is one."""
    folder = Path(path)
    if not folder.is_dir():
        return "model folder does not exist", "give the path of a local checkpoint folder (nothing is downloaded)"
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if not model_type:
        return ("not a model folder (no config.json with a model_type)",
                "point it at a checkpoint folder as downloaded, such as a local copy of OpenGVLab/InternVL3-8B "
                "or OpenGVLab/InternVL3-8B-hf")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        return ("no .safetensors weights in the model folder",
                "convert the checkpoint to safetensors; pickled weights are not loaded")
    return None


def check_model_folder(path: str | Path, key: str, config_file: str = "config") -> None:
    """Fails at parse time, naming the key, when a configured model path is not a model folder, or is an
    original-layout InternVL folder that cannot be converted to the native class."""
    from vidtune.internvl_checkpoint.layout import (UnsupportedCheckpoint, is_original_layout,
                                                    read_original_checkpoint, supported_summary)

    from vidtune.errors import ModelError
    from vidtune.families import family_for_folder

    problem = model_folder_problem(path)
    if problem:
        raise ConfigError(f"{key}: {path}: {problem[0]}", file=config_file, fix=problem[1])
    try:
        family_for_folder(path)
    except ModelError as error:
        raise ConfigError(f"{key}: {error.problem}", file=error.file, fix=error.fix) from None
    if is_original_layout(path):
        try:
            read_original_checkpoint(path)
        except UnsupportedCheckpoint as error:
            raise ConfigError(f"{key}: {path} is an InternVL checkpoint in the original layout, but {error}",
                              file=config_file,
                              fix=f"use a supported checkpoint ({supported_summary()}) or its -hf conversion") \
                from None
