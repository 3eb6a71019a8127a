"""Which layout a checkpoint folder has, and whether an original-layout InternVL folder converts.

Reads config.json and the safetensors headers only (no torch, no weights), so it runs when the workflow is
parsed: a folder that cannot be converted fails there, naming what was found and what is supported.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from vidtune.internvl_checkpoint.chat_templates import TEMPLATES

ORIGINAL_MODEL_TYPE = "internvl_chat"
# Top-level tensor prefixes of an original InternVL checkpoint the native class has a place for.
ORIGINAL_PREFIXES = ("vision_model.", "mlp1.", "language_model.")


@dataclass(frozen=True)
class Backbone:
    """A language model of published InternVL checkpoints and how the native folder represents it."""

    architecture: str  # llm_config.architectures[0] in the original folder
    native_model_type: str  # text_config.model_type in the native folder
    weights: str  # "same": tensor names unchanged; "internlm2": InternLM2 weights in the Llama layout
    published: str  # the checkpoints that use it (for messages and docs)


BACKBONES = {backbone.architecture: backbone for backbone in (
    Backbone("Qwen2ForCausalLM", "qwen2", "same",
             "InternVL2-1B, InternVL2.5-1B/4B/38B/78B, InternVL3-1B/2B/8B/14B/38B/78B, InternVideo2.5 base"),
    Backbone("InternLM2ForCausalLM", "llama", "internlm2", "InternVL2-2B/8B/26B, InternVL2.5-2B/8B/26B"),
    Backbone("LlamaForCausalLM", "llama", "same", "InternVL2-40B (Yi), InternVL2-Llama3-76B"),
    Backbone("Phi3ForCausalLM", "phi3", "same", "InternVL2-4B"),
    Backbone("Qwen3ForCausalLM", "qwen3", "same", "InternVL3.5-1B/2B/4B/8B/14B/38B"),
    Backbone("Qwen3MoeForCausalLM", "qwen3_moe", "same", "InternVL3.5-30B-A3B, InternVL3.5-241B-A28B"),
    Backbone("GptOssForCausalLM", "gpt_oss", "same", "InternVL3.5-GPT-OSS-20B-A4B"),
)}


# Backbones transformers has a class for whose conversion is not proven against InternVL's own code: refused,
# with the reason, rather than converted on trust.
UNPROVEN_BACKBONES = {
    "InternLM3ForCausalLM": "InternVL3-9B's InternLM3 is not converted yet: its model and tokenizer code exists only "
                            "in the Hub folder, so no test here compares a conversion with it; use "
                            "OpenGVLab/InternVL3-9B-hf (transformers' own conversion) as the path instead",
}


@dataclass(frozen=True)
class OriginalCheckpoint:
    """What an original-layout folder says about itself, read from its config.json."""

    folder: Path
    config: dict
    backbone: Backbone

    @property
    def llm_config(self) -> dict:
        return self.config["llm_config"]

    @property
    def vision_config(self) -> dict:
        return self.config["vision_config"]

    @property
    def template(self) -> str:
        return self.config["template"]

    @property
    def image_size(self) -> int:
        return int(self.config.get("force_image_size") or self.vision_config["image_size"])

    @property
    def patch_size(self) -> int:
        return int(self.vision_config["patch_size"])

    @property
    def downsample_ratio(self) -> float:
        return float(self.config.get("downsample_ratio", 0.5))

    @property
    def tokens_per_tile(self) -> int:
        return int((self.image_size // self.patch_size) ** 2 * self.downsample_ratio ** 2)

    @property
    def tied(self) -> bool:
        # InternVL's own config class sets tie_word_embeddings false whatever the LLM's config says; a folder
        # saved by an older version may say true, and then holds no separate output layer.
        return bool(self.llm_config.get("tie_word_embeddings", False)) and not _has_output_layer(self)


class UnsupportedCheckpoint(ValueError):
    """An original-layout folder whose model the native class cannot represent; the message says why."""


def read_config(folder: str | Path) -> dict | None:
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def is_original_layout(folder: str | Path) -> bool:
    config = read_config(folder)
    return config is not None and config.get("model_type") == ORIGINAL_MODEL_TYPE


def weight_files(folder: str | Path) -> list[Path]:
    """The model's safetensors files in order: the index's shards, else model.safetensors (other safetensors
    files in the folder, an adapter's say, are not the model's)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    return sorted(folder.glob("model*.safetensors"))


