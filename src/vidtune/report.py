"""Artefacts for Snakemake's report: metrics tables and chart, loss curve, sample gallery, config, data.

Each function writes one file atomically (:mod:`vidtune.atomic`). HTML pages are self-contained (inline
style, images as base64 data URIs) because ``snakemake --report report.html`` embeds each one as a data
URI shown in an iframe, where relative links to other files do not resolve. Every piece of text that
comes from data or models is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import random
from typing import Any, Iterable, Mapping

from vidtune.atomic import atomic_path, write_text
from vidtune.comparison import MetricCell, best_runs, metric_cell, run_rows, swept_settings
from vidtune.scoring import CAPTION_METRICS, PER_SAMPLE_METRIC
from vidtune.sweeps import label

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.better { color: #1a7f37; } .worse { color: #cf222e; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em; margin: 0.8em 0; }
.strip { display: flex; gap: 4px; overflow-x: auto; margin: 0.4em 0; }
.strip img { height: 96px; border: 1px solid #ddd; }
.text { white-space: pre-wrap; background: #f8f8f8; padding: 0.3em 0.5em; margin: 0.2em 0; }
.missing { color: #888; font-style: italic; }
.note { color: #555; }
.best { display: grid; grid-template-columns: repeat(auto-fill, minmax(15em, 1fr)); gap: 0.6em; margin: 0.5em 0 1.5em; }
.best .card { margin: 0; } .best .metric { font-size: 0.8em; color: #555; text-transform: uppercase; }
.best .run { font-weight: 600; } .best .score { font-size: 1.5em; }
.interval { color: #777; font-size: 0.85em; white-space: nowrap; }
td.top { background: #eaf5ea; font-weight: 600; }
.runs td, .runs th { font-size: 0.85em; padding: 0.2em 0.4em; } .runs td.run { min-width: 12em; }
.setting { background: #f3f0fa; }
img.chart { max-width: 100%; width: 1100px; }
"""


# --------------------------------------------------------------------------------------------------
# HTML helpers
# --------------------------------------------------------------------------------------------------

def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n<h1>{_esc(title)}</h1>\n{body}\n</body></html>\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
        return f'<td class="num">{_esc(_fmt(value))}</td>'
    return f"<td>{_esc(_fmt(value))}</td>"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>"


def _change_cell(base: float | None, finetuned: float | None) -> str:
    if base is None or finetuned is None or not base:
        return '<td class="num">–</td>'
    change = (finetuned - base) / base
    css = "better" if change > 0 else "worse" if change < 0 else ""
    return f'<td class="num {css}">{change:+.1%}</td>'


def _compare_table(rows: list[tuple[str, float | None, float | None]]) -> str:
    """metric | base | finetuned | relative change."""
    body = "".join(f"<tr><td>{_esc(name)}</td>{_cell(b)}{_cell(f)}{_change_cell(b, f)}</tr>\n"
                   for name, b, f in rows)
    return ("<table><thead><tr><th>metric</th><th>base</th><th>finetuned</th><th>change</th></tr></thead>"
            f"\n<tbody>\n{body}</tbody></table>")


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

def _structured_rows(base: dict, finetuned: dict) -> list[tuple[str, float | None, float | None]]:
    rows = [("valid JSON object", base["valid_json"], finetuned["valid_json"]),
            ("matches the target schema", base["schema_match"], finetuned["schema_match"])]
    rows += [(f"{field}: accuracy", base["field_accuracy"].get(field), finetuned["field_accuracy"][field])
             for field in sorted(finetuned["field_accuracy"])]
    for field in sorted(finetuned["list_fields"]):
        for part in ("precision", "recall", "f1"):
            rows.append((f"{field}: {part}", base["list_fields"].get(field, {}).get(part),
                         finetuned["list_fields"][field][part]))
    if finetuned.get("text_scores"):
        rows += [(f"{finetuned['text_field']}: {name}", (base.get("text_scores") or {}).get(name),
                  finetuned["text_scores"][name]) for name in CAPTION_METRICS]
    return rows


