"""Paired bootstrap confidence intervals for caption metrics, computed the way each metric is defined.

On a small test split a CIDEr difference of 0.05 can be noise. Resampling the test samples with
replacement (the same draw for both systems: a *paired* bootstrap) and recomputing the corpus metric on
each resample gives an interval for each system's score and for their difference. Each metric is
recomputed as a corpus statistic, not averaged from per-sample scores:

* CIDEr (pycocoevalcap's CIDEr-D: sigma 6, clipped tf-idf, length penalty on bigram counts): the document
  frequencies, and so the IDF, come from the references of the resampled set, a sample drawn twice
  counting as two documents, exactly as if the resample were scored on its own.
* BLEU-1..4: from the summed clipped n-gram matches, guesses and (closest) reference lengths.
* ROUGE-L: pycocoevalcap's corpus ROUGE-L is the mean of the per-sample scores, so it is that mean.
* METEOR is left out: its corpus score comes from the Java scorer's aggregate statistics, and one Java
  call per resample is too slow.

On the full sample these reproduce pycocoevalcap's numbers (a test checks it). Inputs are PTB-tokenized
captions (what :mod:`vidtune.scoring` stores per sample). Draws come from a seeded generator, so the
intervals are the same on every rerun.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
EXCLUDED = {"METEOR": "its corpus score is the Java scorer's aggregate; one Java call per resample is too slow"}
N = 4
SIGMA = 6.0


def _ngrams(words: list[str]) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, N + 1) for i in range(len(words) - k + 1))


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_l(hypothesis: str, references: list[str], beta: float = 1.2) -> float:
    candidate = hypothesis.split(" ")  # pycocoevalcap splits on single spaces: "" is one empty token
    scores = [(_lcs(r.split(" "), candidate), len(candidate), len(r.split(" "))) for r in references]
    precision = max(lcs / c for lcs, c, _ in scores)
    recall = max(lcs / r for lcs, _, r in scores)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


@dataclass(frozen=True)
class _System:
    """One system's per-sample sufficient statistics against the references."""

    bleu: np.ndarray  # (samples, 2 + 2N): test length, closest reference length, guesses 1..N, matches 1..N
    rouge: np.ndarray  # (samples,)
    hyp_group: np.ndarray  # hypothesis n-gram entries: sample * N + order
    hyp_gram: np.ndarray  # n-gram id (len(vocabulary) for one no reference has)
    hyp_tf: np.ndarray
    shared_group: np.ndarray  # entries of n-grams in both the hypothesis and a reference: ref * N + order
    shared_gram: np.ndarray
    shared_weight: np.ndarray  # min(hyp tf, ref tf) * ref tf
    hyp_length: np.ndarray  # (samples,) bigram count: pycocoevalcap's CIDEr length


