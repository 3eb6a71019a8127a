# Configuration, validation and the small helpers every rule file uses.

import json
import math
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the vidtune package, also when not installed

from vidtune.config import check_config, GENERATED_FORMATS
from vidtune.errors import ConfigError
from vidtune.fingerprint import folder_fingerprint
from vidtune.internvl_checkpoint.layout import is_original_layout
from vidtune.prediction_shards import evaluation_key, prediction_settings
from vidtune.reach import ANY, settings_for
from vidtune import resources as job_resources
from vidtune.slurm_preflight import PreflightError, explain_refusals, parse_minutes, preflight
from vidtune.sweeps import expand_sweeps

validate(config, schema="../workflow/schemas/config.schema.yaml", set_default=True)
CONFIG_FILE = (workflow.configfiles or ["config"])[-1]  # named in configuration errors
try:
    # A swept run becomes its named runs here: everything below sees only runs as if written by hand.
    expanded, SWEPT = expand_sweeps(config, config_file=CONFIG_FILE)
    config.update(expanded)
    check_config(config, config_file=CONFIG_FILE)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = config["results"]
RUNS = sorted(config["runs"])
# The datasets the runs use; a config of datasets only (no runs, no models) prepares every one of them.
USED_DATASETS = sorted({d for run in config["runs"].values() for d in run["datasets"]} if RUNS else config["datasets"])
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


wildcard_constraints:
    dataset=r"[^/]+",
    run=r"[^/]+",
    model=r"[^/]+",
    shard=r"\d{3}",
    evaluation=r"[^/]+",
    split="train|val|test",


# A rule's params are exactly the settings that reach it (the `x-reaches` map of the config schema, read by
# vidtune.reach), in a canonical form: a change to any other key, to key order or to formatting makes the
# job no staler. Job limits go to resources, which never make a job stale.


def dataset_settings(rule):
    """params: the job's dataset settings that reach `rule`."""
    return lambda wildcards: settings_for(rule, config["datasets"][wildcards.dataset], "datasets", ANY)


def run_datasets_settings(rule):
    """params: for each dataset of the job's run, its settings that reach `rule`."""
    return lambda wildcards: {
        name: settings_for(rule, config["datasets"][name], "datasets", ANY) for name in run_datasets(wildcards)
    }


def run_settings(rule, *part):
    """params: the job's run settings (runs.<run>.<part>) that reach `rule`."""

    def settings(wildcards):
        entry = config["runs"][wildcards.run]
        for key in part:
            entry = entry[key]
        return settings_for(rule, entry, "runs", ANY, *part)

    return settings


def model_settings(rule):
    """params: the settings of the job's model (its `model` wildcard, or its run's model) that reach `rule`."""

    def settings(wildcards):
        name = wildcards.model if "model" in wildcards.keys() else config["runs"][wildcards.run]["model"]
        return settings_for(rule, config["models"][name], "models", ANY)

    return settings


def shard_names(count):
    return [f"{shard:03d}" for shard in range(count)]


def shard_ids(dataset):
    return shard_names(config["datasets"][dataset]["shards"])


# Checkpoints in InternVL's original layout (model_type internvl_chat): converted once to the native class.
ORIGINAL_LAYOUT_MODELS = sorted(
    name for name, model in config["models"].items() if "path" in model and is_original_layout(model["path"])
)


def model_folder(name):
    """The folder every model step loads: a checkpoint given by path where it is, a converted one or a built
    one under results/models."""
    model = config["models"][name]
    return model["path"] if "path" in model and name not in ORIGINAL_LAYOUT_MODELS else f"{RESULTS}/models/{name}"


def model_source_contents(wildcards):
    """params: a hash of the original checkpoint's contents (files re-read only when their size or
    modification time changed), so new weights convert again and a touched, unchanged folder does not."""
    return folder_fingerprint(config["models"][wildcards.model]["path"], f"{RESULTS}/cache/model_sources/{wildcards.model}.json")


def run_model_folder(wildcards):
    return model_folder(config["runs"][wildcards.run]["model"])


