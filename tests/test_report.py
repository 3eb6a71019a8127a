"""Report artefacts: each builds, holds what the report promises, and escapes text from data and models."""

import base64
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from vidtune import report
from vidtune.scoring import CAPTION_METRICS

REPORT_DIR = Path(__file__).resolve().parents[1] / "workflow" / "report"
HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


def _metrics(structured=False):
    metrics = {"base": {m: 0.2 for m in CAPTION_METRICS}, "finetuned": {m: 0.3 for m in CAPTION_METRICS},
               "num_test_samples": 12}
    metrics["base"]["CIDEr"] = 0.0
    if structured:
        def part(valid, accuracy):
            return {"num_samples": 12, "valid_json": valid, "schema_match": valid / 2,
                    "num_invalid_json": round(12 * (1 - valid)), "num_schema_mismatch": 1,
                    "field_accuracy": {"event_type": accuracy, "visibility": accuracy},
                    "list_fields": {"rule_violations": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3,
                                                        "support": 4}},
                    "text_field": "caption", "text_scores": {m: 0.4 for m in CAPTION_METRICS}}
        metrics["structured"] = {"base": part(0.5, 0.25), "finetuned": part(1.0, 0.75)}
    return metrics


def _text(path):
    return Path(path).read_text(encoding="utf-8")


def _no_leftovers(folder):
    assert not [p for p in os.listdir(folder) if ".tmp-" in p]


def test_metrics_table(tmp_path):
    out = tmp_path / "metrics.html"
    report.metrics_table_html(_metrics(), out)
    page = _text(out)
    for name in CAPTION_METRICS:
        assert f"<td>{name}</td>" in page
    assert "0.2000" in page and "0.3000" in page and "+50.0%" in page
    assert "12 test samples" in page and "Structured output" not in page
    _no_leftovers(tmp_path)


def test_metrics_table_structured(tmp_path):
    out = tmp_path / "metrics.html"
    report.metrics_table_html(_metrics(structured=True), out)
    page = _text(out)
    for item in ("Structured output", "valid JSON object", "matches the target schema", "event_type: accuracy",
                 "rule_violations: f1", "caption: CIDEr", "+200.0%"):
        assert item in page, item


def _png_size(path):
    data = Path(path).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_charts(tmp_path):
    report.metrics_bar_chart(_metrics(), tmp_path / "metrics.png")
    width, height = _png_size(tmp_path / "metrics.png")
    assert width > 400 and height > 200
    log = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-4} for s in range(1, 40)]
    log += [{"step": 20, "eval_loss": 0.3}, {"step": 40, "train_runtime": 12.0}]
    report.loss_curve(log, tmp_path / "loss.png")
    report.loss_curve([], tmp_path / "no_loss.png")
    assert _png_size(tmp_path / "loss.png")[0] > 300 and _png_size(tmp_path / "no_loss.png")[0] > 300
    _no_leftovers(tmp_path)


def _per_sample(n=20):
    return [{"id": f"ds/{i:02d}", "references": [f"reference {i}", HOSTILE], "base": "" if i % 2 else HOSTILE,
             "finetuned": f"finetuned answer {i}", "base_score": 0.1, "finetuned_score": float(i)}
            for i in range(n)]


def _sections(page):
    parts = re.split(r"<h2>(.*?)</h2>", page)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_gallery(tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    paths = []
    for k in range(20):
        path = frames_dir / f"{k:06d}.jpg"
        Image.new("RGB", (640, 360), (10 * k, 80, 160)).save(path)
        paths.append(str(path))
    frames = {"ds/19": paths, "ds/00": [paths[0], str(tmp_path / "gone.jpg")]}
    out = tmp_path / "gallery.html"
    report.gallery_html(_per_sample(), frames, out, size=3, seed=7)
    page = _text(out)
    sections = _sections(page)
    assert list(sections) == ["Best", "Worst", "Random (seed 7)"]
    ids = {name: re.findall(r"<h3>(.*?)</h3>", body) for name, body in sections.items()}
    assert ids["Best"] == ["ds/19", "ds/18", "ds/17"] and ids["Worst"] == ["ds/00", "ds/01", "ds/02"]
    assert len(ids["Random (seed 7)"]) == 3 and not set(ids["Random (seed 7)"]) & set(ids["Best"] + ids["Worst"])
    # the frames: 20 frames shown as 16 evenly spaced, embedded thumbnails; a missing one is noted
    best_card = sections["Best"].split("<h3>")[1]
    assert "16 of 20 frames" in best_card and best_card.count('src="data:image/jpeg;base64,') == 16
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)"', best_card).group(1)
    with Image.open(io.BytesIO(base64.b64decode(uri))) as thumb:
        assert max(thumb.size) == 160
    assert "unreadable frame" in sections["Worst"] and "no frames recorded" in sections["Worst"]
    # the texts, escaped; an empty prediction is shown as such
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x" in page
    assert "finetuned answer 19" in page and "reference 19" in page and "(empty)" in page
    _no_leftovers(tmp_path)


