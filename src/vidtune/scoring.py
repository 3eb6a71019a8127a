"""Scores for a run's predictions: COCO caption metrics, structured-output scores, base vs finetuned.

Caption metrics are pycocoevalcap's, computed the way COCO defines them: Stanford PTB tokenization
(lower-cased, punctuation removed), then Bleu_1..4 (closest reference length), METEOR 1.5, ROUGE_L and
CIDEr-D, whose IDF comes from the references of the evaluated set. So base and finetuned are always scored
on exactly the same ids with all references per sample, in one call. The tokenized captions are kept per
sample, so that paired bootstrap intervals (:mod:`vidtune.bootstrap`) compare base with finetuned, and
any two runs on the same test set, without tokenizing again.

Two quirks of the pycocoevalcap wrappers are handled here rather than left to silently shift scores:

* pycocoevalcap's PTBTokenizer wrapper writes one caption per line and zips the output lines back onto
  the ids. A line break inside a caption (``\\r``, ``\\x0b``, ``\\x85``, ``\\u2028``...; it only replaces
  ``\\n``) splits it and shifts every later caption onto the wrong id, and trailing empty captions get no
  output line. Here the same jar, flags and punctuation list run on whitespace-collapsed captions with a
  sentinel last line, and the output is checked to line up (:func:`_tokenize`).
* An empty prediction must count as empty, not vanish. After the fix above it tokenizes to ``""`` and every
  metric scores it (0 for its sample; METEOR and BLEU count its references' length). A blank reference
  would let an empty prediction "match" (ROUGE_L 1.0) while METEOR drops the pair from its corpus
  statistics, so blank references are left out, and a sample with no non-blank reference is an error.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping

from vidtune.errors import DataError

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
# The per-sample score behind the report's best/worst gallery: CIDEr-D with the corpus IDF (as the
# corpus CIDEr is the mean of these). On a handful of samples the IDF is degenerate (one sample: all 0).
PER_SAMPLE_METRIC = "CIDEr"

_SENTINEL = "vidtunesentinel"

References = Mapping[str, list[str]]
Predictions = Mapping[str, str]


# --------------------------------------------------------------------------------------------------
# Caption metrics
# --------------------------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_ids(references: References, predictions: Predictions, what: str = "predictions") -> None:
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing or extra:
        raise DataError(
            f"{what} and references cover different samples ({len(missing)} ids without a prediction, "
            f"e.g. {missing[:3]}; {len(extra)} predictions without references, e.g. {extra[:3]})",
            fix="score predictions made on exactly the evaluated split; rerun the predict step",
        )
    if not references:
        raise DataError("no samples to score", fix="check that the evaluated split is not empty")


def _clean_references(references: References) -> dict[str, list[str]]:
    cleaned = {}
    for sample_id, refs in references.items():
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise DataError("references must be a list of strings", record=sample_id,
                            fix="store every sample's references as a list, even a single one")
        kept = [_one_line(r) for r in refs if r.strip()]
        if not kept:
            raise DataError("sample has no non-blank reference", record=sample_id,
                            fix="drop the sample at ingest or give it a reference text")
        cleaned[sample_id] = kept
    return cleaned


def _prediction_text(sample_id: str, prediction: Any) -> str:
    if prediction is None:  # a failed generation is an empty answer
        return ""
    if not isinstance(prediction, str):
        raise DataError(f"prediction is a {type(prediction).__name__}, not a string", record=sample_id,
                        fix="store predictions as text")
    return _one_line(prediction)


def _tokenize(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    """PTB-tokenize every caption in one Java call, exactly as pycocoevalcap's PTBTokenizer does.

    Same jar, flags and punctuation list, but the input file goes to a temporary folder (the wrapper
    writes it next to the jar, which fails in a read-only environment), is read as UTF-8 whatever the
    locale, and the output must have exactly one line per caption (the wrapper's ``zip`` would silently
    shift captions onto the wrong ids).
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    keys = [k for k in captions for _ in captions[k]]
    if not keys:
        return {}
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory(prefix="vidtune-ptb-") as folder:
        source = Path(folder) / "captions.txt"
        # A sentinel last line: trailing empty captions would otherwise leave no output line at all.
        lines = [_one_line(c) for k in captions for c in captions[k]] + [_SENTINEL]
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        output = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
             "-lowerCase", "-encoding", "utf-8", str(source)],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode("utf-8")
    lines = output.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(keys) + 1 or lines.pop() != _SENTINEL:
        raise RuntimeError(f"PTB tokenizer output does not line up with its {len(keys)} captions")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    tokenized: dict[Any, list[str]] = {k: [] for k in captions}
    for key, line in zip(keys, lines):
        tokenized[key].append(" ".join(w for w in line.rstrip().split(" ") if w not in punctuation))
    return tokenized