def metrics_table_html(metrics: dict, out: str | os.PathLike) -> None:
    """Base vs finetuned caption metrics (and structured-output scores where the run has them)."""
    body = [f'<p class="note">{_esc(metrics["num_test_samples"])} test samples, base and finetuned scored '
            "on the same samples with all references (pycocoevalcap: PTB tokenizer, BLEU, METEOR, ROUGE_L, "
            "CIDEr-D).</p>",
            _compare_table([(m, metrics["base"][m], metrics["finetuned"][m]) for m in CAPTION_METRICS])]
    structured = metrics.get("structured")
    if structured:
        base, finetuned = structured["base"], structured["finetuned"]
        body += ["<h2>Structured output</h2>",
                 f'<p class="note">Predictions that do not parse count as wrong: base '
                 f'{_esc(base["num_invalid_json"])}, finetuned {_esc(finetuned["num_invalid_json"])} of '
                 f'{_esc(finetuned["num_samples"])}. List fields: micro precision/recall/F1 of their '
                 "items; free-text field: caption metrics.</p>",
                 _compare_table(_structured_rows(base, finetuned))]
    write_text(out, _page("Metrics: base vs finetuned", "\n".join(body)))


def _figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _save_figure(figure, out_png: str | os.PathLike) -> None:
    with atomic_path(out_png) as temp:
        figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")


def _figure(**kwargs):
    # A bare Figure (no pyplot): no global state, no display backend needed, Agg renders the PNG.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def metrics_bar_chart(metrics: dict, out_png: str | os.PathLike) -> None:
    """Grouped bars, base vs finetuned per metric; CIDEr (not bounded by 1) on its own axis."""
    figure = _figure(figsize=(9, 3.6))
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [6, 1.4]})
    for axis, names in ((left, CAPTION_METRICS[:-1]), (right, CAPTION_METRICS[-1:])):
        positions = range(len(names))
        for offset, (key, color) in ((-0.2, ("base", "#9e9e9e")), (0.2, ("finetuned", "#1f77b4"))):
            values = [metrics[key][name] for name in names]
            bars = axis.bar([p + offset for p in positions], values, width=0.4, color=color, label=key)
            axis.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
        axis.set_xticks(list(positions), names, rotation=30, ha="right")
        axis.margins(y=0.15)
        axis.spines[["top", "right"]].set_visible(False)
    left.set_ylabel("score")
    left.legend(frameon=False, ncols=2, loc="lower left", bbox_to_anchor=(0, 1))
    figure.suptitle(f"Base vs finetuned on {metrics['num_test_samples']} test samples", y=1.07)
    _save_figure(figure, out_png)


def loss_curve(loss_log: list[dict], out_png: str | os.PathLike) -> None:
    """Training loss by step (and ``eval_loss`` where logged); a note instead when nothing was logged."""
    figure = _figure(figsize=(7, 3.6))
    axis = figure.subplots()
    plotted = False
    for key, label in (("loss", "training loss"), ("eval_loss", "validation loss")):
        points = sorted((entry["step"], entry[key]) for entry in loss_log
                        if entry.get(key) is not None and entry.get("step") is not None)
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
            plotted = True
    if plotted:
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend(frameon=False)
        axis.spines[["top", "right"]].set_visible(False)
    else:
        axis.set_axis_off()
        axis.text(0.5, 0.5, "No loss was logged during training.", ha="center", va="center")
    axis.set_title("Training loss")
    _save_figure(figure, out_png)


# --------------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------------