def test_gallery_is_reproducible_and_handles_small_sets(tmp_path):
    report.gallery_html(_per_sample(), {}, tmp_path / "a.html", size=3, seed=1)
    report.gallery_html(_per_sample(), {}, tmp_path / "b.html", size=3, seed=1)
    assert _text(tmp_path / "a.html") == _text(tmp_path / "b.html")
    report.gallery_html(_per_sample(4), {}, tmp_path / "small.html", size=3, seed=1)
    ids = re.findall(r"<h3>(.*?)</h3>", _text(tmp_path / "small.html"))
    assert sorted(ids) == ["ds/00", "ds/01", "ds/02", "ds/03"]  # each shown once
    report.gallery_html(_per_sample(4), {}, tmp_path / "none.html", size=0, seed=1)
    assert "<h3>" not in _text(tmp_path / "none.html")


def test_config_and_data_summary(tmp_path):
    config = {"model": {"name": HOSTILE, "lora": {"r": 16}}, "datasets": ["demo", "nexar"], "seed": 3}
    report.config_html(config, tmp_path / "config.html")
    page = _text(tmp_path / "config.html")
    assert "<td>model.lora.r</td>" in page and '<td class="num">16</td>' in page
    assert "[&quot;demo&quot;, &quot;nexar&quot;]" in page and "<script" not in page

    summaries = {
        # the shape the InternVL files step writes: rejects by stage, then by reason
        "demo": {"dataset": "demo", "samples": {"train": 8, "val": 1, "test": 3}, "total": 12,
                 "rejects": {"ingest": {"missing_media": 2}, "frames": {"damaged_media": 1}}, "rejected": 3},
        # the shape ingest writes: a sample count and rejects by reason
        "nexar": {"dataset": "nexar", "format": "nexar", "samples": 40, "rejected": 0,
                  "rejects_by_reason": {}},
    }
    report.data_summary_html(summaries, tmp_path / "data.html")
    page = _text(tmp_path / "data.html")
    assert "<th>train</th><th>val</th><th>test</th><th>total</th>" in page
    assert ('<tr><td>demo</td><td class="num">8</td><td class="num">1</td><td class="num">3</td>'
            '<td class="num">12</td><td class="num">3</td></tr>') in page
    assert "<td>ingest</td><td>missing_media</td>" in page and "<td>frames</td><td>damaged_media</td>" in page
    assert "<td>nexar</td><td>format</td>" in page
    _no_leftovers(tmp_path)


def _run(cider: float, low: float, high: float, swept: dict) -> dict:
    metrics = _metrics()
    metrics["finetuned"]["CIDEr"] = cider
    metrics["intervals"] = {
        "finetuned": {"CIDEr": [low, high]},
        "finetuned_minus_base": {"CIDEr": {"difference": cider, "low": low, "high": high,
                                           "distinguishable": low > 0}}}
    return {"metrics": metrics, "train": {"train_seconds": 12.5, "peak_memory_gib": 0.4,
                                          "trainable_params": 123456}, "swept": swept}


COMPARED = {
    "r@training.lora.rank=8": _run(0.5, 0.1, 0.9, {"training.lora.rank": 8}),
    "r@training.lora.rank=16": _run(0.7, -0.1, 1.2, {"training.lora.rank": 16}),
}
COMPARISON = {"resamples": 100, "seed": 0, "metrics": ["CIDEr"], "differences": [
    {"first": "r@training.lora.rank=16", "second": "r@training.lora.rank=8",
     "metrics": {"CIDEr": {"difference": -0.2, "low": -0.5, "high": 0.1, "distinguishable": False}}}]}


def test_comparison_page(tmp_path):
    report.comparison_html(COMPARED, COMPARISON, tmp_path / "runs.html")
    page = _text(tmp_path / "runs.html")
    for heading in ("Best run per metric", "All runs", "Metrics against each swept setting",
                    "Every two runs on the same test set"):
        assert f"<h2>{heading}</h2>" in page
    # Runs sorted; names may wrap after @ and +.
    assert page.index("r@<wbr>training.lora.rank=16</td>") < page.index("r@<wbr>training.lora.rank=8</td>")
    # The best CIDEr (rank 16) ahead of rank 8 by the stored difference, turned round, not distinguishable.
    assert "by +0.200 <span class=\"interval\">[-0.100, 0.500]</span>: not distinguishable" in page
    assert "0.500 <span class=\"interval\">[0.100, 0.900]</span>" in page  # a metric with its interval
    assert "123,456" in page and 'src="data:image/png;base64,' in page
    _no_leftovers(tmp_path)