def _score_jobs(jobs: list[tuple[References, list[Predictions]]]
                ) -> tuple[list[list[tuple[dict[str, float], dict[str, float]]]], dict[tuple, list[str]]]:
    """Score several prediction sets, each against its references, with one tokenizer and METEOR run.

    Returns, per job and per prediction set, (corpus metrics, per-sample score by id), and the tokenized
    captions by (job, "ref" or prediction set, id).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    raw: dict[tuple, list[str]] = {}
    for j, (references, prediction_sets) in enumerate(jobs):
        for predictions in prediction_sets:
            _check_ids(references, predictions)
        for sample_id, refs in _clean_references(references).items():
            raw[(j, "ref", sample_id)] = refs
        for p, predictions in enumerate(prediction_sets):
            for sample_id in references:
                raw[(j, p, sample_id)] = [_prediction_text(sample_id, predictions[sample_id])]
    tokens = _tokenize(raw)

    meteor = Meteor()
    try:
        results = []
        for j, (references, prediction_sets) in enumerate(jobs):
            ids = sorted(references)
            gts = {i: tokens[(j, "ref", i)] for i in ids}
            job_results = []
            for p in range(len(prediction_sets)):
                res = {i: tokens[(j, p, i)] for i in ids}
                bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
                meteor_score, _ = meteor.compute_score(gts, res)
                rouge, _ = Rouge().compute_score(gts, res)
                cider, cider_per_sample = Cider().compute_score(gts, res)
                corpus = dict(zip(CAPTION_METRICS[:4], bleu))
                corpus.update(METEOR=meteor_score, ROUGE_L=rouge, CIDEr=cider)
                job_results.append(({k: float(corpus[k]) for k in CAPTION_METRICS},
                                    {i: float(s) for i, s in zip(ids, cider_per_sample)}))
            results.append(job_results)
        return results, tokens
    finally:
        meteor.__del__()  # stop the Java process now, not whenever the object is collected


def caption_scores(references: References, predictions: Predictions) -> dict[str, float]:
    """COCO caption metrics (keys as pycocoevalcap names them) of predictions against references."""
    return _score_jobs([(references, [predictions])])[0][0][0][0]


# --------------------------------------------------------------------------------------------------
# Structured (JSON object) targets
# --------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)\n?\s*```", re.DOTALL | re.IGNORECASE)


def parse_json_object(text: Any) -> dict | None:
    """The JSON object in ``text`` (bare, or in one Markdown code fence), else None."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def is_structured(references: References) -> bool:
    """True when every sample's first reference is a JSON object (a structured-output run)."""
    return bool(references) and all(
        bool(refs) and parse_json_object(refs[0]) is not None for refs in references.values())


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _canonical(value: Any) -> tuple:
    """A hashable, comparison-ready form: strings ignore case and spacing, 1 == 1.0, True != 1."""
    kind = _kind(value)
    if kind == "string":
        return kind, " ".join(value.casefold().split())
    if kind == "number":
        return kind, float(value)
    if kind in ("list", "object"):
        return kind, json.dumps(value, sort_keys=True, ensure_ascii=False)
    return kind, value


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return numerator / denominator if denominator else empty


def _field_roles(targets: dict[str, dict], text_field: str | None) -> tuple[str | None, list, list]:
    """(free-text field, single-valued fields, list fields) from the reference objects."""
    kinds: dict[str, set[str]] = {}
    text_length: dict[str, int] = {}
    for target in targets.values():
        for key, value in target.items():
            kinds.setdefault(key, set()).add(_kind(value))
            if isinstance(value, str):
                text_length[key] = text_length.get(key, 0) + len(value)
    if text_field is None and text_length:
        text_field = max(sorted(text_length), key=text_length.__getitem__)
    elif text_field is not None and text_field not in text_length:
        raise DataError(f"text field {text_field!r} is not a string field of the reference objects "
                        f"(string fields: {sorted(text_length)})",
                        fix="name one of those fields, or leave the text field unset to use the longest")
    list_fields = sorted(k for k, ks in kinds.items() if "list" in ks)
    single_fields = sorted(k for k in kinds if k not in list_fields and k != text_field)
    return text_field, single_fields, list_fields