def _thumbnail_uri(path: str, max_px: int) -> str:
    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((max_px, max_px))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _frame_strip(paths: list[str], max_frames: int, max_px: int) -> str:
    if not paths:
        return '<div class="missing">no frames recorded for this sample</div>'
    shown = paths
    if len(paths) > max_frames:  # evenly spaced, first and last included
        shown = [paths[round(i * (len(paths) - 1) / (max_frames - 1))] for i in range(max_frames)]
    items = []
    for index, path in enumerate(shown):
        try:
            items.append(f'<img src="{_thumbnail_uri(path, max_px)}" alt="frame {index + 1}" '
                         f'title="{_esc(os.path.basename(path))}">')
        except (OSError, ValueError):  # a missing or unreadable frame should not sink the report
            items.append(f'<span class="missing">unreadable frame {_esc(path)}</span>')
    note = f"{len(shown)} of {len(paths)} frames" if len(shown) < len(paths) else f"{len(paths)} frames"
    return f'<div class="note">{note}</div><div class="strip">{"".join(items)}</div>'


def _text_block(text: Any) -> str:
    if text is None or not str(text).strip():
        return '<div class="text missing">(empty)</div>'
    return f'<div class="text">{_esc(text)}</div>'


def _card(record: dict, frames: list[str], max_frames: int, max_px: int) -> str:
    references = "".join(f"<li>{_esc(r)}</li>" for r in record["references"])
    return (f'<div class="card"><h3>{_esc(record["id"])}</h3>'
            f'<div class="note">{PER_SAMPLE_METRIC}: base {record["base_score"]:.3f}, '
            f'finetuned {record["finetuned_score"]:.3f}</div>'
            f"{_frame_strip(frames, max_frames, max_px)}"
            f"<b>References</b><ol>{references}</ol>"
            f"<b>Base</b>{_text_block(record['base'])}"
            f"<b>Finetuned</b>{_text_block(record['finetuned'])}</div>")


def select_gallery(per_sample: list[dict], size: int, seed: int) -> dict[str, list[dict]]:
    """Best and worst ``size`` samples by finetuned score, then ``size`` random others (by ``seed``)."""
    ranked = sorted(per_sample, key=lambda r: (-r["finetuned_score"], r["id"]))
    best = ranked[:size]
    taken = {r["id"] for r in best}
    worst = [r for r in reversed(ranked) if r["id"] not in taken][:size]
    taken |= {r["id"] for r in worst}
    rest = sorted((r for r in per_sample if r["id"] not in taken), key=lambda r: r["id"])
    chosen = random.Random(seed).sample(rest, min(size, len(rest)))
    return {"best": best, "worst": worst, "random": sorted(chosen, key=lambda r: r["id"])}


def gallery_html(per_sample: list[dict], frames: Mapping[str, list[str]], out_html: str | os.PathLike,
                 size: int, seed: int, *, max_frames: int = 16, thumbnail_px: int = 160) -> None:
    """Best, worst and random test samples: frames the model saw, references, base and finetuned output.

    ``frames`` maps sample id to its frame image paths in order; at most ``max_frames`` evenly spaced ones
    are shown, each embedded as a JPEG thumbnail (longest side ``thumbnail_px``).
    """
    groups = select_gallery(per_sample, size, seed)
    titles = {"best": "Best", "worst": "Worst", "random": f"Random (seed {seed})"}
    body = [f'<p class="note">{len(per_sample)} test samples ranked by the finetuned prediction\'s '
            f"per-sample {PER_SAMPLE_METRIC} (CIDEr-D with the test set's IDF).</p>"]
    for key, records in groups.items():
        body.append(f"<h2>{_esc(titles[key])}</h2>")
        body += [_card(r, list(frames.get(r["id"], [])), max_frames, thumbnail_px) for r in records]
        if not records:
            body.append('<p class="missing">none</p>')
    write_text(out_html, _page("Test samples: base vs finetuned", "\n".join(body)))


# --------------------------------------------------------------------------------------------------
# Configuration and data
# --------------------------------------------------------------------------------------------------

def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        rows = []
        for key in sorted(value, key=str):
            rows += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, (list, tuple, Mapping)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return [(prefix, value)]


def config_html(run_config: dict, out: str | os.PathLike) -> None:
    """The run's configuration as one table of dotted keys and values."""
    write_text(out, _page("Run configuration", _table(["setting", "value"], _flatten(run_config))))


