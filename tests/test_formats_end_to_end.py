"""Every dataset format runs through the whole DAG to metrics (issue 4): one workflow, one run per format,
sharing the tiny model; each run trains a couple of steps, so this proves the plumbing, not learning."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import Workflow, quick_config
from fixtures_datasets import MAKERS
from vidtune.adapters import FORMATS as ADAPTER_FORMATS
from vidtune.config import GENERATED_FORMATS
from vidtune.scoring import CAPTION_METRICS

pytestmark = pytest.mark.integration

FORMATS = [name for name in ADAPTER_FORMATS if name not in GENERATED_FORMATS]  # read from files


@pytest.fixture(scope="module")
def formats_run(tmp_path_factory) -> Workflow:
    base = tmp_path_factory.mktemp("formats")
    config = quick_config()
    run_template = config["runs"].pop("demo")
    config["datasets"] = {}
    config["runs"] = {}
    for name in FORMATS:
        dataset = MAKERS[name](base / "data" / name)
        dataset.update(frames={"policy": "uniform", "num_frames": 2, "short_side": 64}, shards=1)
        config["datasets"][name] = dataset
        run = copy.deepcopy(run_template)
        run["datasets"] = [name]
        run["training"].update(max_steps=2, save_steps=2)
        run["evaluation"].update(max_new_tokens=4)
        config["runs"][name] = run
    workflow = Workflow(base / "work", config)
    workflow.snakemake("train_all", timeout=2400)
    return workflow


@pytest.mark.parametrize("name", FORMATS)
def test_format_reaches_metrics(formats_run, name):
    metrics = json.loads(formats_run.path(f"results/runs/{name}/metrics.json").read_text())
    assert metrics["num_test_samples"] > 0
    for which in ("base", "finetuned"):
        assert set(CAPTION_METRICS) <= set(metrics[which])
        assert all(isinstance(value, float) for value in metrics[which].values())
    summary = json.loads(formats_run.path(f"results/datasets/{name}/internvl/summary.json").read_text())
    assert summary["samples"]["train"] > 0 and summary["samples"]["test"] == metrics["num_test_samples"]
    records = formats_run.path(f"results/datasets/{name}/internvl/train.jsonl").read_text().splitlines()
    first = json.loads(records[0])
    human = first["conversations"][0]["value"]
    if name == "coco":
        assert isinstance(first["image"], str) and human.startswith("<image>\n")
    else:  # the default video form: the frame list, one Frame-<i> line each
        assert isinstance(first["image"], list) and human.startswith("Frame-1: <image>\n")
        assert human.count("<image>") == len(first["image"])


def test_structured_targets_get_structured_scores(formats_run):
    metrics = json.loads(formats_run.path("results/runs/nexar/metrics.json").read_text())
    assert "structured" in metrics
    assert 0.0 <= metrics["structured"]["finetuned"]["valid_json"] <= 1.0


def test_cross_run_table_lists_every_format(formats_run):
    table = formats_run.path("results/runs/metrics_table.md").read_text()
    for name in FORMATS:
        assert name in table
