"""Randomly initialised InternVL models built locally: a tiny one for demos and tests, and the real
InternVL3-1B/2B/8B architectures (optionally with fewer layers and a smaller vocabulary) for real-shape runs.

transformers' ``InternVLForConditionalGeneration`` with a small Qwen2 text model, a byte-level BPE tokenizer
trained here on a built-in English corpus of the demo vocabulary (any text still encodes), a Qwen-style chat
template, and the processor configs: the folder loads exactly like a real InternVL3-hf checkpoint.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (GenerationConfig, InternVLConfig, InternVLForConditionalGeneration,
                          PreTrainedTokenizerFast, Qwen2Config)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from vidtune.atomic import atomic_dir
from vidtune.config import schema_defaults
from vidtune.families.internvl import InternVLImageOnlyProcessor

DEFAULTS = schema_defaults("tiny_model")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
VOCAB_SIZE = 1024
DOWNSAMPLE_RATIO = 0.5
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Random tied embeddings (std 0.02) give logits of about +-0.2: every token nearly equally likely, the loss
# stuck near ln(vocab) and LoRA slow to move the argmax. A pretrained model's logits span tens of units;
# scaling the final norm gives the tiny model that range (24 demo captions: LoRA exact after ~60 epochs
# instead of >150).
FINAL_NORM_SCALE = 16.0

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black", "pink", "cyan", "magenta",
           "gray", "brown"]
SHAPES = ["circle", "square", "triangle", "bar", "box", "dot", "star"]
MOTIONS = ["moves left", "moves right", "moves up", "moves down", "moves to the left", "moves to the right",
           "stays still", "rotates", "bounces"]

# Qwen/InternVL-style turns; images render as <IMG_CONTEXT> (the processor expands them), and the assistant's
# answer with its end-of-turn token sits in a generation block so assistant-token masks come out right.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<video>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tiny_corpus() -> list[str]:
    """The tokenizer's training text: the demo vocabulary in every combination, plus common caption words."""
    lines = (Path(__file__).with_name("tiny_corpus.txt")).read_text(encoding="utf-8").splitlines()
    lines += [f"a {colour} {shape} {motion}" for colour, shape, motion in
              itertools.product(COLOURS, SHAPES, MOTIONS)]
    return lines


def build_tokenizer(vocab_size: int = VOCAB_SIZE, special_tokens: list[str] = SPECIAL_TOKENS,
                    chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most vocab_size tokens, trained on :func:`tiny_corpus`, with InternVL's tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[token for token in special_tokens if token not in ("<|endoftext|>", "<|im_end|>")],
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        model_max_length=8192, padding_side="left", chat_template=chat_template)


