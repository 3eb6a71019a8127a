"""Training speed and memory of an InternVL3-8B-shaped model: LoRA in bf16 and QLoRA (4-bit nf4).

The model is built from InternVL3-8B-hf's published configuration with random weights (speed and memory
don't depend on the values), saved once, and loaded through vidtune's own training setup
(:func:`vidtune.train.prepare_model`: the same LoRA targets, projector, quantisation and checkpointing as a
run). Each step is one micro-batch of samples with ``--frames`` frames (256 visual tokens each).

    python benchmarks/train_gpu.py                 # on a GPU machine
    python benchmarks/train_gpu.py --tiny          # CPU smoke check with the tiny model's shape

Prints step time, tokens/s and peak memory per method; the last line is one JSON object with
``lora_bf16_peak_gib``, ``qlora_peak_gib``, ``lora_bf16_tokens_per_s``, ``qlora_tokens_per_s`` (and more).
Anchors: ms-swift reports InternVL3-8B LoRA bf16 at 24 GiB on one GPU; axolotl reports InternVL3.5-8B QLoRA
at about 8.2 GiB (r32, seq 2048, micro-batch 2).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config  # noqa: E402
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig  # noqa: E402

from vidtune.modeling import collate, encode_sample  # noqa: E402
from vidtune.tiny_model import build_processor, build_tiny_model, build_tokenizer, synthetic_frames  # noqa: E402
from vidtune.train import prepare_model, training_settings  # noqa: E402

# OpenGVLab/InternVL3-8B-hf config.json: InternViT-300M (448 px, patch 14) + Qwen2.5-7B.
INTERNVL3_8B_VISION = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096, "image_size": 448, "patch_size": 14, "attention_bias": True,
                       "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "layer_scale_init_value": 0.1,
                       "use_mean_pooling": True, "hidden_act": "gelu"}
INTERNVL3_8B_TEXT = {"vocab_size": 151674, "hidden_size": 3584, "intermediate_size": 18944,
                     "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                     "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "hidden_act": "silu", "tie_word_embeddings": False}
TINY = {"image_size": 64, "patch_size": 8, "vision_hidden_size": 64, "vision_layers": 2, "text_hidden_size": 64,
        "text_layers": 2, "seed": 0}


def build_8b(folder: Path, device: str) -> int:
    """Save a random-weight InternVL3-8B-shaped checkpoint (bf16) with a processor; returns tokens per tile."""
    tokenizer = build_tokenizer()
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(**INTERNVL3_8B_VISION), text_config=Qwen2Config(**INTERNVL3_8B_TEXT),
        downsample_ratio=0.5, image_token_id=tokenizer.context_image_token_id, image_seq_length=256,
        tie_word_embeddings=False)
    with torch.device(device):
        model = InternVLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    settings = {"image_size": 448, "patch_size": 14}
    build_processor(settings, tokenizer).save_pretrained(folder)
    return 256


def batch_for(folder: Path, frames: int, batch_size: int, device: str, dtype: torch.dtype) -> dict:
    from vidtune.modeling import load_processor

    processor = load_processor(folder)
    size = processor.image_processor.size["height"]
    samples = [encode_sample(processor, synthetic_frames("red", "circle", "left", frames, size),
                             "Describe the video.", "a red circle moves left", media_type="video")
               for _ in range(batch_size)]
    batch = collate(samples, processor.tokenizer.pad_token_id)
    batch = {key: value.to(device) for key, value in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return batch


def run_method(folder: Path, method: str, args, device: str) -> dict:
    cuda = device == "cuda"
    settings = training_settings({"method": method, "bf16": "true" if cuda else "false",
                                  "gradient_checkpointing": True,
                                  "lora": {"rank": args.rank, "alpha": 2 * args.rank, "dropout": 0.05}})
    log = logging.getLogger("benchmark")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = prepare_model(folder, settings, False, log)
    if method == "lora":
        model.to(device)
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    dtype = torch.bfloat16 if cuda else torch.float32
    batch = batch_for(folder, args.frames, args.batch_size, device, dtype)
    tokens = int(batch["attention_mask"].sum())
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    times = []
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    step_s = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    result = {"step_s": step_s, "tokens_per_step": tokens, "tokens_per_s": tokens / step_s, "peak_gib": peak,
              "trainable_params": sum(p.numel() for p in parameters), "loss": float(loss.detach())}
    print(f"{method:5s}: {step_s * 1000:8.1f} ms/step, {tokens} tokens/step, {result['tokens_per_s']:9.1f} "
          f"tokens/s, peak {'n/a (CPU)' if peak is None else f'{peak:.2f} GiB'}, "
          f"{result['trainable_params']:,} trainable", flush=True)
    del model, optimizer, batch
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke check with the tiny model's shape")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="where to write the random checkpoint (default: a temp dir)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu" and not args.tiny:
        parser.error("no CUDA GPU here: use --tiny for a CPU smoke check")
    if args.tiny:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.workdir) as temp:
        folder = Path(temp) / "model"
        started = time.perf_counter()
        if args.tiny:
            build_tiny_model(folder, TINY)
        else:
            build_8b(folder, device)
        print(f"built {'tiny' if args.tiny else 'InternVL3-8B-shaped'} model in {time.perf_counter() - started:.1f} s",
              flush=True)
        lora = run_method(folder, "lora", args, device)
        qlora = run_method(folder, "qlora", args, device)
    summary = {"model": "tiny" if args.tiny else "InternVL3-8B-shaped", "device": torch.cuda.get_device_name()
               if device == "cuda" else "cpu", "frames": args.frames, "batch_size": args.batch_size,
               "lora_rank": args.rank, "gradient_checkpointing": True,
               "lora_bf16_peak_gib": lora["peak_gib"], "qlora_peak_gib": qlora["peak_gib"],
               "lora_bf16_tokens_per_s": lora["tokens_per_s"], "qlora_tokens_per_s": qlora["tokens_per_s"],
               "lora_bf16_step_s": lora["step_s"], "qlora_step_s": qlora["step_s"],
               "tokens_per_step": lora["tokens_per_step"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
