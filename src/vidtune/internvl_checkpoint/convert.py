"""Convert an original-layout InternVL folder into transformers' native InternVL (rule convert_model).

The native folder is what every later step loads: ``InternVLForConditionalGeneration`` weights, a config
that carries the checkpoint's own image size, patch size, pixel shuffle, vision layer, vision norms, tying
and dtype; the checkpoint's tokenizer with InternVL's image tokens; an InternVL processor tiling as the
checkpoint did; the chat template of its ``template``; its generation config with the template's stop
token. Weights are streamed one shard at a time (peak memory about one shard) and the folder appears whole
or not at all. ``conversion.json`` in it names the original folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from vidtune.atomic import atomic_dir, write_json
from vidtune.errors import ModelError, command_line
from vidtune.internvl_checkpoint.chat_templates import TEMPLATES, chat_template
from vidtune.internvl_checkpoint.layout import (OriginalCheckpoint, UnsupportedCheckpoint, read_original_checkpoint,
                                                weight_files)
from vidtune.internvl_checkpoint.weights import Heads, WeightMap

log = logging.getLogger(__name__)

CONVERSION_FILE = "conversion.json"
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # InternVL's build_transform normalises every checkpoint's tiles so
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}
# Keys of a saved LLM config that describe how it was saved or run, not the model.
_RUNTIME_KEYS = {"architectures", "auto_map", "_name_or_path", "transformers_version", "attn_implementation",
                 "_attn_implementation", "_attn_implementation_autoset", "torch_dtype", "dtype", "use_flash_attn"}
# Tokenizer classes that exist only as a checkpoint's own Python code, and the transformers class (with the
# settings) that reads the same sentencepiece model into the same ids: InternLM's tokenizers start with <s>
# and give every text piece between special tokens sentencepiece's leading space (Llama's legacy behaviour).
_SENTENCEPIECE_AS_INTERNLM = ("LlamaTokenizer", {"legacy": True, "add_bos_token": True, "add_eos_token": False})
_REMOTE_TOKENIZERS = {"InternLM2Tokenizer": _SENTENCEPIECE_AS_INTERNLM,
                      "InternLM2TokenizerFast": _SENTENCEPIECE_AS_INTERNLM,
                      "InternLM3Tokenizer": _SENTENCEPIECE_AS_INTERNLM}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt")


def attention_heads(llm_config: dict) -> Heads:
    heads = int(llm_config["num_attention_heads"])
    return Heads(heads, int(llm_config.get("num_key_value_heads") or heads),
                 int(llm_config.get("head_dim") or llm_config["hidden_size"] // heads))


def weight_map(checkpoint: OriginalCheckpoint) -> WeightMap:
    internlm2 = checkpoint.backbone.weights == "internlm2"
    return WeightMap(checkpoint.backbone.weights, attention_heads(checkpoint.llm_config) if internlm2 else None)


def _llama_settings_of_internlm2(llm: dict) -> dict:
    """An InternLM2 config as a Llama one (InternLM2's ``bias`` covers wqkv and wo, as Llama's attention_bias
    covers q/k/v/o; its MLP has none). RoPE theta and scaling are kept."""
    heads = attention_heads(llm)
    settings = {key: llm[key] for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                          "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                                          "rope_scaling", "bos_token_id", "eos_token_id", "pad_token_id",
                                          "initializer_range")
                if key in llm}
    return {**settings, "num_attention_heads": heads.heads, "num_key_value_heads": heads.kv_heads,
            "head_dim": heads.head_dim, "attention_bias": bool(llm.get("bias", True)), "mlp_bias": False}


def text_config(checkpoint: OriginalCheckpoint):
    from transformers import CONFIG_MAPPING

    llm = {key: value for key, value in checkpoint.llm_config.items() if key not in _RUNTIME_KEYS}
    if checkpoint.backbone.weights == "internlm2":
        llm = _llama_settings_of_internlm2(llm)
    scaling = llm.get("rope_scaling")
    if isinstance(scaling, dict) and "original_max_position_embeddings" in llm:
        # Phi-3's su/longrope scaling: transformers 5 reads the original context length inside the scaling.
        llm["rope_scaling"] = {"original_max_position_embeddings": llm["original_max_position_embeddings"],
                               **scaling}
    llm["tie_word_embeddings"] = checkpoint.tied
    llm.pop("model_type", None)
    return CONFIG_MAPPING[checkpoint.backbone.native_model_type](**llm)


def vision_config(checkpoint: OriginalCheckpoint):
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    vision = checkpoint.vision_config  # absent keys take InternViT's own defaults
    return InternVLVisionConfig(
        hidden_size=vision["hidden_size"], num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"], intermediate_size=vision["intermediate_size"],
        image_size=checkpoint.image_size, patch_size=checkpoint.patch_size,
        attention_bias=bool(vision.get("qkv_bias", False)), use_qk_norm=bool(vision.get("qk_normalization", True)),
        norm_type=vision.get("norm_type", "rms_norm"), layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        hidden_act=vision.get("hidden_act", "gelu"), use_mean_pooling=True,
        layer_scale_init_value=vision.get("initializer_factor", 0.1))


def native_config(checkpoint: OriginalCheckpoint, tokenizer, dtype: str):
    from transformers import InternVLConfig

    config = InternVLConfig(
        vision_config=vision_config(checkpoint), text_config=text_config(checkpoint),
        downsample_ratio=checkpoint.downsample_ratio, image_token_id=tokenizer.context_image_token_id,
        image_seq_length=checkpoint.tokens_per_tile, vision_feature_layer=int(checkpoint.config.get("select_layer", -1)),
        vision_feature_select_strategy="default", tie_word_embeddings=checkpoint.tied)
    config.dtype = dtype
    config.text_config.dtype = dtype
    return config


def native_tokenizer(checkpoint: OriginalCheckpoint):
    """The checkpoint's tokenizer through transformers' own classes (a tokenizer that exists only as the
    folder's Python code is read by the transformers class for the same sentencepiece model), with InternVL's
    image tokens named as the native processor expects."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as temp:
        for name in _TOKENIZER_FILES:
            if (checkpoint.folder / name).is_file():
                shutil.copy2(checkpoint.folder / name, Path(temp) / name)
        settings_file = Path(temp) / "tokenizer_config.json"
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        settings.pop("auto_map", None)
        settings.pop("chat_template", None)
        tokenizer_class = settings.get("tokenizer_class")
        options: dict = {}
        if tokenizer_class in _REMOTE_TOKENIZERS:
            settings["tokenizer_class"], options = _REMOTE_TOKENIZERS[tokenizer_class]
        settings_file.write_text(json.dumps(settings), encoding="utf-8")
        try:
            tokenizer = AutoTokenizer.from_pretrained(temp, trust_remote_code=False,
                                                      extra_special_tokens=IMAGE_TOKENS, **options)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelError(f"cannot read the checkpoint's tokenizer ({tokenizer_class}): {error}",
                             file=checkpoint.folder, fix="the folder needs the tokenizer files the Hub has") from error
    tokenizer.init_kwargs.update(options)  # saved with it, so the folder reloads into the same ids
    missing = [token for key, token in IMAGE_TOKENS.items()
               if key != "video_token" and tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id)]
    if missing:
        raise ModelError(f"the tokenizer has no {', '.join(missing)} token", file=checkpoint.folder,
                         fix="use the checkpoint's own tokenizer files")
    return tokenizer