def _header(path: Path) -> dict:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header alone."""
    return {name: entry["shape"] for name, entry in _header(path).items()}


def tensor_dtypes(path: Path) -> dict[str, str]:
    """Tensor name -> safetensors dtype (BF16, F32...) from the header alone."""
    return {name: entry["dtype"] for name, entry in _header(path).items()}


def tensor_names(folder: str | Path) -> list[str]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    return sorted(name for path in weight_files(folder) for name in tensor_shapes(path))


def _has_output_layer(checkpoint: OriginalCheckpoint) -> bool:
    names = tensor_names(checkpoint.folder)
    return any(name in ("language_model.lm_head.weight", "language_model.output.weight") for name in names)


def supported_summary() -> str:
    return "; ".join(f"{b.architecture} ({b.published})" for b in BACKBONES.values())


def read_original_checkpoint(folder: str | Path) -> OriginalCheckpoint:
    """The folder's description; :class:`UnsupportedCheckpoint` when the native InternVL class cannot
    represent it (the message names what was found and what is supported)."""
    folder = Path(folder)
    config = read_config(folder)
    if config is None or config.get("model_type") != ORIGINAL_MODEL_TYPE:
        raise UnsupportedCheckpoint(f"config.json has no model_type {ORIGINAL_MODEL_TYPE!r}")
    llm, vision = config.get("llm_config") or {}, config.get("vision_config") or {}
    architecture = (llm.get("architectures") or [None])[0]
    if architecture in UNPROVEN_BACKBONES:
        raise UnsupportedCheckpoint(f"its language model is {architecture}: {UNPROVEN_BACKBONES[architecture]}")
    if architecture not in BACKBONES:
        raise UnsupportedCheckpoint(
            f"its language model {architecture!r} (llm_config.architectures) is not supported; supported: "
            f"{supported_summary()}")
    code = str((config.get("auto_map") or {}).get("AutoModel", "modeling_internvl_chat.")).split(".")[0]
    if any(folder.glob("modeling_*hico*.py")):  # InternVideo2.5's folder ships modeling_internvl_chat_hico2.py
        code = next(folder.glob("modeling_*hico*.py")).stem
    if code != "modeling_internvl_chat":
        if "hico" in code or "internvideo" in code.lower():
            raise UnsupportedCheckpoint(
                f"its model code is {code}, InternVideo2.5's: its forward merges every 4 frames' visual tokens to "
                "16 per frame (token merging), which the native InternVL class does not do, so converted "
                "weights would not be the model that was trained. Train it with InternVideo2.5's own trainer "
                "on the files `snakemake --cores N export` writes (docs/datasets.md)")
        raise UnsupportedCheckpoint(f"its model code is {code}, not InternVL's modeling_internvl_chat")
    problems = []
    if config.get("ps_version", "v1") != "v2":
        problems.append(f"ps_version {config.get('ps_version', 'v1')!r} (the native class has v2's pixel "
                        "shuffle only: InternVL 1.x checkpoints)")
    if config.get("dynamic_image_size", True) and not config.get("use_thumbnail", False):
        problems.append("use_thumbnail false with dynamic tiling (the native processor always adds the "
                        "thumbnail tile)")
    if config.get("pad2square"):
        problems.append("pad2square true (the native processor does not pad images to squares)")
    if config.get("force_image_size") and vision.get("image_size") and \
            int(config["force_image_size"]) != int(vision["image_size"]):
        problems.append(f"force_image_size {config['force_image_size']} differs from the vision tower's "
                        f"image_size {vision['image_size']} (the native tower has no position interpolation)")
    if vision.get("use_mean_pooling") is False:
        problems.append("vision_config.use_mean_pooling false (the native vision tower would add a final norm)")
    if vision.get("norm_type", "rms_norm") not in ("layer_norm", "rms_norm"):
        problems.append(f"vision_config.norm_type {vision.get('norm_type')!r}")
    if config.get("template") not in TEMPLATES:
        problems.append(f"template {config.get('template')!r} (known: {', '.join(sorted(TEMPLATES))})")
    files = weight_files(folder)
    if not files:
        problems.append("no .safetensors weights (pickled .bin weights are not loaded)")
    else:
        extra = sorted({name.split(".")[0] for name in tensor_names(folder)
                        if not name.startswith(ORIGINAL_PREFIXES)})
        if extra:
            problems.append(f"weights outside the vision model, projector and language model ({', '.join(extra)}"
                            ": a resolution router or another added module, as in InternVL3.5-Flash)")
    if problems:
        raise UnsupportedCheckpoint("the native InternVL class cannot represent " + "; ".join(problems))
    checkpoint = OriginalCheckpoint(folder, config, BACKBONES[architecture])
    if not checkpoint.llm_config.get("tie_word_embeddings", False) and not _has_output_layer(checkpoint):
        raise UnsupportedCheckpoint("the language model is untied but the weights hold no output layer "
                                    "(language_model.lm_head.weight)")
    return checkpoint