def _structured_parts(references: References, predictions: Predictions, text_field: str | None
                      ) -> tuple[dict, dict[str, list[str]], dict[str, str]]:
    """Structured scores without the text metrics, plus the text field's references and predictions."""
    _check_ids(references, predictions)
    targets = {}
    for sample_id, refs in references.items():
        target = parse_json_object(refs[0]) if refs else None
        if target is None:
            raise DataError("first reference is not a JSON object", record=sample_id,
                            fix="score this run as captions, or fix the target at ingest")
        targets[sample_id] = target
    parsed = {i: parse_json_object(predictions[i]) for i in targets}
    text_field, single_fields, list_fields = _field_roles(targets, text_field)

    valid = [i for i in targets if parsed[i] is not None]
    schema_ok = [i for i in valid if parsed[i].keys() == targets[i].keys() and all(
        _kind(parsed[i][k]) == _kind(v) for k, v in targets[i].items())]

    accuracy = {}
    for field in single_fields:
        scored = [i for i in targets if field in targets[i]]
        correct = sum(1 for i in scored if parsed[i] is not None and field in parsed[i]
                      and _canonical(parsed[i][field]) == _canonical(targets[i][field]))
        accuracy[field] = _ratio(correct, len(scored), 0.0)

    list_scores = {}
    for field in list_fields:
        tp = fp = fn = 0
        for i, target in targets.items():
            if field not in target:
                continue
            wanted = {_canonical(v) for v in target[field]} if isinstance(target[field], list) else set()
            got = parsed[i].get(field) if parsed[i] is not None else None
            given = {_canonical(v) for v in got} if isinstance(got, list) else set()
            tp += len(wanted & given)
            fp += len(given - wanted)
            fn += len(wanted - given)
        # No items expected and none given is perfect; otherwise an empty side scores 0.
        precision = _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0)
        recall = _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0)
        f1 = _ratio(2 * precision * recall, precision + recall, 0.0)
        list_scores[field] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}

    text_refs: dict[str, list[str]] = {}
    text_preds: dict[str, str] = {}
    if text_field is not None:
        for i, target in targets.items():
            if not isinstance(target.get(text_field), str) or not target[text_field].strip():
                continue
            other = [parse_json_object(r) for r in references[i][1:]]
            text_refs[i] = [target[text_field]] + [o[text_field] for o in other if o is not None
                                                   and isinstance(o.get(text_field), str)]
            value = parsed[i].get(text_field) if parsed[i] is not None else None
            text_preds[i] = value if isinstance(value, str) else ""

    n = len(targets)
    scores = {
        "num_samples": n,
        "valid_json": len(valid) / n,
        "schema_match": len(schema_ok) / n,
        "num_invalid_json": n - len(valid),
        "num_schema_mismatch": len(valid) - len(schema_ok),
        "field_accuracy": accuracy,
        "list_fields": list_scores,
        "text_field": text_field,
        "text_scores": None,
    }
    return scores, text_refs, text_preds


def structured_scores(references: References, predictions: Predictions,
                      text_field: str | None = None) -> dict:
    """Scores for JSON-object targets (the first reference of each sample is the target object).

    ``valid_json``: share of predictions that parse as a JSON object (bare or in one code fence);
    ``schema_match``: share with the target's keys and value types; ``field_accuracy``: exact match per
    single-valued field (strings ignore case and spacing); ``list_fields``: micro precision, recall and F1
    of list items; ``text_scores``: caption metrics on the free-text field (``text_field``, or the longest
    string field). A prediction that does not parse scores as wrong/empty everywhere, it never raises.
    """
    scores, text_refs, text_preds = _structured_parts(references, predictions, text_field)
    if text_refs:
        scores["text_scores"] = caption_scores(text_refs, text_preds)
    return scores


# --------------------------------------------------------------------------------------------------
# A run: base vs finetuned
# --------------------------------------------------------------------------------------------------

def relative_change(base: Mapping[str, float], finetuned: Mapping[str, float]) -> dict[str, float | None]:
    """(finetuned - base) / base per metric; None where base is 0."""
    return {k: (finetuned[k] - base[k]) / base[k] if base[k] else None for k in base}