def _reject_rows(dataset: str, rejects: Any) -> list[tuple[str, str, str, Any]]:
    """Rows (dataset, stage, reason, count) from ``{reason: n}`` or ``{stage: {reason: n}}``."""
    rows = []
    for key, value in sorted((rejects or {}).items()):
        if isinstance(value, Mapping):
            rows += [(dataset, key, reason, count) for reason, count in sorted(value.items())]
        else:
            rows.append((dataset, "", key, value))
    return rows


def data_summary_html(summaries: Mapping[str, dict], out: str | os.PathLike,
                      checks: Mapping[str, dict] | None = None) -> None:
    """Samples per split and rejects by reason, per dataset; and per run, what its training-data check kept.

    A summary holds ``samples`` (``{split: n}``, or a count) and ``rejects`` (``{stage: {reason: n}}`` or
    ``{reason: n}``; ``rejects_by_reason`` is read too); its other plain values are listed as details.
    ``checks`` maps runs to check_training_data summaries (``records``, ``accepted``, ``truncated``,
    ``rejected``, ``rejects_by_reason``, ``tokens``).
    """
    splits = sorted({s for summary in summaries.values() if isinstance(summary.get("samples"), Mapping)
                     for s in summary["samples"]}, key=lambda s: ((("train", "val", "test") + (s,)).index(s), s))
    split_rows, reject_rows, detail_rows = [], [], []
    for dataset in sorted(summaries):
        summary = summaries[dataset]
        samples = summary.get("samples")
        per_split = samples if isinstance(samples, Mapping) else {}
        total = sum(per_split.values()) if per_split else samples
        split_rows.append([dataset, *(per_split.get(s, 0) for s in splits), total, summary.get("rejected")])
        reject_rows += _reject_rows(dataset, summary.get("rejects", summary.get("rejects_by_reason")))
        detail_rows += [(dataset, key, value) for key, value in sorted(summary.items())
                        if key not in ("samples", "rejects", "rejects_by_reason", "rejected", "dataset")
                        and not isinstance(value, (Mapping, list))]
    body = ["<h2>Samples per split</h2>",
            _table(["dataset", *splits, "total", "rejected"], split_rows),
            "<h2>Rejects by reason</h2>",
            _table(["dataset", "stage", "reason", "count"], reject_rows) if reject_rows
            else '<p class="note">No record was rejected.</p>']
    if detail_rows:
        body += ["<h2>Details</h2>", _table(["dataset", "item", "value"], detail_rows)]
    if checks:
        body += ["<h2>Training records checked against each run's model</h2>",
                 '<p class="note">Records of the train split that training can take: the rest are left out by '
                 "reason (results/runs/&lt;run&gt;/training_data/rejects.jsonl).</p>",
                 _table(["run", "records", "accepted", "truncated", "left out", "by reason", "longest (tokens)",
                         "max_seq_length"],
                        [[run, check["records"], check["accepted"], check["truncated"], check["rejected"],
                          ", ".join(f"{reason}: {n}" for reason, n in check["rejects_by_reason"].items()) or "-",
                          check["tokens"]["longest"], check["tokens"]["max_seq_length"]]
                         for run, check in sorted(checks.items())])]
    write_text(out, _page("Data summary", "\n".join(body)))


# --------------------------------------------------------------------------------------------------
# Runs compared
# --------------------------------------------------------------------------------------------------

_READING = ("Each score is the finetuned model's on the run's test samples, with its 95% paired bootstrap "
            "interval in brackets (test samples resampled with replacement, each metric recomputed as a "
            "corpus statistic: CIDEr's document frequencies, BLEU's n-gram counts). Below it, finetuned minus "
            "base: <b>✔</b> when its interval leaves out 0 (distinguishable from zero), <b>≈</b> when it "
            "does not (the difference may be noise). METEOR has no interval.")


def _run_name(name: str) -> str:
    """A run's name, allowed to wrap after the @ and + of swept values."""
    return "<wbr>".join(_esc(part) for part in name.replace("@", "@\0").replace("+", "+\0").split("\0"))


