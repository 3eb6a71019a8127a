"""Training throughput of the three batchings, side by side in one run: the padded baseline (micro-batches of
8 random samples), length grouping (8 samples of similar length) and padding-free packing (rows of at most
4096 tokens).

The settings are fixed, so the figure can't be tuned: 96 samples drawn with seed 0 (448-pixel clips of 1-8
frames, one tile each, 256 visual tokens per frame; captions of 5-200 tokens), the check step's own token
counts (check_training_data writes them, as in the workflow), LoRA (the workflow's defaults), one epoch, the
model ``architecture: {name: internvl3-1b, vision_layers: 2, text_layers: 4}`` on a CPU and the full
``internvl3-8b`` shape (bf16, gradient checkpointing) on a GPU. Each mode runs ``vidtune.train.train``, what
the train rule runs, in its own process over the same samples. Tokens are counted without padding.

    python benchmarks/train_throughput.py                       # CPU, or the 8B shape where CUDA is
    python benchmarks/train_throughput.py --attention flash_attention_2   # GPU (benchmarks/gpu_check.sh)

The last line is one JSON object: ``{"baseline": {"padding_share", "tokens_per_s", "data_wait_share"},
"grouped": {...}, "packed": {...}}``; the line before it gives the speed-ups against the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vidtune.check_training_data import check_dataset, write_training_meta  # noqa: E402
from vidtune.families import family_for_folder  # noqa: E402
from vidtune.modeling import load_processor  # noqa: E402
from vidtune.tiny_model import build_architecture_model  # noqa: E402

SAMPLES, SEED, SIZE, FRAMES, CAPTION_TOKENS = 96, 0, 448, (1, 8), (5, 200)
CPU_MODEL = {"name": "internvl3-1b", "vision_layers": 2, "text_layers": 4}
GPU_MODEL = {"name": "internvl3-8b"}
MODES = {"baseline": {"batch_size": 8}, "packed": {"packing": True, "packing_max_tokens": 4096},
         "grouped": {"batch_size": 8, "group_by_length": True}}  # run in this order; reported as the issue lists
PROMPT = "Describe the video."
WORDS = ("a person lifts the bar slowly then lowers it while the camera pans left across the gym floor and "
         "another athlete waits near the rack holding a towel before stepping forward to squat deeply").split()


def write_dataset(folder: Path, tokenizer, count: int = SAMPLES) -> Path:
    """``count`` (SAMPLES) clips of 1-8 JPEG frames (448 px) with captions of 5-200 tokens, drawn with SEED; meta.json."""
    rng = np.random.default_rng(SEED)
    records = []
    for index in range(count):
        frames, tokens = int(rng.integers(FRAMES[0], FRAMES[1] + 1)), int(rng.integers(*CAPTION_TOKENS) + 1)
        clip = folder / "frames" / f"clip_{index:03d}"
        clip.mkdir(parents=True, exist_ok=True)
        for number in range(frames):
            blocks = rng.integers(0, 256, (SIZE // 16, SIZE // 16, 3), dtype=np.uint8)
            Image.fromarray(blocks).resize((SIZE, SIZE), Image.BILINEAR).save(clip / f"frame_{number}.jpg",
                                                                              quality=90)
        words, caption = [], ""
        while len(tokenizer(caption, add_special_tokens=False)["input_ids"]) < tokens:
            words.append(WORDS[int(rng.integers(len(WORDS)))])
            caption = " ".join(words)
        records.append({"id": f"clip_{index:03d}", "video": f"frames/clip_{index:03d}/",
                        "conversations": [{"from": "human", "value": "<video>\n" + PROMPT},
                                          {"from": "gpt", "value": caption}]})
    (folder / "all.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    meta = {"clips": {"root": str(folder), "annotation": str(folder / "all.jsonl"), "repeat_time": 1,
                      "max_dynamic_patch": 1, "length": len(records),
                      "data_settings": {"prompt": PROMPT, "frames": {"policy": "uniform", "short_side": SIZE}}}}
    (folder / "run_meta.json").write_text(json.dumps(meta))
    return folder / "run_meta.json"


def train_mode(name: str, meta: Path, model: Path, out: Path, cuda: bool, attention: str) -> dict:
    settings = {"method": "lora", "epochs": 1, "learning_rate": 1e-5, "warmup_ratio": 0.0, "save_steps": 10 ** 6,
                "logging_steps": 1, "bf16": "true" if cuda else "false", "gradient_checkpointing": cuda,
                "attention": attention, **MODES[name]}
    out.mkdir(parents=True)
    (out / "settings.json").write_text(json.dumps(settings))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vidtune.train", "--meta", str(meta), "--model", str(model),
                    "--out", str(out), "--settings", str(out / "settings.json"), "--log", str(out / "train.log")],
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    summary = json.loads((out / "train_summary.json").read_text())
    print(f"{name:8s}: {summary['steps']:3d} steps, {summary['tokens_per_s']:8.1f} tokens/s, padding "
          f"{100 * summary['padding_share']:5.1f}%, data wait {100 * summary['data_wait_share']:4.1f}% of "
          f"{summary['train_seconds']:.0f} s ({summary['data_workers']} loading processes), "
          f"{time.perf_counter() - started:.0f} s with loading", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--workdir", type=Path, help="where the model and data go (default: a temp dir)")
    parser.add_argument("--samples", type=int, default=SAMPLES,
                        help=f"a partial run on the first N of the {SAMPLES} samples (not the benchmark's figure; "
                             "below 32 samples length grouping has nothing to group)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    architecture = GPU_MODEL if cuda else CPU_MODEL
    with tempfile.TemporaryDirectory(dir=args.workdir) as temp:
        work = Path(temp)
        build_architecture_model(work / "model", architecture, device="cuda" if cuda else "cpu")
        if cuda:
            torch.cuda.empty_cache()
        processor = load_processor(work / "model")
        run_meta = write_dataset(work / "data", processor.tokenizer, args.samples)
        checked = check_dataset(work / "data" / "all.jsonl", work / "data", processor, work / "checked",
                                family=family_for_folder(work / "model"), dataset="clips", max_dynamic_patch=1, max_seq_length=8192, over_length="drop")
        meta = work / "meta.json"
        write_training_meta(run_meta, {"clips": work / "checked" / "train.jsonl"}, meta)
        lengths = json.loads((work / "checked" / "lengths.json").read_text())
        print(f"{architecture}: {checked['accepted']} samples, {sum(lengths)} tokens, {min(lengths)}-{max(lengths)} "
              f"per sample, on {torch.cuda.get_device_name() if cuda else 'cpu'}", flush=True)
        summaries = {name: train_mode(name, meta, work / "model", work / name, cuda, args.attention)
                     for name in MODES}
    result = {name: {"padding_share": summaries[name]["padding_share"], "tokens_per_s": summaries[name]["tokens_per_s"],
                     "data_wait_share": summaries[name]["data_wait_share"]} for name in ("baseline", "grouped", "packed")}
    speedup = {name: round(result[name]["tokens_per_s"] / result["baseline"]["tokens_per_s"], 3)
               for name in ("grouped", "packed")}
    print(f"tokens/s against the baseline: grouped {speedup['grouped']}x, packed {speedup['packed']}x "
          f"({torch.cuda.get_device_name() if cuda else 'cpu'}, {args.attention}"
          f"{'' if args.samples == SAMPLES else f'; PARTIAL RUN of {args.samples} samples, not the benchmark figure'})",
          flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