def score_run(references: References, base: Predictions, finetuned: Predictions,
              bootstrap: Mapping[str, Any] | None = None) -> tuple[dict, list[dict]]:
    """Score base and finetuned predictions on the same samples; returns (metrics, per-sample records).

    metrics: ``base`` and ``finetuned`` caption metrics, ``num_test_samples``, ``relative_change`` per
    metric, and ``structured`` (``base``/``finetuned`` :func:`structured_scores`) when the targets are
    JSON objects; ``intervals``: paired bootstrap intervals (:mod:`vidtune.bootstrap`, settings
    ``bootstrap``: resamples, seed, confidence) of base, finetuned and finetuned minus base. per_sample:
    sorted by id, ``{id, references, base, finetuned, base_score, finetuned_score, tokens}`` with the
    :data:`PER_SAMPLE_METRIC` of each prediction and the PTB-tokenized captions (what run comparisons
    resample).
    """
    if set(base) != set(finetuned):
        raise DataError("base and finetuned predictions cover different samples",
                        fix="predict with both models on the same split; rerun the predict steps")
    jobs: list[tuple[References, list[Predictions]]] = [(references, [base, finetuned])]
    structured = None
    if is_structured(references):
        base_parts = _structured_parts(references, base, None)
        ft_parts = _structured_parts(references, finetuned, None)
        structured = {"base": base_parts[0], "finetuned": ft_parts[0]}
        if base_parts[1]:
            jobs += [(base_parts[1], [base_parts[2]]), (ft_parts[1], [ft_parts[2]])]
    results, tokens = _score_jobs(jobs)
    (base_corpus, base_samples), (ft_corpus, ft_samples) = results[0]
    ids = sorted(references)
    captions = {i: {"references": tokens[(0, "ref", i)], "base": tokens[(0, 0, i)][0],
                    "finetuned": tokens[(0, 1, i)][0]} for i in ids}
    metrics: dict[str, Any] = {
        "base": base_corpus,
        "finetuned": ft_corpus,
        "num_test_samples": len(references),
        "relative_change": relative_change(base_corpus, ft_corpus),
    }
    if structured is not None:
        if len(results) > 1:
            structured["base"]["text_scores"] = results[1][0][0]
            structured["finetuned"]["text_scores"] = results[2][0][0]
        metrics["structured"] = structured
    metrics["intervals"] = run_intervals(captions, **(bootstrap or {}))
    per_sample = [
        {"id": i, "references": list(references[i]), "base": base[i], "finetuned": finetuned[i],
         "base_score": base_samples[i], "finetuned_score": ft_samples[i], "tokens": captions[i]}
        for i in ids
    ]
    return metrics, per_sample


def run_intervals(captions: Mapping[str, dict], **settings) -> dict:
    """Bootstrap intervals of a run's base and finetuned metrics and of finetuned minus base, from the
    tokenized captions by id (``{references, base, finetuned}``)."""
    from vidtune.bootstrap import Corpus, bootstrap

    ids = sorted(captions)
    corpus = Corpus([captions[i]["references"] for i in ids])
    result = bootstrap(corpus, {which: [captions[i][which] for i in ids] for which in ("base", "finetuned")},
                       [("base", "finetuned")], **settings)
    result.update(result.pop("intervals"))  # base, finetuned: {metric: [low, high]}
    result["finetuned_minus_base"] = result.pop("differences")[0]["metrics"]
    return result


# --------------------------------------------------------------------------------------------------
# Across runs
# --------------------------------------------------------------------------------------------------

def compare_runs(per_sample_by_run: Mapping[str, list[dict]], **settings) -> dict:
    """Paired bootstrap of the finetuned metrics of every two runs scored on the same test set (the same
    ids and tokenized references), from their per-sample records. Returns the settings, ``groups`` (runs
    that share a test set) and ``differences`` (``second - first`` per pair, runs in sorted order)."""
    from vidtune.bootstrap import Corpus, bootstrap

    groups: dict[str, list[str]] = {}
    for run in sorted(per_sample_by_run):
        records = sorted(per_sample_by_run[run], key=lambda record: record["id"])
        test_set = json.dumps([[record["id"], record["tokens"]["references"]] for record in records])
        groups.setdefault(test_set, []).append(run)
    result: dict[str, Any] = {"groups": [], "differences": []}
    for test_set, runs in groups.items():
        result["groups"].append(runs)
        if len(runs) < 2:
            continue
        references = [references for _, references in json.loads(test_set)]
        captions = {run: [record["tokens"]["finetuned"]
                          for record in sorted(per_sample_by_run[run], key=lambda record: record["id"])]
                    for run in runs}
        pairs = [(first, second) for n, first in enumerate(runs) for second in runs[n + 1:]]
        compared = bootstrap(Corpus(references), captions, pairs, **settings)
        result["differences"] += compared.pop("differences")
        compared.pop("intervals")
        result.update(compared)
    return result
