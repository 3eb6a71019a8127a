"""Time and peak memory of converting an original-layout InternVL checkpoint of InternVL3-8B's shape.

Writes a random-weight folder with the published tensor names and shapes of OpenGVLab/InternVL3-8B
(InternViT-300M + Qwen2.5-7B, bf16, four shards as on the Hub; about 16 GB) shard by shard, then converts it
in a child process and reports the child's wall time and peak resident memory, beside the largest shard's
size (the converter holds about one shard). The tokenizer and the chat-template settings come from the
tiny qwen2 test fixture (the embedding keeps the published 151674 rows).

    python benchmarks/convert_checkpoint.py --work /tmp/convert_bench          # the 8B shape (~16 GB on disk)
    python benchmarks/convert_checkpoint.py --work /tmp/convert_bench --layers 2  # a quick check of the script

Its last line is one JSON object: {"shape", "tensors_gb", "largest_shard_gb", "seconds", "peak_rss_gb"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "internvl_original" / "qwen2"
VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
          "image_size": 448, "patch_size": 14, "qkv_bias": True, "qk_normalization": False,
          "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu", "initializer_factor": 0.1,
          "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b"}
TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
        "num_hidden_layers": 28, "vocab_size": 151674, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "hidden_act": "silu", "tie_word_embeddings": False,
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "bfloat16"}


def tensor_shapes(vision_layers: int, text_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    v, t = VISION, TEXT
    c, patches = v["hidden_size"], (v["image_size"] // v["patch_size"]) ** 2
    shapes = [("vision_model.embeddings.class_embedding", (1, 1, c)),
              ("vision_model.embeddings.patch_embedding.weight", (c, 3, v["patch_size"], v["patch_size"])),
              ("vision_model.embeddings.patch_embedding.bias", (c,)),
              ("vision_model.embeddings.position_embedding", (1, patches + 1, c))]
    for i in range(vision_layers):
        p = f"vision_model.encoder.layers.{i}."
        shapes += [(p + "attn.qkv.weight", (3 * c, c)), (p + "attn.qkv.bias", (3 * c,)),
                   (p + "attn.proj.weight", (c, c)), (p + "attn.proj.bias", (c,)), (p + "ls1", (c,)),
                   (p + "ls2", (c,)), (p + "norm1.weight", (c,)), (p + "norm1.bias", (c,)),
                   (p + "norm2.weight", (c,)), (p + "norm2.bias", (c,)),
                   (p + "mlp.fc1.weight", (v["intermediate_size"], c)), (p + "mlp.fc1.bias", (v["intermediate_size"],)),
                   (p + "mlp.fc2.weight", (c, v["intermediate_size"])), (p + "mlp.fc2.bias", (c,))]
    h, kv = t["hidden_size"], t["hidden_size"] // t["num_attention_heads"] * t["num_key_value_heads"]
    shapes += [("mlp1.0.weight", (4 * c,)), ("mlp1.0.bias", (4 * c,)), ("mlp1.1.weight", (h, 4 * c)),
               ("mlp1.1.bias", (h,)), ("mlp1.3.weight", (h, h)), ("mlp1.3.bias", (h,)),
               ("language_model.model.embed_tokens.weight", (t["vocab_size"], h))]
    for i in range(text_layers):
        p = f"language_model.model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                   (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
                   (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
                   (p + "self_attn.o_proj.weight", (h, h)), (p + "input_layernorm.weight", (h,)),
                   (p + "post_attention_layernorm.weight", (h,)),
                   (p + "mlp.gate_proj.weight", (t["intermediate_size"], h)),
                   (p + "mlp.up_proj.weight", (t["intermediate_size"], h)),
                   (p + "mlp.down_proj.weight", (h, t["intermediate_size"]))]
    return shapes + [("language_model.model.norm.weight", (h,)),
                     ("language_model.lm_head.weight", (t["vocab_size"], h))]


def write_original_folder(folder: Path, vision_layers: int, text_layers: int, shards: int = 4) -> int:
    """The folder, written one shard at a time; returns the weights' bytes."""
    shapes = tensor_shapes(vision_layers, text_layers)
    total = sum(2 * torch.Size(shape).numel() for _, shape in shapes)
    folder.mkdir(parents=True)
    index, shard, size, number = {}, {}, 0, 1
    generator = torch.Generator().manual_seed(0)
    names = [f"model-{n:05d}-of-{shards:05d}.safetensors" for n in range(1, shards + 1)]
    for position, (name, shape) in enumerate(shapes):
        shard[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        size += shard[name].numel() * 2
        if size >= total / shards * number or position == len(shapes) - 1:
            save_file(shard, folder / names[number - 1], metadata={"format": "pt"})
            index.update(dict.fromkeys(shard, names[number - 1]))
            shard, number = {}, min(shards, number + 1)
    used = sorted(set(index.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": index}))
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(force_image_size=448, max_dynamic_patch=12,
                  vision_config={**config["vision_config"], **VISION, "num_hidden_layers": vision_layers},
                  llm_config={**config["llm_config"], **TEXT, "num_hidden_layers": text_layers})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for path in FIXTURE.iterdir():
        if not path.name.endswith(".safetensors") and path.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(path, folder / path.name)
    assert len(used) <= shards
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (removed first)")
    parser.add_argument("--layers", type=int, help="text and vision layers (default: the published 28 / 24)")
    parser.add_argument("--keep", action="store_true", help="keep the folders")
    options = parser.parse_args()
    shutil.rmtree(options.work, ignore_errors=True)
    source, out = options.work / "InternVL3-8B-random", options.work / "native"
    total = write_original_folder(source, options.layers or VISION["num_hidden_layers"],
                                  options.layers or TEXT["num_hidden_layers"])
    largest = max(path.stat().st_size for path in source.glob("model-*.safetensors"))
    start = time.perf_counter()
    code = ("import sys; from vidtune.internvl_checkpoint.convert import convert_checkpoint; "
            "convert_checkpoint(sys.argv[1], sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(source), str(out)], check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    if not options.keep:
        shutil.rmtree(options.work)
    print(json.dumps({"shape": "internvl3-8b" if options.layers is None else f"internvl3-8b, {options.layers} layers",
                      "tensors_gb": round(total / 1e9, 2), "largest_shard_gb": round(largest / 1e9, 2),
                      "seconds": round(seconds, 1), "peak_rss_gb": round(peak, 2)}))


if __name__ == "__main__":
    main()