def _interval(low: float, high: float) -> str:
    return f'<span class="interval">[{low:.3f}, {high:.3f}]</span>'


def _difference_html(value: float, interval, distinguishable) -> str:
    value = value if abs(value) >= 5e-4 else 0.0  # no "-0.000"
    css = "" if not distinguishable or not value else "better" if value > 0 else "worse"
    mark = "" if distinguishable is None else " ✔" if distinguishable else " ≈"
    text = f'<span class="{css}">{value:+.3f}{mark}</span>'
    return text + (" " + _interval(*interval) if interval else "")


def _metric_td(cell: MetricCell, top: bool) -> str:
    interval = " " + _interval(*cell.interval) if cell.interval else ""
    return (f'<td class="num{" top" if top else ""}">{cell.value:.3f}{interval}<br>'
            f"{_difference_html(cell.delta, cell.delta_interval, cell.distinguishable)}</td>")


def _best_cards(runs: Mapping[str, dict], comparison: Mapping[str, Any]) -> str:
    cards = []
    for entry in best_runs(runs, comparison):
        cell, margin = entry["cell"], entry["margin"]
        interval = _interval(*cell.interval) if cell.interval else ""
        if entry["runner_up"] is None:
            ahead = "the only run"
        elif margin is None:
            ahead = f"ahead of {_run_name(entry['runner_up'])} (no interval: another test set, or METEOR)"
        else:
            verdict = "distinguishable" if margin["distinguishable"] else "not distinguishable from a tie"
            ahead = (f"ahead of <span class=\"run\">{_run_name(entry['runner_up'])}</span> by "
                     f"{margin['difference']:+.3f} {_interval(margin['low'], margin['high'])}: {verdict}")
        cards.append(f'<div class="card"><div class="metric">{_esc(entry["metric"])}</div>'
                     f'<div class="run">{_run_name(entry["run"])}</div><div class="score">{cell.value:.3f} '
                     f'{interval}</div><div class="note">{ahead}</div></div>')
    return '<div class="best">' + "".join(cards) + "</div>"


def _runs_table(runs: Mapping[str, dict]) -> str:
    header, rows = run_rows(runs)
    settings = set(swept_settings(runs))
    metric_columns = {i for i, name in enumerate(header) if name in CAPTION_METRICS}
    top = {i: max(row[i].value for row in rows) for i in metric_columns}
    head = "".join(f'<th class="setting">{".<wbr>".join(_esc(h).split("."))}</th>' if h in settings
                   else f'<th>{_esc(h)}<br><span class="interval">minus base</span></th>' if h in CAPTION_METRICS
                   else f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f'<td class="run">{_run_name(row[0])}</td>']
        for i, value in enumerate(row[1:], 1):
            if i in metric_columns:
                cells.append(_metric_td(value, value.value == top[i] and len(rows) > 1))
            elif header[i] == "trainable params" and value is not None:
                cells.append(f'<td class="num">{value:,}</td>')
            elif header[i] in ("train s", "peak GiB") and value is not None:
                cells.append(f'<td class="num">{value:.1f}</td>')
            elif header[i] in settings:
                cells.append(f'<td class="num">{_esc(label(value)) if value is not None else "–"}</td>')
            else:
                cells.append(_cell(value))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="runs"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "</tbody></table>")