def run_datasets_of(run):
    return config["runs"][run]["datasets"]


def run_datasets(wildcards):
    return run_datasets_of(wildcards.run)


def run_threads(section):
    """CPU runs of small models are fastest single-threaded on shared machines; GPU jobs feed loaders."""

    def threads(wildcards):
        gpus = config["runs"][wildcards.run][section]["gpus"]
        return 1 if gpus == 0 else min(8, 4 * gpus)

    return threads


def model_size(name):
    """A configured model's size (vidtune.resources.ModelSize): its folder's weights (the folder as given: a
    converted one does not exist yet when the workflow is parsed), or what a build makes."""
    return job_resources.model_size(config["models"][name], config["models"][name].get("path") or model_folder(name))


def model_memory(kind, model_of=lambda wildcards: config["runs"][wildcards.run]["model"]):
    """resources: mem_mb of a `kind` job (vidtune.resources.MEMORY) on the job's model, larger on a retry."""

    def mem_mb(wildcards, attempt):
        return job_resources.memory_mb(kind, model_size(model_of(wildcards)), attempt)

    return mem_mb


def train_memory(wildcards, attempt):
    """resources: mem_mb of a train job (per node), from the run's model and training method."""
    size = model_size(config["runs"][wildcards.run]["model"])
    return job_resources.train_memory_mb(size, config["runs"][wildcards.run]["training"], attempt,
                                         threads=run_threads("training")(wildcards))


def site_resource(rule, name):
    """A constant the profile's site block gives `rule` (its set-resources, else default-resources), or None
    (no such line, or no profile)."""
    settings = workflow.resource_settings
    for resources in ((settings.overwrite_resources or {}).get(rule) or {}, settings.default_resources or {}):
        value = resources.get(name)
        value = getattr(value, "value", value)  # Snakemake's parsed Resource, or a plain value (the API)
        if value is not None:
            return value
    return None


def train_runtime(needed_only=False):
    """resources: the time limit (minutes) of a train job, from its steps and the data its files show now
    (Snakemake evaluates it again when the job's inputs exist, before submitting it), larger on a retry and
    never above the site block's `runtime_limit` (training resumes from its checkpoints); with needed_only,
    what the steps need, before the retry and the limit (the preflight's note)."""

    def runtime(wildcards, attempt):
        run = config["runs"][wildcards.run]
        size = model_size(run["model"])
        data = job_resources.training_data(
            expand(rules.check_training_data.output.lengths, run=wildcards.run, dataset=run["datasets"]),
            expand(rules.internvl_files.output.train, dataset=run["datasets"]),
        )
        if needed_only:
            return job_resources.train_runtime_needed_min(size, run["training"], data)
        limit = site_resource("train", "runtime_limit")  # minutes; a string in SLURM's notation works too
        limit_min = None if limit is None else parse_minutes(str(limit))
        return job_resources.train_runtime_min(size, run["training"], data, attempt, limit_min)

    return runtime


def streaming_memory(folder_of):
    """resources: mem_mb of a job that converts the checkpoint folder_of(wildcards) one weight file at a time."""
    return lambda wildcards, attempt: job_resources.streaming_memory_mb(
        job_resources.largest_weight_file_bytes(folder_of(wildcards)), attempt
    )


def run_gpus(section):
    def gpus(wildcards):
        return config["runs"][wildcards.run][section]["gpus"]

    return gpus


def train_multi_node(value):
    """A train resource that only a job of several nodes has (None: the job does not ask for it)."""

    def resource(wildcards):
        training = config["runs"][wildcards.run]["training"]
        return value(training) if training["nodes"] > 1 else None

    return resource


def ingest_inputs(wildcards):
    dataset = config["datasets"][wildcards.dataset]
    if dataset["format"] in GENERATED_FORMATS:
        return {"annotations": rules.make_demo_dataset.output.annotations}
    return {"annotations": dataset["annotations"]} if dataset.get("annotations") else {}


def shard_manifest(wildcards):
    return checkpoints.frame_manifest.get(dataset=wildcards.dataset, shard=wildcards.shard).output.manifest


