"""Caption scoring: vidtune's scorer vs pycocoevalcap called directly, on the same synthetic set.

5000 hypotheses with 5 references each (by default), built from a seeded Zipf-like vocabulary with case,
punctuation and a few empty hypotheses, so the tokenizer and every metric do real work. "Direct" is the
COCO evaluation recipe: PTBTokenizer on references, PTBTokenizer on hypotheses, then Bleu(4), Meteor,
Rouge and Cider. Both must give the same scores. Prints the scores side by side, then the timings; the
last line is one JSON object with ``vidtune_s`` and ``direct_s`` (the best of ``--repeat`` runs each).

    .venv/bin/python benchmarks/scoring.py [--samples 5000] [--references 5] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from vidtune.scoring import CAPTION_METRICS, caption_scores


def synthetic_set(samples: int, references: int, seed: int = 0) -> tuple[dict, dict]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(2000)] + ["a", "the", "man", "woman", "dog", "car", "street",
                                                   "is", "on", "in", "with", "red", "walking", "running"]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]

    def sentence(length: int) -> list[str]:
        return rng.choices(vocabulary, weights, k=length)

    def styled(words: list[str]) -> str:
        text = " ".join(words)
        text = text[:1].upper() + text[1:]
        return text + rng.choice([".", "", " !", ", really."])

    refs, hyps = {}, {}
    for index in range(samples):
        sample_id = f"sample{index:06d}"
        base = sentence(rng.randint(8, 16))
        refs[sample_id] = [styled([w if rng.random() < 0.7 else rng.choice(vocabulary) for w in base])
                           for _ in range(references)]
        if rng.random() < 0.005 and index < samples - 1:
            hyps[sample_id] = ""
        else:
            kept = [w if rng.random() < 0.6 else rng.choice(vocabulary) for w in base
                    if rng.random() < 0.9]
            hyps[sample_id] = styled(kept)
    return refs, hyps


def direct_scores(refs: dict, hyps: dict) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs[i]] for i in refs})
    res = tokenizer.tokenize({i: [{"caption": hyps[i]}] for i in hyps})
    scores = {}
    for scorer, names in ((Bleu(4), CAPTION_METRICS[:4]), (Meteor(), ["METEOR"]), (Rouge(), ["ROUGE_L"]),
                          (Cider(), ["CIDEr"])):
        value, _ = (scorer.compute_score(gts, res, verbose=0) if isinstance(scorer, Bleu)
                    else scorer.compute_score(gts, res))
        scores.update(zip(names, value if isinstance(value, list) else [value]))
    return {k: float(v) for k, v in scores.items()}


def best_time(function, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    refs, hyps = synthetic_set(args.samples, args.references)
    direct_s, direct = best_time(lambda: direct_scores(refs, hyps), args.repeat)
    vidtune_s, ours = best_time(lambda: caption_scores(refs, hyps), args.repeat)

    print(f"{args.samples} hypotheses x {args.references} references")
    print(f"{'metric':<8} {'vidtune':>10} {'direct':>10}")
    for name in CAPTION_METRICS:
        print(f"{name:<8} {ours[name]:>10.6f} {direct[name]:>10.6f}")
    max_diff = max(abs(ours[k] - direct[k]) for k in CAPTION_METRICS)
    print(f"time     {vidtune_s:>9.2f}s {direct_s:>9.2f}s   ratio {vidtune_s / direct_s:.3f}")
    print(json.dumps({"samples": args.samples, "references": args.references, "vidtune_s": round(vidtune_s, 3),
                      "direct_s": round(direct_s, 3), "ratio": round(vidtune_s / direct_s, 3),
                      "max_abs_score_diff": max_diff}))


if __name__ == "__main__":
    main()