def _pairs_table(comparison: Mapping[str, Any]) -> str:
    differences = comparison.get("differences", [])
    if not differences:
        return '<p class="note">No two runs share a test set.</p>'
    metrics = comparison["metrics"]
    head = "".join(f"<th>{_esc(m)}</th>" for m in ["run", "minus run", *metrics])
    body = "".join(
        f'<tr><td class="run">{_run_name(d["second"])}</td><td class="run">{_run_name(d["first"])}</td>'
        + "".join(f'<td class="num">{_difference_html(v["difference"], (v["low"], v["high"]), v["distinguishable"])}'
                  "</td>" for v in (d["metrics"][m] for m in metrics)) + "</tr>\n"
        for d in differences)
    return f'<table class="runs"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>'


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def sweep_chart_uris(runs: Mapping[str, dict]) -> dict[str, str]:
    """Per swept setting, a chart of each caption metric against it: the finetuned score with its interval,
    one line per combination of the other swept settings."""
    settings = swept_settings(runs)
    charts = {}
    for setting in settings:
        values = sorted({run["swept"].get(setting) for run in runs.values()}, key=_sort_key)
        others = [key for key in settings if key != setting]
        groups: dict[str, list[str]] = {}
        for name in sorted(runs):
            group = ", ".join(f"{key.rsplit('.', 1)[-1]}={label(runs[name]['swept'].get(key))}" for key in others)
            groups.setdefault(group, []).append(name)
        figure = _figure(figsize=(10, 4.6))
        axes = figure.subplots(2, 4).flatten()
        for axis, metric in zip(axes, CAPTION_METRICS):
            for n, (group, names) in enumerate(groups.items()):
                names = sorted(names, key=lambda name: _sort_key(runs[name]["swept"].get(setting)))
                x = [values.index(runs[name]["swept"].get(setting)) + (n - (len(groups) - 1) / 2) * 0.08
                     for name in names]
                cells = [metric_cell(runs[name]["metrics"], metric) for name in names]
                errors = [[cell.value - cell.interval[0] if cell.interval else 0 for cell in cells],
                          [cell.interval[1] - cell.value if cell.interval else 0 for cell in cells]]
                axis.errorbar(x, [cell.value for cell in cells], yerr=errors, marker="o", markersize=4, capsize=3,
                              linewidth=1.2, label=group or "runs")
            axis.set_xticks(range(len(values)), [label(v) for v in values])
            axis.set_xlim(-0.5, len(values) - 0.5)
            axis.spines[["top", "right"]].set_visible(False)
            axis.tick_params(labelsize=8)
            axis.set_title(metric, fontsize=10)
        handles, names = axes[0].get_legend_handles_labels()
        axes[-1].set_axis_off()
        axes[-1].legend(handles, names, frameon=False, fontsize=8, loc="center",
                        title="other settings" if others else None, title_fontsize=8)
        figure.supxlabel(setting, fontsize=10)
        figure.tight_layout()
        charts[setting] = _figure_uri(figure)
    return charts


def comparison_html(runs: Mapping[str, dict], comparison: Mapping[str, Any], out: str | os.PathLike) -> None:
    """The report's comparison of every run: best run per metric, all runs with intervals, training cost
    and swept settings, each metric against each swept setting, and every two runs' differences."""
    settings = swept_settings(runs)
    samples = sorted({run["metrics"]["num_test_samples"] for run in runs.values()})
    summary = (f"{len(runs)} run{'s' if len(runs) != 1 else ''}, "
               f"{' / '.join(str(n) for n in samples)} test samples"
               + (f"; swept: {', '.join(settings)}" if settings else "; nothing swept"))
    if comparison.get("resamples"):
        summary += f"; {comparison['resamples']} bootstrap resamples (seed {comparison['seed']})"
    body = [f'<p class="note">{_esc(summary)}.</p>', f'<p class="note">{_READING}</p>',
            "<h2>Best run per metric</h2>", _best_cards(runs, comparison),
            "<h2>All runs</h2>", _runs_table(runs)]
    charts = sweep_chart_uris(runs)
    if charts:
        body += ["<h2>Metrics against each swept setting</h2>",
                 '<p class="note">Finetuned score with its 95% interval; one line per combination of the '
                 "other swept settings.</p>"]
        body += [f"<h3>{_esc(setting)}</h3>\n"
                 f'<img class="chart" alt="each metric against {_esc(setting)}" src="{chart}">'
                 for setting, chart in charts.items()]
    body += ["<h2>Every two runs on the same test set</h2>", _pairs_table(comparison)]
    write_text(out, _page("Runs compared", "\n".join(body)))
