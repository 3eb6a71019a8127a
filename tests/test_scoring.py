"""Caption and structured-output scores against hand-checked cases (each scoring call starts Java twice:
the tests share a few calls through module fixtures)."""

import json
import math
from collections import Counter

import pytest

from vidtune.errors import DataError
from vidtune.scoring import (CAPTION_METRICS, caption_scores, is_structured,
                             parse_json_object, score_run, structured_scores)

REFERENCES = {
    "a": ["A man rides a brown horse along the beach.", "Someone riding a horse on the sand."],
    "b": ["Two children build a sandcastle near the water.", "Kids making a sand castle."],
    "c": ["A red car drives through a busy city street at night.", "Traffic in a city at night."],
    "d": ["A woman slices vegetables in a small kitchen.", "Someone is cutting carrots."],
}
EXACT = {i: refs[0] for i, refs in REFERENCES.items()}
# The same captions as COCO's tokenizer sees them, written differently: case, trailing punctuation, and
# line breaks the pycocoevalcap wrapper does not replace (they would shift captions onto other ids).
REFORMATTED = {
    "a": "a MAN rides a brown horse along the beach",
    "b": "Two children build a sandcastle\rnear the water !",
    "c": "A red car drives through a busy city street\u2028at night...",
    "d": "  a woman slices vegetables in a small kitchen.\n",
}


@pytest.fixture(scope="module")
def formatting_run():
    return score_run(REFERENCES, REFORMATTED, EXACT)


@pytest.fixture(scope="module")
def empty_run():
    return score_run(REFERENCES, {**EXACT, "b": ""}, EXACT)


def test_identical_captions_score_perfectly(formatting_run):
    metrics, _ = formatting_run
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"):
        assert metrics["finetuned"][name] == pytest.approx(1.0, abs=1e-6)
    assert metrics["finetuned"]["METEOR"] > 0.9
    assert all(type(v) is float for v in metrics["finetuned"].values())
    assert list(metrics["finetuned"]) == list(CAPTION_METRICS)


def test_formatting_does_not_change_scores(formatting_run):
    metrics, per_sample = formatting_run
    assert metrics["finetuned"]["CIDEr"] > 1.0
    for name in CAPTION_METRICS:
        assert metrics["base"][name] == pytest.approx(metrics["finetuned"][name], rel=1e-9), name
    for record in per_sample:
        assert record["base_score"] == pytest.approx(record["finetuned_score"], rel=1e-9), record["id"]
        assert record["base_score"] > 0


def test_run_shape(formatting_run):
    metrics, per_sample = formatting_run
    assert metrics["num_test_samples"] == 4
    assert set(metrics["relative_change"]) == set(CAPTION_METRICS)
    assert metrics["relative_change"]["Bleu_4"] == pytest.approx(0.0, abs=1e-9)
    assert "structured" not in metrics
    assert [r["id"] for r in per_sample] == ["a", "b", "c", "d"]
    assert per_sample[1]["base"] == REFORMATTED["b"] and per_sample[1]["references"] == REFERENCES["b"]
    json.dumps(metrics)  # plain Python values only


def test_empty_prediction_lowers_scores_rather_than_vanishing(empty_run):
    metrics, per_sample = empty_run
    # Dropping the empty prediction would leave three exact captions: every metric would stay perfect.
    for name in CAPTION_METRICS:
        assert metrics["base"][name] < metrics["finetuned"][name], name
    assert metrics["base"]["Bleu_1"] < 0.9 and metrics["base"]["ROUGE_L"] == pytest.approx(0.75)
    assert metrics["num_test_samples"] == 4
    empty = next(r for r in per_sample if r["id"] == "b")
    assert empty["base"] == "" and empty["base_score"] == 0.0 and empty["finetuned_score"] > 0
    assert metrics["relative_change"]["ROUGE_L"] == pytest.approx(1 / 3)