def test_metrics_table_markdown():
    from vidtune.comparison import markdown_table

    lines = markdown_table(COMPARED, COMPARISON).splitlines()
    assert lines[0].startswith("| run | training.lora.rank | samples | Bleu_1 |")
    assert lines[2].startswith("| r@training.lora.rank=16 | 16 | 12 | 0.300; +0.100 vs base |")
    assert "0.700 [-0.100, 1.200]; +0.700 vs base ≈" in lines[2]
    assert "0.500 [0.100, 0.900]; +0.500 vs base ✔" in lines[3]
    assert "| CIDEr | r@training.lora.rank=16 | 0.700 | r@training.lora.rank=8 | +0.200 [-0.100, 0.500] ≈ |" in lines



def test_captions_render_as_snakemake_renders_them():
    """Each caption is a Jinja template (with the job's wildcards) and then reStructuredText."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    class Snakemake:
        wildcards = type("Wildcards", (), {"run": "demo"})()
        config = {}

    names = {p.name for p in REPORT_DIR.glob("*.rst")}
    assert {"workflow.rst", "metrics.rst", "metrics_chart.rst", "loss_curve.rst", "gallery.rst",
            "config.rst", "data_summary.rst", "runs_table.rst"} <= names
    for name in sorted(names):
        text = Environment().from_string((REPORT_DIR / name).read_text()).render(
            snakemake=Snakemake, categories={}, files=[])
        body = publish_parts(text, writer="html",
                             settings_overrides={"halt_level": 2, "report_level": 5})["body"]
        assert body.strip(), name
        if "wildcards.run" in (REPORT_DIR / name).read_text():
            assert "<strong>demo</strong>" in body, name


RULES = """
rule all:
    input:
        "results/runs/demo/report/metrics.html",
        "results/report/data_summary.html",

rule report_artifacts:
    output:
        metrics_table=report("results/runs/{run}/report/metrics.html", caption="../workflow/report/metrics.rst",
                             category="Run {run}", subcategory="Metrics", labels={"run": "{run}", "figure": "metrics table"}),
        metrics_chart=report("results/runs/{run}/report/metrics.png", caption="../workflow/report/metrics_chart.rst",
                             category="Run {run}", subcategory="Metrics", labels={"run": "{run}", "figure": "metrics chart"}),
        gallery=report("results/runs/{run}/report/gallery.html", caption="../workflow/report/gallery.rst",
                       category="Run {run}", subcategory="Samples", labels={"run": "{run}", "figure": "gallery"}),
    run:
        import json
        from vidtune import report as r
        metrics = json.loads(%(metrics)r)
        r.metrics_table_html(metrics, output.metrics_table)
        r.metrics_bar_chart(metrics, output.metrics_chart)
        r.gallery_html(json.loads(%(per_sample)r), {}, output.gallery, 2, 0)

rule data_report:
    output:
        summary=report("results/report/data_summary.html", caption="../workflow/report/data_summary.rst",
                       category="Overview", subcategory="Data"),
    run:
        from vidtune import report as r
        r.data_summary_html({"demo": {"samples": {"train": 3, "val": 1, "test": 1}, "rejects": {}}}, output.summary)
"""


@pytest.mark.integration
def test_snakemake_report_embeds_the_artefacts(tmp_path):
    """The report() declarations the rules use, with rules in rules/*.smk-relative caption paths."""
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "report").symlink_to(REPORT_DIR)
    (tmp_path / "rules").mkdir()
    # as in the repository: the global description declared in the Snakefile (path relative to it), the
    # rules in rules/*.smk (caption paths relative to that file)
    (tmp_path / "Snakefile").write_text('report: "workflow/report/workflow.rst"\n\ninclude: "rules/report.smk"\n')
    (tmp_path / "rules" / "report.smk").write_text(
        textwrap.dedent(RULES) % {"metrics": json.dumps(_metrics()), "per_sample": json.dumps(_per_sample(5))})
    for extra in ([], ["--report", "report.html"]):
        done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *extra, "all"],
                              cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    page = _text(tmp_path / "report.html")
    for item in ("Run demo", "Overview", "How to read it", "Caption metrics of run <strong>demo</strong>",
                 "metrics.html", "metrics.png", "gallery.html", "data_summary.html"):
        assert item in page, item
