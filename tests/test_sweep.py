"""A 2x2 sweep on the demo data (issue 16): config/sweep_example.yaml, reduced like the quick demo, expands
into four runs that share every step no varied setting reaches, and one page compares them."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO, Workflow, executed_jobs, quick_config

pytestmark = pytest.mark.integration

RUNS = [f"demo@training.learning_rate={rate}+training.lora.rank={rank}"
        for rate in ("0.001", "0.002") for rank in ("16", "8")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    config = quick_config(yaml.safe_load((REPO / "config" / "sweep_example.yaml").read_text()))
    workflow = Workflow(tmp_path_factory.mktemp("sweep") / "work", config)
    return workflow, workflow.snakemake("train_all")


def test_sweep_example_expands_into_four_runs(sweep):
    workflow, _ = sweep
    assert sorted(p.parent.parent.name for p in workflow.path("results/runs").glob("*/train/train_summary.json")) \
        == RUNS
    table = workflow.path("results/runs/metrics_table.md").read_text()
    assert all(f"| {run} |" in table for run in RUNS)


def test_shared_steps_ran_once(sweep):
    workflow, result = sweep
    jobs = executed_jobs(result)
    shards = workflow.config["datasets"]["demo"]["shards"]
    assert {rule: jobs.get(rule) for rule in ("make_demo_dataset", "build_model", "ingest", "split",
                                              "frame_manifest", "extract_frames", "internvl_files",
                                              "predict_base", "compare_runs", "report_overview")} == {
        "make_demo_dataset": 1, "build_model": 1, "ingest": 1, "split": 1, "frame_manifest": shards,
        "extract_frames": shards, "internvl_files": 1, "predict_base": 1, "compare_runs": 1,
        "report_overview": 1}
    assert {rule: jobs[rule] for rule in ("run_meta", "train", "merge", "predict_finetuned", "score")} == \
        dict.fromkeys(("run_meta", "train", "merge", "predict_finetuned", "score"), 4)
    assert jobs["join_predictions"] == 5  # one base, four finetuned
    assert "Nothing to be done" in workflow.snakemake("-n", "train_all").stdout


def test_every_comparison_has_intervals_and_the_page_compares_the_runs(sweep):
    workflow, _ = sweep
    for run in RUNS:
        intervals = json.loads(workflow.path(f"results/runs/{run}/metrics.json").read_text())["intervals"]
        low, high = intervals["finetuned"]["CIDEr"]
        assert low <= high and set(intervals["finetuned_minus_base"]["CIDEr"]) == {
            "difference", "low", "high", "distinguishable"}
    comparison = workflow.path("results/runs/comparison.json")
    pairs = json.loads(comparison.read_text())["differences"]
    assert len(pairs) == 6 and {p["first"] for p in pairs} | {p["second"] for p in pairs} == set(RUNS)
    page = workflow.path("results/report/runs.html").read_text().replace("<wbr>", "")
    assert all(run in page for run in RUNS) and "Metrics against each swept setting" in page
    # Seeded: rerunning the comparison gives the same intervals, byte for byte.
    before = comparison.read_bytes()
    assert set(executed_jobs(workflow.snakemake("train_all", "--forcerun", "compare_runs"))) == {
        "compare_runs", "runs_table", "report_overview"}
    assert comparison.read_bytes() == before
