"""Paired bootstrap intervals (issue 16): corpus metrics recomputed per resample, against pycocoevalcap and
against a case computed by hand; the same on every rerun."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from vidtune.bootstrap import METRICS, Corpus, bootstrap, draws
from vidtune.scoring import compare_runs


def pycocoevalcap_scores(references, hypotheses, picks):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {k: references[i] for k, i in enumerate(picks)}
    res = {k: [hypotheses[i]] for k, i in enumerate(picks)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {**dict(zip(METRICS[:4], bleu)), "ROUGE_L": Rouge().compute_score(gts, res)[0],
            "CIDEr": Cider().compute_score(gts, res)[0]}


def random_corpus(seed=1, samples=15):
    words = "a red blue green square circle moves left right up down slowly the".split()
    rng = random.Random(seed)

    def caption(least):
        return " ".join(rng.choice(words) for _ in range(rng.randint(least, 9)))

    references = [[caption(1) for _ in range(rng.randint(1, 3))] for _ in range(samples)]
    return references, [caption(0) for _ in range(samples)]


def test_corpus_metrics_equal_pycocoevalcap_on_the_sample_and_on_resamples():
    """pycocoevalcap scoring the resample as its own set (a sample drawn twice is two documents for
    CIDEr's document frequencies) gives the same numbers."""
    references, hypotheses = random_corpus()
    corpus = Corpus(references)
    system = corpus.system(hypotheses)
    rows = [np.ones(len(references), dtype=int), *draws(len(references), 4, seed=3)]
    for row in rows:
        picks = [i for i, count in enumerate(row) for _ in range(count)]
        ours, theirs = corpus.scores(system, row), pycocoevalcap_scores(references, hypotheses, picks)
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def test_interval_by_hand():
    """Two samples, each with one reference; system A says nothing right, B gets sample 0 word for word.
    Three resamples: {0, 0}, {1, 1}, {0, 1}. ROUGE-L of B is 1, 0, 0.5 on them and of A 0 throughout;
    BLEU-1 of B is 1 on {0, 0} (3 of 3 words), 0 on {1, 1}, 3/6 on {0, 1} (brevity: equal lengths)."""
    corpus = Corpus([["a red square"], ["a blue circle"]])
    first, second = ["x y z", "x y z"], ["a red square", "p q r"]
    weights = np.array([[2, 0], [0, 2], [1, 1]])
    result = bootstrap(corpus, {"A": first, "B": second}, [("A", "B")], confidence=0.5, weights=weights)
    # Percentiles 25 and 75 of (1, 0, 0.5), linear interpolation: 0.25 and 0.75.
    assert result["intervals"]["B"]["ROUGE_L"] == pytest.approx([0.25, 0.75])
    assert result["intervals"]["A"]["ROUGE_L"] == pytest.approx([0.0, 0.0])
    rouge = result["differences"][0]["metrics"]["ROUGE_L"]
    assert rouge["difference"] == pytest.approx(0.5)
    assert (rouge["low"], rouge["high"]) == pytest.approx((0.25, 0.75)) and rouge["distinguishable"]
    bleu = result["differences"][0]["metrics"]["Bleu_1"]
    assert (bleu["low"], bleu["high"]) == pytest.approx((0.25, 0.75))
    # CIDEr of B on {0, 0}: both documents hold every n-gram, IDF log(2) - log(2) = 0, so 0; on {0, 1}:
    # sample 0 matches its reference exactly with IDF log 2 on every n-gram: 10 * (1 + 1 + 1 + 0) / 4 for
    # unigrams..trigrams (no 4-grams), over 2 samples.
    cider = [corpus.scores(corpus.system(second), row)["CIDEr"] for row in weights]
    assert cider == pytest.approx([0.0, 0.0, 10 * 3 / 4 / 2])
    # ...which is pycocoevalcap's CIDEr on the full set:
    assert corpus.scores(corpus.system(second))["CIDEr"] == pytest.approx(
        pycocoevalcap_scores([["a red square"], ["a blue circle"]], second, [0, 1])["CIDEr"])


def test_intervals_are_the_same_on_every_rerun_and_cover_the_difference():
    references, hypotheses = random_corpus(samples=20)
    _, others = random_corpus(seed=2, samples=20)
    corpus = Corpus(references)
    once = bootstrap(corpus, {"a": others, "b": hypotheses}, [("a", "b")], resamples=200, seed=7)
    again = bootstrap(Corpus(references), {"a": others, "b": hypotheses}, [("a", "b")], resamples=200, seed=7)
    assert once == again
    for metric, entry in once["differences"][0]["metrics"].items():
        assert entry["low"] <= entry["high"]
        assert entry["distinguishable"] == (entry["low"] > 0 or entry["high"] < 0)
    assert once["excluded"] and "METEOR" not in once["metrics"]


def test_identical_systems_are_not_distinguishable():
    references, hypotheses = random_corpus()
    result = bootstrap(Corpus(references), {"a": hypotheses, "b": hypotheses}, [("a", "b")], resamples=50)
    assert all(not entry["distinguishable"] and entry["low"] == entry["high"] == 0
               for entry in result["differences"][0]["metrics"].values())


def test_compare_runs_pairs_only_runs_on_the_same_test_set():
    def records(refs, captions):
        return [{"id": f"s{i}", "tokens": {"references": r, "finetuned": c, "base": ""}}
                for i, (r, c) in enumerate(zip(refs, captions))]

    references, hypotheses = random_corpus(samples=6)
    other_refs, _ = random_corpus(seed=5, samples=6)
    result = compare_runs({"x": records(references, hypotheses), "y": records(references, hypotheses[::-1]),
                           "z": records(other_refs, hypotheses)}, resamples=20, seed=0)
    assert result["groups"] == [["x", "y"], ["z"]]
    assert [(d["first"], d["second"]) for d in result["differences"]] == [("x", "y")]
    assert math.isclose(result["differences"][0]["metrics"]["CIDEr"]["difference"],
                        Corpus(references).scores(Corpus(references).system(hypotheses[::-1]))["CIDEr"]
                        - Corpus(references).scores(Corpus(references).system(hypotheses))["CIDEr"])
