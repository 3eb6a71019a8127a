"""Runs side by side: one row per run (swept settings, each metric with its interval and its difference from
the base model, training time, peak memory, trainable parameters) and the best run per metric.

The same rows make ``results/runs/metrics_table.md`` (Markdown, for the terminal) and the report's
comparison page (:func:`vidtune.report.comparison_html`). A run is ``{"metrics": metrics.json, "train":
train_summary.json, "swept": {setting: value}}``; ``comparison`` is compare_runs' ``comparison.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vidtune.scoring import CAPTION_METRICS


@dataclass(frozen=True)
class MetricCell:
    """A finetuned metric with its interval, and finetuned minus base with its interval."""

    value: float
    interval: tuple[float, float] | None
    delta: float
    delta_interval: tuple[float, float] | None
    distinguishable: bool | None

    def text(self) -> str:
        value = f"{self.value:.3f}" + (f" [{self.interval[0]:.3f}, {self.interval[1]:.3f}]" if self.interval else "")
        return f"{value}; {self.delta:+.3f} vs base{distinguishable_mark(self.distinguishable)}"


def distinguishable_mark(distinguishable: bool | None) -> str:
    """✔ when the interval of a difference leaves out 0, ≈ when it does not (it may be noise)."""
    return "" if distinguishable is None else " ✔" if distinguishable else " ≈"


def swept_settings(runs: Mapping[str, dict]) -> list[str]:
    return sorted({key for run in runs.values() for key in run.get("swept", {})})


def metric_cell(metrics: dict, metric: str) -> MetricCell:
    intervals = metrics.get("intervals") or {}
    interval = intervals.get("finetuned", {}).get(metric)
    difference = intervals.get("finetuned_minus_base", {}).get(metric)
    return MetricCell(
        value=metrics["finetuned"][metric],
        interval=tuple(interval) if interval else None,
        delta=metrics["finetuned"][metric] - metrics["base"][metric],
        delta_interval=(difference["low"], difference["high"]) if difference else None,
        distinguishable=difference["distinguishable"] if difference else None,
    )


def run_rows(runs: Mapping[str, dict]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (runs sorted): run, swept settings, samples, a :class:`MetricCell` per caption
    metric, training seconds, peak memory (GiB), trainable parameters."""
    settings = swept_settings(runs)
    header = ["run", *settings, "samples", *CAPTION_METRICS, "train s", "peak GiB", "trainable params"]
    rows = []
    for name in sorted(runs):
        run = runs[name]
        train = run.get("train") or {}
        rows.append([name, *(run.get("swept", {}).get(key) for key in settings),
                     run["metrics"]["num_test_samples"],
                     *(metric_cell(run["metrics"], metric) for metric in CAPTION_METRICS),
                     train.get("train_seconds"), train.get("peak_memory_gib"), train.get("trainable_params")])
    return header, rows


def difference(comparison: Mapping[str, Any], first: str, second: str, metric: str) -> dict | None:
    """``second - first`` on one metric from comparison.json (either order stored), or None when the two
    runs do not share a test set or the metric has no interval."""
    for entry in comparison.get("differences", []):
        for a, b, sign in ((entry["first"], entry["second"], 1), (entry["second"], entry["first"], -1)):
            if (a, b) == (first, second) and metric in entry["metrics"]:
                found = entry["metrics"][metric]
                low, high = sorted((sign * found["low"], sign * found["high"]))
                # + 0.0: a zero difference turned round is 0.0, not -0.0
                return {"difference": sign * found["difference"] + 0.0, "low": low + 0.0, "high": high + 0.0,
                        "distinguishable": found["distinguishable"]}
    return None


def best_runs(runs: Mapping[str, dict], comparison: Mapping[str, Any]) -> list[dict]:
    """Per caption metric: the run with the highest finetuned score, and the runner-up with the
    difference between them (best minus runner-up, with its interval where the two share a test set)."""
    best = []
    for metric in CAPTION_METRICS:
        ranked = sorted(runs, key=lambda name: (-runs[name]["metrics"]["finetuned"][metric], name))
        entry = {"metric": metric, "run": ranked[0], "cell": metric_cell(runs[ranked[0]]["metrics"], metric),
                 "runner_up": None, "margin": None}
        if len(ranked) > 1:
            entry["runner_up"] = ranked[1]
            entry["margin"] = difference(comparison, ranked[1], ranked[0], metric)
        best.append(entry)
    return best


def _plain(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, MetricCell):
        return value.text()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(runs: Mapping[str, dict], comparison: Mapping[str, Any]) -> str:
    """The runs table and the best run per metric, in Markdown."""
    header, rows = run_rows(runs)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_plain(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines += ["", "Metric cells: finetuned score [95% interval]; finetuned minus base (✔: its interval leaves "
              "out 0, ≈: it does not, the difference may be noise). METEOR has no interval.", "",
              "| metric | best run | score | runner-up | best minus runner-up |", "|---|---|---|---|---|"]
    for entry in best_runs(runs, comparison):
        margin = entry["margin"]
        margin_text = "–" if margin is None else (
            f"{margin['difference']:+.3f} [{margin['low']:.3f}, {margin['high']:.3f}]"
            f"{distinguishable_mark(margin['distinguishable'])}")
        lines.append(f"| {entry['metric']} | {entry['run']} | {entry['cell'].value:.3f} | "
                     f"{entry['runner_up'] or '–'} | {margin_text} |")
    return "\n".join(lines) + "\n"
