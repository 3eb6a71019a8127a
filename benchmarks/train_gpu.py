"""The workflow's own training step and prediction at the InternVL3-8B shape: LoRA bf16, QLoRA, predict.

The model is the workflow's ``architecture: {name: internvl3-8b}`` (published configuration, random weights:
speed and memory don't depend on the values), saved once as the build rule saves it. Training runs
``python -m vidtune.train``, the code ``snakemake train_all`` runs (vidtune.train.train: the Trainer, the same
LoRA targets, projector, quantisation, bf16 and gradient checkpointing), one process per method so each
peak is its own, on a synthetic dataset of 448-pixel clips with ``--frames`` frames (256 visual tokens
each). Prediction runs vidtune.predict.predict_records, the predict rule's code, on the base model.

    python benchmarks/train_gpu.py                 # on a GPU machine (about 5 minutes on one H100/H200)
    python benchmarks/train_gpu.py --small         # CPU smoke check: InternVL3-1B shape, 2 text layers

The last line is one JSON object with ``lora_bf16_peak_gib``, ``qlora_peak_gib``, ``lora_bf16_tokens_per_s``,
``qlora_tokens_per_s`` and ``predict_samples_per_s`` (peaks are CUDA max-allocated; on the CPU, max RSS).
Anchors to beat: ms-swift reports InternVL3-8B LoRA at 24 GiB on one GPU; axolotl reports InternVL3.5-8B
QLoRA at about 8.2 GiB (seq 2048, micro-batch 2; here ~2,100 tokens per sample at 8 frames, micro-batch 2).
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

import torch  # noqa: E402

from vidtune.predict import predict_records  # noqa: E402
from vidtune.tiny_model import build_architecture_model, write_synthetic_dataset  # noqa: E402
from vidtune.atomic import read_jsonl  # noqa: E402

SMALL = {"name": "internvl3-1b", "text_layers": 2, "vision_layers": 1, "vocab_size": 4096}


def train_method(meta: Path, model: Path, out: Path, method: str, args, cuda: bool) -> dict:
    """One training in its own process, exactly as the train rule runs it; returns train_summary.json."""
    training = {"method": method, "bf16": "true" if cuda else "false", "gradient_checkpointing": True,
                "batch_size": args.batch_size, "max_steps": args.steps, "save_steps": 10 ** 6,
                "warmup_ratio": 0.0, "learning_rate": 1e-5, "logging_steps": 1,
                "lora": {"rank": args.rank, "alpha": 2 * args.rank, "dropout": 0.05}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_settings.json").write_text(json.dumps(training))
    command = [sys.executable, "-m", "vidtune.train", "--meta", str(meta), "--model", str(model), "--out",
               str(out), "--settings", str(out / "training_settings.json"), "--log", str(out.with_suffix(".log"))]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    summary = json.loads((out / "train_summary.json").read_text())
    log = out.with_suffix(".log").read_text()
    device = "cuda" if "training on cuda" in log else "cpu"
    print(f"{method:5s}: {summary['train_seconds'] / summary['steps'] * 1000:8.1f} ms/step over {summary['steps']} "
          f"steps, {summary['tokens_per_s']:9.1f} tokens/s, peak {summary['peak_memory_gib']:.2f} GiB "
          f"({summary['peak_memory_kind']}), {summary['trainable_params']:,} trainable, on {device}, "
          f"{time.perf_counter() - started:.0f} s with loading", flush=True)
    return {**summary, "device": device}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU smoke check at the InternVL3-1B shape, 2 layers")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="training steps per method (the first included)")
    parser.add_argument("--predict-samples", type=int, default=32)
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoint and data (default: a temp dir)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.small:
        parser.error("no CUDA GPU here: use --small for a CPU smoke check")
    architecture = SMALL if args.small else {"name": "internvl3-8b"}
    with tempfile.TemporaryDirectory(dir=args.workdir) as temp:
        work = Path(temp)
        started = time.perf_counter()
        build_architecture_model(work / "model", architecture, device="cuda" if cuda else "cpu")
        if cuda:
            torch.cuda.empty_cache()
        print(f"built the {architecture['name']}-shaped model in {time.perf_counter() - started:.1f} s", flush=True)
        count = max(args.batch_size * args.steps, args.predict_samples)
        meta = write_synthetic_dataset(work / "data", min(count, 24), num_frames=args.frames, size=448)
        lora = train_method(meta, work / "model", work / "lora", "lora", args, cuda)
        qlora = train_method(meta, work / "model", work / "qlora", "qlora", args, cuda)

        records = read_jsonl(work / "data" / "train.jsonl")
        records = (records * (-(-args.predict_samples // len(records))))[:args.predict_samples]
        records = [{**record, "id": f"{index:04d}"} for index, record in enumerate(records)]
        started = time.perf_counter()
        predict_records(work / "model", records, work / "data", {"max_new_tokens": 32, "batch_size": 8})
        predict_s = time.perf_counter() - started  # includes loading the model, as a prediction job does
        print(f"predict: {len(records) / predict_s:.2f} samples/s ({len(records)} samples, batch 8, "
              f"32 new tokens, model loading included)", flush=True)
    summary = {"model": f"{architecture['name']}-shaped", "device": torch.cuda.get_device_name() if cuda else "cpu",
               "frames": args.frames, "batch_size": args.batch_size, "lora_rank": args.rank, "steps": args.steps,
               "gradient_checkpointing": True, "trained_on": [lora["device"], qlora["device"]],
               "lora_bf16_peak_gib": lora["peak_memory_gib"], "qlora_peak_gib": qlora["peak_memory_gib"],
               "peak_kind": lora["peak_memory_kind"],
               "lora_bf16_tokens_per_s": lora["tokens_per_s"], "qlora_tokens_per_s": qlora["tokens_per_s"],
               "lora_bf16_step_s": lora["train_seconds"] / lora["steps"],
               "qlora_step_s": qlora["train_seconds"] / qlora["steps"],
               "predict_samples_per_s": len(records) / predict_s}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
