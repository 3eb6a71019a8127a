"""The embedded demo, unedited, as a newcomer runs it: `train_all` then the report (issue 2 and 6).

One run of the default config is shared by every test here; it shows real learning, a merged model that
loads with the stock Auto classes, and a report with the items a user looks for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from conftest import Workflow, load_default_config
from vidtune.scoring import CAPTION_METRICS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Workflow:
    workflow = Workflow(tmp_path_factory.mktemp("demo") / "work", load_default_config())
    workflow.snakemake("train_all")
    return workflow


def test_finetuning_helps(demo_run):
    metrics = json.loads(demo_run.path("results/runs/demo/metrics.json").read_text())
    assert set(metrics) >= {"base", "finetuned", "num_test_samples"}
    for which in ("base", "finetuned"):
        assert set(metrics[which]) == set(CAPTION_METRICS)
        assert all(type(value) is float for value in metrics[which].values())
    assert metrics["finetuned"]["CIDEr"] >= metrics["base"]["CIDEr"] + 1.0
    assert metrics["finetuned"]["Bleu_1"] > metrics["base"]["Bleu_1"]
    test_lines = demo_run.path("results/datasets/demo/internvl/test.jsonl").read_text().splitlines()
    assert metrics["num_test_samples"] == len(test_lines) > 0


def test_second_dry_run_has_nothing_to_do(demo_run):
    result = demo_run.snakemake("-n", "train_all")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_merged_model_loads_and_answers_for_a_video(demo_run):
    merged = demo_run.path("results/runs/demo/merged")
    check = json.loads((merged / "merge_check.json").read_text())
    assert check["passed"] and check["max_abs_logit_difference"] <= check["allowed_difference"]
    video = demo_run.path("results/demo/data/clip_001.mp4")
    code = ("import sys, transformers; from vidtune.modeling import load_processor;"
            "m = transformers.AutoModelForImageTextToText.from_pretrained(sys.argv[1]);"
            "p = load_processor(sys.argv[1]); print(type(m).__name__, type(p).__name__)")
    loaded = subprocess.run([sys.executable, "-c", code, str(merged)], capture_output=True, text=True, check=True)
    assert loaded.stdout.startswith("InternVLForConditionalGeneration")
    answer = subprocess.run([sys.executable, "-m", "vidtune.predict", "--model", str(merged), "--video", str(video)],
                            capture_output=True, text=True, check=True)
    words = answer.stdout.split()
    assert "moves" in words and any(colour in words for colour in ("red", "green", "blue", "yellow"))


def test_report_holds_what_a_user_looks_for(demo_run):
    demo_run.snakemake("train_all", "--report", "report.zip")
    with zipfile.ZipFile(demo_run.path("report.zip")) as archive:
        names = archive.namelist()
        text = {name: archive.read(name).decode("utf-8", "replace") for name in names
                if name.endswith((".html", ".js"))}
    assert any(name.endswith("metrics.png") for name in names)
    assert any(name.endswith("loss.png") for name in names)
    gallery = next(body for name, body in text.items() if name.endswith("gallery.html"))
    assert "data:image/jpeg;base64," in gallery  # the frame strips
    test_records = [json.loads(line) for line in
                    demo_run.path("results/runs/demo/per_sample.jsonl").read_text().splitlines()]
    assert any(record["finetuned"] in gallery for record in test_records if record["finetuned"])
    metrics_page = next(body for name, body in text.items() if name.endswith("metrics.html"))
    assert "CIDEr" in metrics_page and "Bleu_4" in metrics_page
    summary = next(body for name, body in text.items() if name.endswith("data_summary.html"))
    assert "train" in summary and "test" in summary
    # The training-data check's counts, per run: every train record of the demo fits its model.
    checked = json.loads(demo_run.path("results/runs/demo/training_data/demo/summary.json").read_text())
    train_records = len(demo_run.path("results/datasets/demo/internvl/train.jsonl").read_text().splitlines())
    assert checked["records"] == checked["accepted"] == train_records and checked["rejected"] == 0
    assert "Training records checked against each run" in summary
    assert f"<td>demo</td><td class=\"num\">{train_records}</td><td class=\"num\">{train_records}</td>" in summary
