"""Qwen2.5-VL (transformers' Qwen2_5_VLForConditionalGeneration).

A video sample's frames (the ones vidtune extracted, decoded once) go in as ONE video: the processor's own
frame sampling is off (``do_sample_frames=False``) and the frames' real times go in as video metadata, so
the model sees the frames vidtune chose, at the times they were taken. An image sample's images go in as
images. The processor resizes each to a multiple of ``patch_size x merge_size`` within its pixel bounds
(``smart_resize``), cuts it into patches, pairs frames in time (``temporal_patch_size``: an odd last frame
is repeated) and returns ``pixel_values(_videos)``, the grid of each (``image_grid_thw``/``video_grid_thw``),
``mm_token_type_ids`` (which tokens are text, image, video) and, for videos, ``second_per_grid_ts``; the
model builds its 3-D rope positions from them (``get_rope_index``).

Frame times: Qwen2.5-VL takes ONE ``second_per_grid_ts`` per video, which assumes evenly spaced frames.
vidtune's frames are taken at their real presentation times (a variable frame rate or a policy's rounding
can space them unevenly), so vidtune passes the frames' mean spacing (the clip's span over its gaps): the
first and last frame keep their real distance in rope time, the ones between sit on an even grid. A clip
whose spacing varies by more than :data:`UNEVEN_SPACING` of the mean is logged (once per process). A frame
folder without times (no vidtune frames.json) is taken as one frame per :data:`DEFAULT_FRAME_SPACING_S`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Sequence

import torch
from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
from transformers.models.qwen2_vl import image_processing_qwen2_vl, video_processing_qwen2_vl
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.video_utils import VideoMetadata

from vidtune.errors import ModelError
from vidtune.families.base import Media, MediaShape, ModelFamily

log = logging.getLogger(__name__)

DEFAULT_FRAME_SPACING_S = 1.0  # frames without times: one per second
UNEVEN_SPACING = 0.1  # a gap more than 10 % off the mean spacing is logged
_logged_uneven = False
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Qwen2.5's special tokens (151643-151656 in the released vocabulary).
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                       "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                       "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# The chat template of the released Qwen2-VL/Qwen2.5-VL-*-Instruct checkpoints: a default system turn, each
# image or video as <|vision_start|><|image_pad|/|video_pad|><|vision_end|> where it is in the content.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL-3B-Instruct, the smallest released Qwen2.5-VL (its config.json and preprocessor_config.json).
QWEN2_5_VL_3B = {
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "hidden_act": "silu",
               "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
               "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
               "in_channels": 3},
    "text": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
             "num_attention_heads": 16, "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6,
             "max_position_embeddings": 128000, "max_window_layers": 70, "use_sliding_window": False,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
             "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": True},
    "processor": {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                  "merge_size": 2, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD},
}


class RopeIndex:
    """A model class's own ``get_rope_index`` without its weights (it reads only the config), so a packed
    row's positions are computed per sample where the batch is collated, as the model would compute them."""

    def __init__(self, model_class, config):
        self.config = config
        self._model_class = model_class

    def __call__(self, sample: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sample's (3, 1, length) rope positions (plain 1-D ones for a sample without media)."""
        input_ids = sample["input_ids"][None]
        grids = {key: sample[key] for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
                 if key in sample}
        if "mm_token_type_ids" not in sample or not {"image_grid_thw", "video_grid_thw"} & set(grids):
            return torch.arange(input_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        positions, _ = self._model_class.get_rope_index(self, input_ids, sample["mm_token_type_ids"][None], **grids)
        return positions

    def get_vision_position_ids(self, *args, **kwargs):
        return self._model_class.get_vision_position_ids(self, *args, **kwargs)


def frame_spacing(frame_times: Sequence[float] | None, count: int) -> float:
    """The mean spacing of a clip's frames in seconds (see the module's description)."""
    if frame_times is None or count < 2:
        return DEFAULT_FRAME_SPACING_S
    gaps = [later - earlier for earlier, later in zip(frame_times, frame_times[1:])]
    mean = (frame_times[-1] - frame_times[0]) / (count - 1)
    if mean <= 0:
        return DEFAULT_FRAME_SPACING_S
    global _logged_uneven
    if max(abs(gap - mean) for gap in gaps) > UNEVEN_SPACING * mean and not _logged_uneven:
        _logged_uneven = True
        log.info("frames unevenly spaced (times %s s): rope time uses their mean spacing, %.3f s (logged once)",
                 ", ".join(f"{t:g}" for t in frame_times), mean)
    return mean


def video_metadata(frame_times: Sequence[float] | None, count: int) -> VideoMetadata:
    """The frames' times as the processor's video metadata: a frame rate of one frame per mean spacing and
    each frame's index at that rate, so ``index / fps`` is the frame's own time and the processor's
    ``sampled_fps`` is the mean rate."""
    spacing = frame_spacing(frame_times, count)
    times = list(frame_times) if frame_times is not None else [index * spacing for index in range(count)]
    return VideoMetadata(total_num_frames=count, fps=1 / spacing, frames_indices=[t / spacing for t in times],
                         duration=count * spacing)


def qwen_tokenizer(chat_template: str, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """The tiny byte-level BPE of vidtune.tiny_model with Qwen2.5's special tokens (the released tokenizers
    name no image or video token attributes; the processor falls back to <|image_pad|>/<|video_pad|>)."""
    from vidtune.tiny_model import build_tokenizer

    trained = build_tokenizer(vocab_size, QWEN_SPECIAL_TOKENS, chat_template)
    return PreTrainedTokenizerFast(
        tokenizer_object=trained.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[token for token in QWEN_SPECIAL_TOKENS
                                   if token not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768, padding_side="left", chat_template=chat_template)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """What a model config needs of its tokenizer: the vocabulary's size and the special tokens' ids."""

    size: int
    eos_token_id: int
    pad_token_id: int
    vision_ids: dict  # image_token_id, video_token_id, vision_start_token_id, vision_end_token_id

    @classmethod
    def of(cls, tokenizer) -> "Vocabulary":
        return cls(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, special_token_ids(tokenizer))

    @classmethod
    def counted(cls, size: int) -> "Vocabulary":
        """A vocabulary of ``size`` tokens whose ids don't matter (for counting parameters)."""
        return cls(size, 0, 0, {key: index for index, key in enumerate(VISION_TOKENS)})


VISION_TOKENS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                 "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def special_token_ids(tokenizer) -> dict:
    """The model config's ids of the vision tokens, from the tokenizer."""
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in VISION_TOKENS.items()}


def fewer_layers(indexes: Sequence[int], depth: int) -> list[int]:
    """Layer indexes (full attention, deep-stack) that still exist in a tower of ``depth`` layers; its last
    layer where none does (so a shortened tower keeps one of them)."""
    kept = [index for index in indexes if index < depth]
    return kept or [depth - 1]


def random_model(model_class, config, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A randomly initialised model; the same seed always gives the same weights (the global RNG is restored)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            return model_class._from_config(config, dtype=dtype)
    finally:
        torch.random.set_rng_state(generator_state)


class Qwen2_5_VLFamily(ModelFamily):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    # transformers' layout: model.visual (the vision tower, with its patch merger, the projector, inside),
    # model.language_model, lm_head.
    part_names = {"vision": ("visual",), "projector": ("merger",), "language": ("language_model",)}
    language_lora_targets = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    qlora_skip_modules = ("model.visual", "lm_head")
    architectures = ("qwen2.5-vl-3b",)
    model_class = Qwen2_5_VLForConditionalGeneration
    base_model_class = Qwen2_5_VLModel
    processor_class = Qwen2_5_VLProcessor
    config_class = Qwen2_5_VLConfig
    chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    published = {"qwen2.5-vl-3b": QWEN2_5_VL_3B}
    # The vision config's list of layer indexes with a role (full attention here), cut with the layers.
    vision_layer_indexes = "fullatt_block_indexes"

    # --- Processor and prompt -----------------------------------------------------------------------------
    def processor_inputs(self, processor, media: Media, text: str) -> dict:
        if media.media_type == "image":
            return processor(images=list(media.frames), text=text, return_tensors="pt")
        count = self.video_frame_count(len(media.frames))
        frames = list(media.frames) + [media.frames[-1]] * (count - len(media.frames))
        return processor(videos=[frames], text=text, return_tensors="pt", do_sample_frames=False,
                         video_metadata=[self.video_metadata(media.frame_times, len(media.frames))],
                         cap_pixels_per_frame=self.caps_pixels_per_frame(processor))

    def video_frame_count(self, count: int) -> int:
        """How many frames go in as the video for a clip of ``count`` (all of them)."""
        return count

    def video_metadata(self, frame_times: Sequence[float] | None, count: int) -> VideoMetadata:
        """:func:`video_metadata` of the frames that go in (a repeated last frame keeps its time)."""
        padded = self.video_frame_count(count)
        if frame_times is not None:
            frame_times = list(frame_times) + [frame_times[-1]] * (padded - count)
        return video_metadata(frame_times, padded)

    @staticmethod
    def caps_pixels_per_frame(processor) -> bool:
        """Whether the video processor bounds a video's pixels in all (qwen-vl-utils' reference behaviour,
        transformers' announced default): the folder's setting, else yes."""
        setting = getattr(processor.video_processor, "cap_pixels_per_frame", None)
        return True if setting is None else bool(setting)

    # --- Token counts -------------------------------------------------------------------------------------
    def image_grid(self, processor, width: int, height: int) -> list[int]:
        """(t, h, w) patches of one image as the image processor makes them."""
        image = processor.image_processor
        resized_height, resized_width = image_processing_qwen2_vl.smart_resize(
            height, width, factor=image.patch_size * image.merge_size, min_pixels=image.size["shortest_edge"],
            max_pixels=image.size["longest_edge"])
        return [1, resized_height // image.patch_size, resized_width // image.patch_size]

    def video_grid(self, processor, shape: MediaShape) -> list[int]:
        """(t, h, w) patches of a video as the video processor makes them (its resize arithmetic, with the
        per-frame pixel cap where it applies)."""
        video = processor.video_processor
        width, height = shape.sizes[0]
        count = self.video_frame_count(shape.count)
        factor = video.patch_size * video.merge_size
        max_pixels = video.size["longest_edge"]
        if self.caps_pixels_per_frame(processor):
            total_pixels = int(video.max_video_tokens * factor * factor * 0.9)
            max_pixels = max(min(max_pixels, total_pixels * video.temporal_patch_size // count),
                             int(video.size["shortest_edge"] * 1.05))
        if video.do_resize:
            height, width = video_processing_qwen2_vl.smart_resize(
                height, width, factor=factor, min_pixels=video.size["shortest_edge"], max_pixels=max_pixels)
        return [math.ceil(count / video.temporal_patch_size), height // video.patch_size,
                width // video.patch_size]

    def video_placeholder(self, processor, shape: MediaShape) -> str:
        """The text the processor puts in place of a video's placeholder token."""
        grid = torch.tensor([self.video_grid(processor, shape)])
        metadata = self.video_metadata(shape.frame_times, shape.count)
        return processor.replace_video_token({"video_grid_thw": grid, "video_metadata": [metadata]}, 0)

    def sample_length(self, processor, shape: MediaShape, prompt: str, target: str | None) -> int:
        """The rendered text with each placeholder expanded by the processor's own replacement for the
        media's grid (computed from the sizes), tokenised: what encode's input_ids hold."""
        text = self.render(processor, prompt, shape, target)
        if shape.media_type == "video":
            text = text.replace(processor.video_token, self.video_placeholder(processor, shape), 1)
        else:
            grids = torch.tensor([self.image_grid(processor, width, height) for width, height in shape.sizes])
            parts = text.split(processor.image_token)
            if len(parts) != shape.count + 1:
                raise ModelError(f"the chat template renders {len(parts) - 1} image placeholders for "
                                 f"{shape.count} images", fix="use the checkpoint's own chat template")
            text = parts[0] + "".join(processor.replace_image_token({"image_grid_thw": grids}, index) + part
                                      for index, part in enumerate(parts[1:]))
        return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- Packing ------------------------------------------------------------------------------------------
    def packed_position_ids(self, samples: Sequence[dict[str, torch.Tensor]], model_config=None) -> torch.Tensor:
        """(4, 1, row) positions: the 1-D positions restarting per sample (the text model builds the packed
        attention mask from them), then each sample's own 3-D rope positions from the model's
        ``get_rope_index``, as the model computes them for the sample alone."""
        if model_config is None:
            raise ModelError(f"{self.name}: packed positions need the model's config",
                             fix="pass model_config to collate_packed")
        rope = RopeIndex(self.base_model_class, model_config)
        text = super().packed_position_ids(samples)
        return torch.cat([text[None], torch.cat([rope(sample) for sample in samples], dim=-1)])

    # --- Tiny and real-shape random builds ----------------------------------------------------------------
    def tiny_config(self, settings: dict, vocabulary: Vocabulary):
        s = settings
        vision_heads = max(1, s["vision_hidden_size"] // 32)
        text_heads = max(2, s["text_hidden_size"] // 32)
        pairs = s["text_hidden_size"] // text_heads // 2
        temporal = pairs // 4  # rotary pairs for time, height, width: the 3B's [16, 24, 24] of 64, scaled
        return Qwen2_5_VLConfig(
            vision_config={"depth": s["vision_layers"], "hidden_size": s["vision_hidden_size"],
                           "intermediate_size": 2 * s["vision_hidden_size"], "num_heads": vision_heads,
                           "out_hidden_size": s["text_hidden_size"], "patch_size": s["patch_size"],
                           "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 4 * s["patch_size"],
                           "fullatt_block_indexes": [s["vision_layers"] - 1], "tokens_per_second": 2},
            text_config={"vocab_size": vocabulary.size, "hidden_size": s["text_hidden_size"],
                         "intermediate_size": 3 * s["text_hidden_size"], "num_hidden_layers": s["text_layers"],
                         "num_attention_heads": text_heads, "num_key_value_heads": 1,
                         "max_position_embeddings": 8192, "tie_word_embeddings": True,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                             "mrope_section": [temporal, (pairs - temporal) // 2,
                                                               pairs - temporal - (pairs - temporal) // 2]},
                         "bos_token_id": None, "eos_token_id": vocabulary.eos_token_id,
                         "pad_token_id": vocabulary.pad_token_id},
            tie_word_embeddings=True, **vocabulary.vision_ids)

    def build_processor(self, tokenizer, processor_settings: dict):
        p = processor_settings
        common = {"patch_size": p["patch_size"], "temporal_patch_size": p["temporal_patch_size"],
                  "merge_size": p["merge_size"], "image_mean": p["image_mean"], "image_std": p["image_std"]}
        size = {"shortest_edge": p["min_pixels"], "longest_edge": p["max_pixels"]}
        return self.processor_class(
            image_processor=Qwen2VLImageProcessor(size=size, **common),
            video_processor=Qwen2VLVideoProcessor(size=size, do_sample_frames=False, cap_pixels_per_frame=True,
                                                  **common),
            tokenizer=tokenizer, chat_template=self.chat_template)

    def tiny_processor_settings(self, settings: dict) -> dict:
        factor = settings["patch_size"] * 2
        return {"min_pixels": factor * factor, "max_pixels": settings["image_size"] ** 2,
                "patch_size": settings["patch_size"], "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}

    def build_tiny(self, out_dir: Path, settings: dict) -> None:
        """A tiny random Qwen2.5-VL (``settings``: the schema's tiny_model): frames and images up to
        ``image_size`` squared pixels, the tiny tokenizer with Qwen's special tokens, the released template."""
        from vidtune.config import schema_defaults
        from vidtune.tiny_model import FINAL_NORM_SCALE, save_model_folder

        settings = {**schema_defaults("tiny_model"), **settings}
        tokenizer = qwen_tokenizer(self.chat_template)
        model = random_model(self.model_class, self.tiny_config(settings, Vocabulary.of(tokenizer)), settings["seed"])
        with torch.no_grad():  # logits of a trained model's range (vidtune.tiny_model.FINAL_NORM_SCALE)
            model.model.language_model.norm.weight.fill_(FINAL_NORM_SCALE)
        save_model_folder(Path(out_dir), model, tokenizer,
                          self.build_processor(tokenizer, self.tiny_processor_settings(settings)))

    def architecture_config(self, settings: dict, vocabulary: Vocabulary):
        """A published configuration, optionally with fewer layers and a smaller vocabulary (never smaller
        than the tokenizer)."""
        published = self.published[settings["name"]]
        vision, text = dict(published["vision"]), dict(published["text"])
        text.update(eos_token_id=vocabulary.eos_token_id, pad_token_id=vocabulary.pad_token_id, bos_token_id=None)
        if settings.get("vision_layers"):
            vision["depth"] = settings["vision_layers"]
            indexes = self.vision_layer_indexes
            vision[indexes] = fewer_layers(vision[indexes], vision["depth"])
        if settings.get("text_layers"):
            text["num_hidden_layers"] = settings["text_layers"]
        text["vocab_size"] = max(vocabulary.size, settings.get("vocab_size") or text["vocab_size"])
        return self.config_class(vision_config=vision, text_config=text,
                                 tie_word_embeddings=text["tie_word_embeddings"], **vocabulary.vision_ids)

    def build_architecture(self, out_dir: Path, settings: dict, device: str = "cpu") -> None:
        """A random-weight checkpoint of a published architecture (``settings``: the schema's architecture)
        with the released processor settings and chat template, in the released dtype (bf16) by default."""
        from vidtune.config import schema_defaults
        from vidtune.tiny_model import save_model_folder

        settings = {**schema_defaults("architecture"), **settings}
        if settings["name"] not in self.published:
            raise ModelError(f"{self.name} has no architecture {settings['name']!r}",
                             fix=f"use one of: {', '.join(self.published)}")
        tokenizer = qwen_tokenizer(self.chat_template, min(settings.get("vocab_size") or 8192, 8192))
        config = self.architecture_config(settings, Vocabulary.of(tokenizer))
        model = random_model(self.model_class, config, settings["seed"], getattr(torch, settings["dtype"]), device)
        save_model_folder(Path(out_dir), model, tokenizer,
                          self.build_processor(tokenizer, self.published[settings["name"]]["processor"]))

    def built_size(self, kind: str, settings: dict) -> tuple[int, int, int]:
        """The parameters of the model transformers' class makes of the config (on the meta device: no weight
        is allocated), with the tokenizer's size bounded from above (the tiny BPE has at most 1024 tokens)."""
        from vidtune.resources import DTYPE_BYTES
        from vidtune.tiny_model import VOCAB_SIZE

        if kind == "architecture":
            vocabulary = Vocabulary.counted(min(settings.get("vocab_size") or 8192, 8192))
            config, dtype_bytes = self.architecture_config(settings, vocabulary), DTYPE_BYTES[settings["dtype"]]
        else:
            config, dtype_bytes = self.tiny_config(settings, Vocabulary.counted(VOCAB_SIZE)), 4  # float32
        with torch.device("meta"):
            model = self.model_class._from_config(config)
        return sum(p.numel() for p in model.parameters()), dtype_bytes, config.text_config.vocab_size


FAMILY = Qwen2_5_VLFamily()