def split_files(datasets, split):
    """The datasets' JSONL files of one split, through the checkpoint."""
    return [getattr(checkpoints.internvl_files.get(dataset=dataset).output, split) for dataset in datasets]


def dataset_split_file(split):
    """Input function: the run's datasets' JSONL files of one split."""

    def files(wildcards):
        return split_files(config["runs"][wildcards.run]["datasets"], split)

    return files


def checked_training_records(wildcards):
    """The run's datasets' checked training records, through the check_training_data checkpoint.

    Asked through the internvl_files checkpoint first: Snakemake plans again, after a checkpoint has run, only
    the jobs that ask for its files; a job planned while both checkpoints were pending would otherwise keep
    its first plan and inputs (and run) even where the new JSONL files leave the check with nothing to do."""
    split_files(run_datasets(wildcards), "train")
    return [
        checkpoints.check_training_data.get(run=wildcards.run, dataset=dataset).output.records
        for dataset in run_datasets(wildcards)
    ]


def evaluation_files(wildcards):
    """The run's evaluation records, one file per dataset in the order of their sorted names (as the predict
    script pairs them with the datasets' settings)."""
    run = config["runs"][wildcards.run]
    return split_files(sorted(run["datasets"]), run["evaluation"]["split"])


def _base_evaluations():
    """(model, evaluation key) -> the datasets, prediction settings and GPUs of a base prediction; runs with
    the same base model, datasets and prediction settings share one."""
    evaluations = {}
    for name in RUNS:
        run = config["runs"][name]
        key = (run["model"], evaluation_key(run["datasets"], run["evaluation"]))
        entry = evaluations.setdefault(
            key,
            {
                "datasets": sorted(run["datasets"]),
                "settings": prediction_settings(run["evaluation"]),
                "gpus": 0,
            },
        )
        entry["gpus"] = max(entry["gpus"], run["evaluation"]["gpus"])
    return evaluations


BASE_EVALUATIONS = _base_evaluations()


def base_evaluation(wildcards):
    return BASE_EVALUATIONS[(wildcards.model, wildcards.evaluation)]


def base_evaluation_datasets_settings(rule):
    """params: for each dataset of a base prediction, its settings that reach `rule`."""
    return lambda wildcards: {
        name: settings_for(rule, config["datasets"][name], "datasets", ANY)
        for name in base_evaluation(wildcards)["datasets"]
    }


def base_evaluation_files(wildcards):
    evaluation = base_evaluation(wildcards)
    return split_files(evaluation["datasets"], evaluation["settings"]["split"])


def prediction_shard_files(wildcards):
    """Input function of join_predictions: the shard files of a base or a finetuned prediction."""
    parts = wildcards.predictions.split("/")
    if parts[0] == "runs":
        count = config["runs"][parts[1]]["evaluation"]["shards"]
    else:
        count = BASE_EVALUATIONS[(parts[2], parts[3])]["settings"]["shards"]
    return [f"{RESULTS}/{wildcards.predictions}/{shard}.jsonl" for shard in shard_names(count)]


def run_predictions(name, which):
    """The joined predictions of a run's base model (shared by the runs with the same base model, datasets
    and prediction settings) or of its finetuned model."""
    run = config["runs"][name]
    if which == "base":
        predictions = f"predictions/base/{run['model']}/{evaluation_key(run['datasets'], run['evaluation'])}"
    else:
        predictions = f"runs/{name}/predictions/finetuned"
    return f"{RESULTS}/{predictions}.jsonl"


def predictions_of(which):
    """Input function: the joined predictions of the base or the finetuned model of the job's run."""
    return lambda wildcards: run_predictions(wildcards.run, which)


# On a SLURM cluster (--profile profiles/slurm): before the first sbatch, stop with one line per job that can
# never run there; after an sbatch refusal, say which limit it hit (vidtune.slurm_preflight, docs/cluster.md).
onstart:
    try:
        preflight(workflow)
    except PreflightError as error:
        raise WorkflowError(f"SLURM preflight: {error}") from None


onerror:
    explain_refusals(workflow, log)