def native_processor(checkpoint: OriginalCheckpoint, tokenizer):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from vidtune.families.internvl import InternVLImageOnlyProcessor

    dynamic = bool(checkpoint.config.get("dynamic_image_size", True))
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": checkpoint.image_size, "width": checkpoint.image_size}, crop_to_patches=dynamic,
        min_patches=int(checkpoint.config.get("min_dynamic_patch", 1)),
        max_patches=int(checkpoint.config.get("max_dynamic_patch", 12)), image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD, do_convert_rgb=True)
    return InternVLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_length=checkpoint.tokens_per_tile,
                                      chat_template=chat_template(checkpoint.template))


def generation_config(checkpoint: OriginalCheckpoint, tokenizer):
    """The checkpoint's generation config, stopping also at its template's end-of-answer token (as chat())."""
    from transformers import GenerationConfig

    path = checkpoint.folder / "generation_config.json"
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    settings = {key: value for key, value in settings.items() if key != "transformers_version"}
    eos = settings.get("eos_token_id", checkpoint.llm_config.get("eos_token_id"))
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    stop = tokenizer.convert_tokens_to_ids(TEMPLATES[checkpoint.template].stop_token)
    if isinstance(stop, int) and stop != tokenizer.unk_token_id and stop not in eos:
        eos.insert(0, stop)
    settings["eos_token_id"] = eos
    if settings.get("pad_token_id") is None:
        settings["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return GenerationConfig(**settings)


def _weights_dtype(path: Path) -> str:
    from vidtune.internvl_checkpoint.layout import tensor_dtypes

    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    dtypes = {names.get(dtype, "float32") for dtype in tensor_dtypes(path).values()}
    return "bfloat16" if "bfloat16" in dtypes else "float16" if "float16" in dtypes else "float32"


def convert_weights(checkpoint: OriginalCheckpoint, out_dir: Path) -> int:
    """Write the native weights shard by shard (one output shard per input shard); returns the tensor count."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    mapping = weight_map(checkpoint)
    files = weight_files(checkpoint.folder)
    index: dict[str, str] = {}
    total_size = 0
    for number, path in enumerate(files, 1):
        name = "model.safetensors" if len(files) == 1 else f"model-{number:05d}-of-{len(files):05d}.safetensors"
        tensors = {}
        with safe_open(path, "pt") as handle:
            for original in handle.keys():
                try:
                    converted = mapping.to_native(original, handle.get_tensor(original))
                except KeyError:
                    raise ModelError(f"tensor {original} has no place in the native InternVL model",
                                     file=path, fix="this checkpoint's layout is not supported; see the README's "
                                                    "model table") from None
                tensors.update(converted)
        save_file(tensors, out_dir / name, metadata={"format": "pt"})
        total_size += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        index.update(dict.fromkeys(tensors, name))
        log.info("converted %s (%d of %d): %d tensors", path.name, number, len(files), len(tensors))
        del tensors
    if len(files) > 1:
        write_json(out_dir / "model.safetensors.index.json",
                   {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(index.items()))})
    return len(index)


def convert_checkpoint(source: str | Path, out_dir: str | Path, source_as_given: str | None = None) -> dict:
    """Write the native folder of the original-layout checkpoint at ``source`` to ``out_dir``; returns
    what ``conversion.json`` in it says."""
    source, out_dir = Path(source), Path(out_dir)
    try:
        checkpoint = read_original_checkpoint(source)
    except UnsupportedCheckpoint as error:
        raise ModelError(str(error), file=source, fix="see the README's table of supported checkpoints") from None
    tokenizer = native_tokenizer(checkpoint)
    dtype = _weights_dtype(weight_files(source)[0])
    config = native_config(checkpoint, tokenizer, dtype)
    with atomic_dir(out_dir) as temp:
        tensors = convert_weights(checkpoint, temp)
        config.save_pretrained(temp)
        generation_config(checkpoint, tokenizer).save_pretrained(temp)
        native_processor(checkpoint, tokenizer).save_pretrained(temp)
        record = {"source": source_as_given or str(source), "layout": "internvl_chat",
                  "backbone": checkpoint.backbone.architecture, "template": checkpoint.template,
                  "tied_word_embeddings": checkpoint.tied, "dtype": dtype, "tensors": tensors,
                  "max_dynamic_patch": int(checkpoint.config.get("max_dynamic_patch", 12)),
                  "tokens_per_tile": checkpoint.tokens_per_tile}
        write_json(temp / CONVERSION_FILE, record)
    return record


def conversion_record(folder: str | Path) -> dict | None:
    """What a converted folder's conversion.json says (None for a folder not made by conversion)."""
    path = Path(folder) / CONVERSION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@command_line
def main(argv: list[str] | None = None) -> None:
    """``python -m vidtune.internvl_checkpoint.convert SOURCE OUT``: what the convert_model step does, by hand
    (for ``python -m vidtune.predict`` on a checkpoint in the original layout, say)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vidtune.internvl_checkpoint.convert", description=main.__doc__)
    parser.add_argument("source", type=Path, help="the original-layout checkpoint folder, as downloaded")
    parser.add_argument("out", type=Path, help="the native folder to write")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(convert_checkpoint(options.source, options.out), indent=2))


if __name__ == "__main__":
    import sys

    sys.exit(main())
