# Configuration, validation and the small helpers every rule file uses.

import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the vidtune package, also when not installed

from vidtune.config import check_config, GENERATED_FORMATS
from vidtune.errors import ConfigError

validate(config, schema="../workflow/schemas/config.schema.yaml", set_default=True)
try:
    check_config(config, config_file=(workflow.configfiles or ["config"])[-1])
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = config["results"]
RUNS = sorted(config["runs"])
USED_DATASETS = sorted({d for run in config["runs"].values() for d in run["datasets"]})
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


wildcard_constraints:
    dataset=r"[^/]+",
    run=r"[^/]+",
    model=r"[^/]+",
    shard=r"\d{3}",
    which="base|finetuned",
    split="train|val|test",


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def shard_ids(dataset):
    return [f"{shard:03d}" for shard in range(config["datasets"][dataset]["shards"])]


def run_config(wildcards):
    return config["runs"][wildcards.run]


def model_folder(name):
    """A built tiny model lives under results/models; a checkpoint given by path is used where it is."""
    model = config["models"][name]
    return model["path"] if "path" in model else f"{RESULTS}/models/{name}"


def run_model_folder(wildcards):
    return model_folder(config["runs"][wildcards.run]["model"])


def run_datasets(wildcards):
    return config["runs"][wildcards.run]["datasets"]


def run_threads(section):
    """CPU runs of small models are fastest single-threaded on shared machines; GPU jobs feed loaders."""

    def threads(wildcards):
        gpus = config["runs"][wildcards.run][section]["gpus"]
        return 1 if gpus == 0 else min(8, 4 * gpus)

    return threads


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


def dataset_split_file(split):
    """Input function: the run's datasets' JSONL files of one split, through the checkpoint."""

    def files(wildcards):
        return [
            getattr(checkpoints.internvl_files.get(dataset=dataset).output, split)
            for dataset in config["runs"][wildcards.run]["datasets"]
        ]

    return files


def predict_model(wildcards):
    if wildcards.which == "base":
        return run_model_folder(wildcards)
    return rules.merge.output.model.format(run=wildcards.run)


def evaluation_files(wildcards):
    return dataset_split_file(config["runs"][wildcards.run]["evaluation"]["split"])(wildcards)


def predictions_of(which):
    """Input function: the predictions file of the base or the finetuned model of a run."""

    def predictions(wildcards):
        return expand(rules.predict.output.predictions, run=wildcards.run, which=which)[0]

    return predictions