def model_config(settings: dict, tokenizer: PreTrainedTokenizerFast) -> InternVLConfig:
    s = {**DEFAULTS, **settings}
    if s["image_size"] % s["patch_size"] or (s["image_size"] // s["patch_size"]) % 2:
        raise ValueError("image_size / patch_size must be an even whole number (the projector halves it)")
    vision = InternVLVisionConfig(
        hidden_size=s["vision_hidden_size"], num_hidden_layers=s["vision_layers"],
        num_attention_heads=max(1, s["vision_hidden_size"] // 32), intermediate_size=4 * s["vision_hidden_size"],
        image_size=s["image_size"], patch_size=s["patch_size"], norm_type="layer_norm")
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=s["text_hidden_size"], num_hidden_layers=s["text_layers"],
        num_attention_heads=max(2, s["text_hidden_size"] // 32), num_key_value_heads=1,
        intermediate_size=3 * s["text_hidden_size"], max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return InternVLConfig(
        vision_config=vision, text_config=text, downsample_ratio=DOWNSAMPLE_RATIO,
        image_token_id=tokenizer.context_image_token_id, image_seq_length=image_seq_length(s),
        tie_word_embeddings=True)


def image_seq_length(settings: dict) -> int:
    s = {**DEFAULTS, **settings}
    return int((s["image_size"] // s["patch_size"]) ** 2 * DOWNSAMPLE_RATIO ** 2)


def build_processor(settings: dict, tokenizer: PreTrainedTokenizerFast,
                    chat_template: str = CHAT_TEMPLATE) -> InternVLImageOnlyProcessor:
    s = {**DEFAULTS, **settings}
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": s["image_size"], "width": s["image_size"]}, crop_to_patches=False, min_patches=1,
        max_patches=12, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)
    return InternVLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_length=image_seq_length(s), chat_template=chat_template)


def save_model_folder(out_dir: Path, model, tokenizer, processor) -> None:
    """A checkpoint folder as a released one: weights (safetensors), greedy generation defaults, processor."""
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    with atomic_dir(out_dir) as temp:
        model.save_pretrained(temp, safe_serialization=True)
        processor.save_pretrained(temp)


def build_tiny_model(out_dir: Path, settings: dict) -> None:
    """Write a tiny InternVL checkpoint folder (safetensors, tokenizer, processor, chat template) to out_dir.

    The same settings always give identical weights (they come from ``settings["seed"]``).
    """
    settings = {**DEFAULTS, **settings}
    tokenizer = build_tokenizer()
    config = model_config(settings, tokenizer)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(settings["seed"])
    try:
        model = InternVLForConditionalGeneration(config)
        with torch.no_grad():
            model.model.language_model.norm.weight.fill_(FINAL_NORM_SCALE)
    finally:
        torch.random.set_rng_state(generator_state)
    save_model_folder(out_dir, model, tokenizer, build_processor(settings, tokenizer))


# --- Real architectures with random weights ----------------------------------------------------------------

# The released InternVL3-*-hf checkpoints' chat template (transformers' conversion script): no system turn,
# images as <IMG_CONTEXT> and videos as <video>, each on its own line.
INTERNVL3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2.5's special tokens, then those InternVL adds (in the released vocabulary they sit at 151643-151673).
INTERNVL3_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
    "<box>", "</box>", "<video>"]
# InternViT-300M-448px-V2_5, the vision tower of InternVL3-1B/2B/8B (their -hf config.json vision_config).
INTERNVIT_300M = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "intermediate_size": 4096, "image_size": 448, "patch_size": 14, "attention_bias": True,
                  "use_qk_norm": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
                  "layer_scale_init_value": 0.1, "use_mean_pooling": True, "hidden_act": "gelu"}
_QWEN25 = {"vocab_size": 151674, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
           "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645}
# The language models: Qwen2.5-0.5B, -1.5B and -7B (InternVL3-1B/2B/8B-hf config.json text_config).
ARCHITECTURES = {
    "internvl3-1b": {"vision": INTERNVIT_300M, "text": {**_QWEN25, "hidden_size": 896, "intermediate_size": 4864,
                                                        "num_hidden_layers": 24, "num_attention_heads": 14,
                                                        "num_key_value_heads": 2, "tie_word_embeddings": True}},
    "internvl3-2b": {"vision": INTERNVIT_300M, "text": {**_QWEN25, "hidden_size": 1536, "intermediate_size": 8960,
                                                        "num_hidden_layers": 28, "num_attention_heads": 12,
                                                        "num_key_value_heads": 2, "tie_word_embeddings": True}},
    "internvl3-8b": {"vision": INTERNVIT_300M, "text": {**_QWEN25, "hidden_size": 3584, "intermediate_size": 18944,
                                                        "num_hidden_layers": 28, "num_attention_heads": 28,
                                                        "num_key_value_heads": 4, "tie_word_embeddings": False}},
}
ARCHITECTURE_DEFAULTS = schema_defaults("architecture")
INTERNVL3_TOKENS_PER_TILE = 256  # (448 / 14)^2 patches, pixel-shuffled by 0.5 in each direction


def architecture_config(settings: dict, tokenizer: PreTrainedTokenizerFast) -> InternVLConfig:
    """A named architecture's published configuration, optionally with fewer layers and a smaller vocabulary.

    The vocabulary is the published one unless ``vocab_size`` is set; it is never smaller than the tokenizer.
    """
    s = {**ARCHITECTURE_DEFAULTS, **settings}
    if s["name"] not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {s['name']!r}; known: {', '.join(ARCHITECTURES)}")
    published = ARCHITECTURES[s["name"]]
    vision = {**published["vision"]}
    text = {**published["text"], "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None}
    if s.get("vision_layers"):
        vision["num_hidden_layers"] = s["vision_layers"]
    if s.get("text_layers"):
        text["num_hidden_layers"] = s["text_layers"]
    text["vocab_size"] = max(len(tokenizer), s.get("vocab_size") or text["vocab_size"])
    return InternVLConfig(
        vision_config=InternVLVisionConfig(**vision), text_config=Qwen2Config(**text),
        downsample_ratio=DOWNSAMPLE_RATIO, image_token_id=tokenizer.context_image_token_id,
        image_seq_length=INTERNVL3_TOKENS_PER_TILE, tie_word_embeddings=text["tie_word_embeddings"])


def build_architecture_model(out_dir: Path, settings: dict, device: str = "cpu") -> None:
    """Write a random-weight checkpoint of a named InternVL3 architecture (``settings`` as the schema's
    ``architecture``) with the released processor settings and chat template, in the released dtype (bf16).

    The tokenizer is a small BPE (no real vocabulary is available offline) with the real special tokens.
    """
    s = {**ARCHITECTURE_DEFAULTS, **settings}
    vocab = min(s.get("vocab_size") or 8192, 8192)  # the corpus cannot fill a larger BPE vocabulary
    tokenizer = build_tokenizer(vocab, INTERNVL3_SPECIAL_TOKENS, INTERNVL3_CHAT_TEMPLATE)
    config = architecture_config(s, tokenizer)
    dtype = getattr(torch, s["dtype"])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(s["seed"])
    try:
        with torch.device(device):
            model = InternVLForConditionalGeneration._from_config(config, dtype=dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    save_model_folder(out_dir, model, tokenizer,
                      build_processor({"image_size": 448, "patch_size": 14}, tokenizer, INTERNVL3_CHAT_TEMPLATE))


def build_model(out_dir: Path, spec: dict) -> None:
    """Build a model config entry's ``tiny`` or ``architecture`` model into out_dir, by its family: the tiny
    entry's ``family`` (default internvl), or the family whose architecture it names."""
    from vidtune.families import DEFAULT_FAMILY, family, family_for_architecture

    if "architecture" in spec:
        family_for_architecture(spec["architecture"]["name"]).build_architecture(Path(out_dir), spec["architecture"])
    else:
        family(spec["tiny"].get("family", DEFAULT_FAMILY)).build_tiny(Path(out_dir), spec["tiny"])


# --- A synthetic caption task for tests and benchmarks -----------------------------------------------------

SYNTHETIC_COLOURS = {"red": (230, 30, 30), "green": (30, 200, 60), "blue": (40, 70, 230), "yellow": (240, 220, 40),
                     "orange": (250, 140, 20), "purple": (140, 40, 180), "white": (245, 245, 245),
                     "cyan": (40, 220, 230)}
SYNTHETIC_SHAPES = ("circle", "square", "triangle")
SYNTHETIC_MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def synthetic_frames(colour: str, shape: str, motion: str, num_frames: int = 4, size: int = 64) -> list:
    """Frames of one shape moving across a dark background (PIL images)."""
    from PIL import Image, ImageDraw

    dx, dy = SYNTHETIC_MOTIONS[motion]
    radius = size // 6
    frames = []
    for index in range(num_frames):
        shift = (index / max(1, num_frames - 1) - 0.5) * size * 0.5
        cx, cy = size / 2 + dx * shift, size / 2 + dy * shift
        image = Image.new("RGB", (size, size), (20, 20, 20))
        draw = ImageDraw.Draw(image)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = SYNTHETIC_COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
        frames.append(image)
    return frames


def synthetic_captions(count: int) -> list[tuple[str, str, str]]:
    """Up to 24 distinct (colour, shape, motion); the first 8 have distinct colours, shapes vary throughout.

    The motion follows from colour and shape.
    """
    colours, motions = list(SYNTHETIC_COLOURS), list(SYNTHETIC_MOTIONS)
    combos = []
    for index in range(min(count, len(colours) * len(SYNTHETIC_SHAPES))):
        ci = index % len(colours)
        si = (index // len(colours) + ci) % len(SYNTHETIC_SHAPES)
        combos.append((colours[ci], SYNTHETIC_SHAPES[si], motions[(ci + si) % len(motions)]))
    return combos


def write_synthetic_dataset(folder: Path, count: int = 8, num_frames: int = 4, size: int = 64,
                            prompt: str = schema_defaults("dataset")["prompt"], images: int = 0) -> Path:
    """An InternVL-format dataset (frame folders + JSONL + meta.json) of moving shapes; returns meta.json.

    ``images`` of the samples (the last ones) are single images instead of frame folders.
    """
    import json

    folder = Path(folder)
    records = []
    for index, (colour, shape, motion) in enumerate(synthetic_captions(count)):
        caption = f"a {colour} {shape} moves {motion}"
        frames = synthetic_frames(colour, shape, motion, num_frames, size)
        sample_id = f"{colour}_{shape}"
        if index >= count - images:
            path = folder / "images" / f"{sample_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            frames[0].save(path, quality=95)
            records.append({"id": sample_id, "image": f"images/{sample_id}.jpg", "width": size, "height": size,
                            "conversations": [{"from": "human", "value": "<image>\n" + prompt},
                                              {"from": "gpt", "value": f"a {colour} {shape}"}]})
            continue
        clip = folder / "frames" / sample_id
        clip.mkdir(parents=True, exist_ok=True)
        for number, frame in enumerate(frames):
            frame.save(clip / f"frame_{number}.jpg", quality=95)
        records.append({"id": sample_id, "video": f"frames/{sample_id}/",
                        "conversations": [{"from": "human", "value": "<video>\n" + prompt},
                                          {"from": "gpt", "value": caption}]})
    annotation = folder / "train.jsonl"
    annotation.write_text("".join(json.dumps(record) + "\n" for record in records))
    meta = {"synthetic": {"root": str(folder), "annotation": str(annotation), "repeat_time": 1,
                          "max_dynamic_patch": 1, "length": len(records), "data_augment": False,
                          "data_settings": {"prompt": prompt, "frames": {"policy": "uniform",
                                                                          "num_frames": num_frames,
                                                                          "short_side": size}}}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder / "meta.json"