def _independent_bleu(references, hypotheses, max_n=4):
    """Corpus BLEU as Papineni et al. define it: clipped n-gram matches and n-gram counts summed over
    the corpus, brevity penalty from corpus lengths, each sentence's reference length being the one
    closest to its hypothesis (the shorter on a tie), as pycocoevalcap's 'closest' option does."""
    def ngrams(words, n):
        return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))

    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for sample_id, hypothesis in hypotheses.items():
        hyp = hypothesis.split()
        refs = [r.split() for r in references[sample_id]]
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            best = Counter()
            for ref in refs:
                best |= ngrams(ref, n)
            counts = ngrams(hyp, n)
            matched[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    penalty = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return [penalty * math.exp(sum(math.log(matched[k] / total[k]) for k in range(n)) / n)
            for n in range(1, max_n + 1)]


def test_bleu_matches_independent_computation():
    # Already lower-case and unpunctuated, so PTB tokenization leaves them as they are; hypotheses are
    # shorter than their closest references, so the brevity penalty matters.
    references = {"x": ["the cat sat on the mat", "a cat is sitting on a small mat"],
                  "y": ["two dogs play in the snow", "dogs are playing in deep snow outside"]}
    hypotheses = {"x": "cat sat on the mat", "y": "dogs are playing in the snow"}
    expected = _independent_bleu(references, hypotheses)
    assert expected[3] < expected[0] < 1.0
    scores = caption_scores(references, hypotheses)
    for n in range(4):
        assert scores[f"Bleu_{n + 1}"] == pytest.approx(expected[n], rel=1e-6)


def test_mismatched_ids_raise_before_scoring():
    with pytest.raises(DataError, match="different samples"):
        caption_scores(REFERENCES, {"a": "x"})
    with pytest.raises(DataError, match="different samples"):
        score_run(REFERENCES, EXACT, {**EXACT, "e": "extra"})
    with pytest.raises(DataError, match="no non-blank reference"):
        caption_scores({"a": [" "]}, {"a": "x"})


# --------------------------------------------------------------------------------------------------
# Structured output
# --------------------------------------------------------------------------------------------------

def _event(caption, event_type, violations, action="brake", density="low", visibility="clear"):
    return {"caption": caption, "event_type": event_type, "rule_violations": violations,
            "intended_driving_action": action, "traffic_density": density, "visibility": visibility}


TARGETS = {
    "n1": _event("A car cuts in front of the ego vehicle on a wet highway.", "near_miss",
                 ["unsafe_lane_change"]),
    "n2": _event("The ego vehicle stops at a red light behind a truck.", "normal", [], action="stop"),
    "n3": _event("A pedestrian crosses outside the crosswalk at night.", "near_miss",
                 ["jaywalking", "no_lights"], density="medium", visibility="dark"),
    "n4": _event("A cyclist runs a stop sign at an intersection.", "violation", ["ran_stop_sign"]),
}
STRUCTURED_REFS = {i: [json.dumps(t)] for i, t in TARGETS.items()}
STRUCTURED_PREDS = {
    # valid, in a code fence, case differs, one extra list item
    "n1": "```json\n" + json.dumps(_event("A car cuts in front of the ego vehicle on a highway.",
                                          "Near_Miss", ["unsafe_lane_change", "speeding"])) + "\n```",
    # exact
    "n2": json.dumps(TARGETS["n2"]),
    # partial: parses, but fields are missing and one has the wrong type
    "n3": json.dumps({"caption": "A person crosses the road at night.", "event_type": "near_miss",
                      "rule_violations": "jaywalking"}),
    # malformed
    "n4": "The cyclist ignores the stop sign {\"event_type\": ",
}


@pytest.fixture(scope="module")
def structured_run():
    return score_run(STRUCTURED_REFS, {i: "" for i in TARGETS}, STRUCTURED_PREDS)


def test_structured_scores_valid_invalid_partial(structured_run):
    metrics, _ = structured_run
    scores = metrics["structured"]["finetuned"]
    assert scores["num_samples"] == 4
    assert scores["valid_json"] == 0.75 and scores["num_invalid_json"] == 1
    assert scores["schema_match"] == 0.5 and scores["num_schema_mismatch"] == 1
    assert scores["field_accuracy"] == {"event_type": 0.75, "intended_driving_action": 0.5,
                                        "traffic_density": 0.5, "visibility": 0.5}
    violations = scores["list_fields"]["rule_violations"]
    # expected items: 1 + 0 + 2 + 1 = 4; predicted: n1 two (one right), n3 a string (not a list) -> none
    assert violations["precision"] == pytest.approx(1 / 2)
    assert violations["recall"] == pytest.approx(1 / 4)
    assert violations["f1"] == pytest.approx(1 / 3)
    assert violations["support"] == 4
    assert scores["text_field"] == "caption"
    assert 0 < scores["text_scores"]["CIDEr"] and 0 < scores["text_scores"]["Bleu_1"] < 1


def test_structured_all_empty_base_scores_zero_without_crashing(structured_run):
    metrics, _ = structured_run
    base = metrics["structured"]["base"]
    assert base["valid_json"] == 0.0 and base["num_invalid_json"] == 4
    assert set(base["field_accuracy"].values()) == {0.0}
    assert base["list_fields"]["rule_violations"]["recall"] == 0.0
    assert base["text_scores"]["CIDEr"] == 0.0
    # an all-empty base scores 0, and a change relative to 0 is undefined rather than infinite
    assert metrics["base"]["CIDEr"] == 0.0 and metrics["relative_change"]["CIDEr"] is None
    json.dumps(metrics)


def test_structured_scores_matches_score_run(structured_run):
    """The standalone function and score_run's batched path give the same numbers."""
    metrics, _ = structured_run
    assert structured_scores(STRUCTURED_REFS, STRUCTURED_PREDS) == metrics["structured"]["finetuned"]


def test_json_detection():
    assert is_structured(STRUCTURED_REFS) and not is_structured(REFERENCES)
    assert parse_json_object('  {"a": 1} ') == {"a": 1}
    assert parse_json_object("```\n{\"a\": [1]}\n```") == {"a": [1]}
    for text in ("[1, 2]", "null", "", "{", "[" * 100000, None, 3):
        assert parse_json_object(text) is None
    with pytest.raises(DataError, match="text field"):
        structured_scores(STRUCTURED_REFS, STRUCTURED_PREDS, text_field="event")