class Corpus:
    """The references of a test set (tokenized, per sample), ready to score systems on resamples."""

    def __init__(self, references: Sequence[Sequence[str]]):
        self.references = [list(refs) for refs in references]
        self.size = len(self.references)
        self.vocabulary: dict[tuple, int] = {}
        self.ref_counts: list[list[Counter]] = []
        ref_sample, ref_group, ref_gram, ref_tf, doc_sample, doc_gram, ref_length = [], [], [], [], [], [], []
        self.ref_of_sample: list[list[int]] = []
        for i, refs in enumerate(self.references):
            counts = [_ngrams(r.split()) for r in refs]
            self.ref_counts.append(counts)
            indices = []
            for count, text in zip(counts, refs):
                r = len(ref_length)
                indices.append(r)
                ref_sample.append(i)
                ref_length.append(max(0, len(text.split()) - 1))
                for gram, tf in count.items():
                    ref_group.append(r * N + len(gram) - 1)
                    ref_gram.append(self.vocabulary.setdefault(gram, len(self.vocabulary)))
                    ref_tf.append(tf)
            self.ref_of_sample.append(indices)
            for gram in {gram for count in counts for gram in count}:
                doc_sample.append(i)
                doc_gram.append(self.vocabulary[gram])
        self.ref_sample = np.array(ref_sample, dtype=np.int64)
        self.ref_group = np.array(ref_group, dtype=np.int64)
        self.ref_gram = np.array(ref_gram, dtype=np.int64)
        self.ref_tf = np.array(ref_tf, dtype=float)
        self.ref_length = np.array(ref_length, dtype=float)
        self.refs_per_sample = np.array([len(refs) for refs in self.references], dtype=float)
        self.doc_sample = np.array(doc_sample, dtype=np.int64)
        self.doc_gram = np.array(doc_gram, dtype=np.int64)

    def system(self, hypotheses: Sequence[str]) -> _System:
        """Per-sample statistics of one system's tokenized captions (one per sample, in order)."""
        if len(hypotheses) != self.size:
            raise ValueError(f"{len(hypotheses)} captions for {self.size} samples")
        unseen = len(self.vocabulary)
        bleu, rouge, lengths = [], [], []
        hyp_group, hyp_gram, hyp_tf = [], [], []
        shared_group, shared_gram, shared_weight = [], [], []
        for i, (hypothesis, refs) in enumerate(zip(hypotheses, self.references)):
            words = hypothesis.split()
            counts = _ngrams(words)
            ref_counts = self.ref_counts[i]
            test_length = len(words)
            closest = min((abs(len(r.split()) - test_length), len(r.split())) for r in refs)[1]
            most = Counter()
            for count in ref_counts:
                for gram, tf in count.items():
                    most[gram] = max(most[gram], tf)
            guesses = [max(0, test_length - k + 1) for k in range(1, N + 1)]
            matches = [0] * N
            for gram, tf in counts.items():
                matches[len(gram) - 1] += min(most.get(gram, 0), tf)
            bleu.append([test_length, closest, *guesses, *matches])
            rouge.append(_rouge_l(hypothesis, refs))
            lengths.append(max(0, test_length - 1))
            for gram, tf in counts.items():
                hyp_group.append(i * N + len(gram) - 1)
                hyp_gram.append(self.vocabulary.get(gram, unseen))
                hyp_tf.append(tf)
                for r, count in zip(self.ref_of_sample[i], ref_counts):
                    if gram in count:
                        shared_group.append(r * N + len(gram) - 1)
                        shared_gram.append(self.vocabulary[gram])
                        shared_weight.append(min(tf, count[gram]) * count[gram])
        as_int = lambda values: np.array(values, dtype=np.int64)  # noqa: E731
        return _System(np.array(bleu, dtype=float).reshape(-1, 2 + 2 * N), np.array(rouge, dtype=float),
                       as_int(hyp_group), as_int(hyp_gram), np.array(hyp_tf, dtype=float), as_int(shared_group),
                       as_int(shared_gram), np.array(shared_weight, dtype=float), np.array(lengths, dtype=float))

    def scores(self, system: _System, weights: np.ndarray | None = None) -> dict[str, float]:
        """Corpus metrics of ``system`` on a resample given as how often each sample is drawn (all once by
        default)."""
        weights = np.ones(self.size) if weights is None else np.asarray(weights, dtype=float)
        drawn = weights.sum()
        scores = _bleu(system.bleu, weights)
        scores["ROUGE_L"] = float(weights @ system.rouge / drawn)
        scores["CIDEr"] = float(weights @ self._cider_per_sample(system, weights) / drawn)
        return scores

    def _cider_per_sample(self, system: _System, weights: np.ndarray) -> np.ndarray:
        documents = weights.sum()
        frequency = np.bincount(self.doc_gram, weights=weights[self.doc_sample], minlength=len(self.vocabulary))
        idf = np.append(np.log(documents) - np.log(np.maximum(1.0, frequency)), np.log(documents))
        refs = len(self.ref_length)
        hyp_norm = np.sqrt(_sums(system.hyp_group, (system.hyp_tf * idf[system.hyp_gram]) ** 2, self.size))
        ref_norm = np.sqrt(_sums(self.ref_group, (self.ref_tf * idf[self.ref_gram]) ** 2, refs))
        dot = _sums(system.shared_group, system.shared_weight * idf[system.shared_gram] ** 2, refs)
        denominator = hyp_norm[self.ref_sample] * ref_norm
        similarity = np.divide(dot, denominator, out=np.zeros_like(dot), where=denominator != 0)
        delta = system.hyp_length[self.ref_sample] - self.ref_length
        per_ref = similarity.mean(axis=1) * np.exp(-(delta ** 2) / (2 * SIGMA ** 2))
        return 10.0 * np.bincount(self.ref_sample, weights=per_ref, minlength=self.size) / self.refs_per_sample


def _sums(groups: np.ndarray, values: np.ndarray, rows: int) -> np.ndarray:
    """(rows, N) sums of values by group (row * N + n-gram order - 1)."""
    return np.bincount(groups, weights=values, minlength=rows * N).astype(float).reshape(rows, N)


def _bleu(stats: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    small, tiny = 1e-9, 1e-15
    totals = weights @ stats
    test_length, ref_length = totals[0], totals[1]
    guesses, matches = totals[2:2 + N], totals[2 + N:]
    scores, product = {}, 1.0
    ratio = (test_length + tiny) / (ref_length + small)
    for k in range(N):
        product *= (matches[k] + tiny) / (guesses[k] + small)
        score = product ** (1.0 / (k + 1))
        scores[f"Bleu_{k + 1}"] = float(score * (np.exp(1 - 1 / ratio) if ratio < 1 else 1.0))
    return scores


def draws(samples: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, samples): how often each sample is drawn in each resample, from a seeded generator."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, samples, size=(resamples, samples))
    return np.stack([np.bincount(row, minlength=samples) for row in picks])


def bootstrap(corpus: Corpus, captions: Mapping[str, Sequence[str]], pairs: Sequence[tuple[str, str]],
              resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
              weights: np.ndarray | None = None) -> dict:
    """Percentile intervals for each system's corpus metrics and for the difference ``second - first`` of
    each pair, all on the same resamples (a paired bootstrap).

    ``captions``: name -> tokenized captions, one per sample in the corpus's order. ``weights`` (draw
    counts, one row per resample) replaces the seeded draws. Returns ``{"intervals": {name: {metric:
    [low, high]}}, "differences": [{"first", "second", "metrics": {metric: {"difference", "low", "high",
    "distinguishable"}}}]}`` plus the settings; a difference is distinguishable from zero when its interval
    leaves out 0.
    """
    weights = draws(corpus.size, resamples, seed) if weights is None else np.asarray(weights)
    full, resampled = {}, {}
    for name, texts in captions.items():
        system = corpus.system(texts)
        full[name] = corpus.scores(system)
        rows = [corpus.scores(system, row) for row in weights]
        resampled[name] = np.array([[row[metric] for metric in METRICS] for row in rows])
    tail = 100 * (1 - confidence) / 2

    def interval(values: np.ndarray) -> np.ndarray:
        return np.percentile(values, [tail, 100 - tail], axis=0)

    intervals = {name: {metric: [float(low), float(high)] for metric, low, high in zip(METRICS, *interval(values))}
                 for name, values in resampled.items()}
    differences = []
    for first, second in pairs:
        lows, highs = interval(resampled[second] - resampled[first])
        differences.append({"first": first, "second": second, "metrics": {
            metric: {"difference": full[second][metric] - full[first][metric], "low": float(low),
                     "high": float(high), "distinguishable": bool(low > 0 or high < 0)}
            for metric, low, high in zip(METRICS, lows, highs)}})
    return {"resamples": int(len(weights)), "seed": seed, "confidence": confidence, "metrics": list(METRICS),
            "excluded": EXCLUDED, "intervals": intervals, "differences": differences}
