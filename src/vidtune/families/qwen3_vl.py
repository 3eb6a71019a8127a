"""Qwen3-VL (transformers' Qwen3VLForConditionalGeneration): Qwen2.5-VL's way of taking a clip (one video,
the processor's own sampling off, the frames' real times as video metadata; images as images), with what
Qwen3-VL does differently:

- the prompt carries the frames' times: each temporal patch (two frames) is written as
  ``<t seconds><|vision_start|>...<|vision_end|>`` with t the mean of its frames' times, one decimal (the
  processor's own replacement; vidtune's metadata makes ``index / fps`` each frame's own time), and the
  rope positions are per frame, without a seconds-per-grid (``get_rope_index`` splits the video grid);
- the video processor sizes a video as a whole (its pixel budget covers every frame) and needs at least two
  frames: a one-frame clip goes in as that frame twice, at its time;
- the vision tower is deeper-stacked: besides the patch merger (the projector), ``deepstack_merger_list``
  feeds intermediate vision layers into the language model; they sit in the vision tower and freeze with it.
"""

from __future__ import annotations

import math

from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen2VLImageProcessor
from transformers.models.qwen3_vl import video_processing_qwen3_vl
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from vidtune.families.base import MediaShape
from vidtune.families.qwen2_5_vl import Qwen2_5_VLFamily, Vocabulary

IMAGE_STANDARD = [0.5, 0.5, 0.5]
# The released Qwen3-VL chat template's rendering of plain user and assistant turns (its tool-call and
# reasoning branches left out): no default system turn, each image or video where it is in the content.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-2B-Instruct, the smallest released Qwen3-VL (config.json; preprocessor_config.json for images,
# transformers' Qwen3-VL video processor defaults for videos).
QWEN3_VL_2B = {
    "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
               "hidden_act": "gelu_pytorch_tanh", "out_hidden_size": 2048, "patch_size": 16,
               "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
               "deepstack_visual_indexes": [5, 11, 17], "in_channels": 3},
    "text": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
             "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
             "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "attention_bias": False,
             "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True},
             "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": True},
    "processor": {"min_pixels": 65536, "max_pixels": 16777216, "video_min_pixels": 128 * 32 * 32,
                  "video_max_pixels": 768 * 32 * 32, "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
                  "image_mean": IMAGE_STANDARD, "image_std": IMAGE_STANDARD},
}


class Qwen3VLFamily(Qwen2_5_VLFamily):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    architectures = ("qwen3-vl-2b",)
    model_class = Qwen3VLForConditionalGeneration
    base_model_class = Qwen3VLModel
    processor_class = Qwen3VLProcessor
    config_class = Qwen3VLConfig
    chat_template = QWEN3_VL_CHAT_TEMPLATE
    published = {"qwen3-vl-2b": QWEN3_VL_2B}
    vision_layer_indexes = "deepstack_visual_indexes"  # the layers whose features reach the language model

    def video_frame_count(self, count: int) -> int:
        return max(count, 2)  # the video processor's least (its temporal patch)

    def video_grid(self, processor, shape: MediaShape) -> list[int]:
        """(t, h, w) patches of a video as Qwen3-VL's video processor makes them: one pixel budget for the
        whole video (``size.longest_edge``), per frame at most ``max_video_tokens`` patches where capped."""
        video = processor.video_processor
        width, height = shape.sizes[0]
        count = self.video_frame_count(shape.count)
        factor = video.patch_size * video.merge_size
        max_pixels = video.size["longest_edge"]
        if self.caps_pixels_per_frame(processor):
            per_frame = max(min(video.max_video_tokens * factor * factor, max_pixels // count),
                            int(video.size["shortest_edge"] * 1.05))
            max_pixels = per_frame * count
        if video.do_resize:
            height, width = video_processing_qwen3_vl.smart_resize(
                count, height, width, temporal_factor=video.temporal_patch_size, factor=factor,
                min_pixels=video.size["shortest_edge"], max_pixels=max_pixels)
        return [math.ceil(count / video.temporal_patch_size), height // video.patch_size, width // video.patch_size]

    def tiny_config(self, settings: dict, vocabulary: Vocabulary):
        s = settings
        text_heads = max(2, s["text_hidden_size"] // 32)
        pairs = s["text_hidden_size"] // text_heads // 2
        temporal = pairs * 3 // 8  # rotary pairs for time, height, width: the 2B's [24, 20, 20] of 64, scaled
        return Qwen3VLConfig(
            vision_config={"depth": s["vision_layers"], "hidden_size": s["vision_hidden_size"],
                           "intermediate_size": 2 * s["vision_hidden_size"],
                           "num_heads": max(1, s["vision_hidden_size"] // 32),
                           "out_hidden_size": s["text_hidden_size"], "patch_size": s["patch_size"],
                           "spatial_merge_size": 2, "temporal_patch_size": 2,
                           "num_position_embeddings": (s["image_size"] // s["patch_size"]) ** 2,
                           "deepstack_visual_indexes": [s["vision_layers"] - 1]},
            text_config={"vocab_size": vocabulary.size, "hidden_size": s["text_hidden_size"],
                         "intermediate_size": 3 * s["text_hidden_size"], "num_hidden_layers": s["text_layers"],
                         "num_attention_heads": text_heads, "num_key_value_heads": 1,
                         "head_dim": s["text_hidden_size"] // text_heads, "max_position_embeddings": 8192,
                         "tie_word_embeddings": True,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                             "mrope_section": [temporal, (pairs - temporal) // 2,
                                                               pairs - temporal - (pairs - temporal) // 2],
                                             "mrope_interleaved": True},
                         "bos_token_id": None, "eos_token_id": vocabulary.eos_token_id,
                         "pad_token_id": vocabulary.pad_token_id},
            tie_word_embeddings=True, **vocabulary.vision_ids)

    def tiny_processor_settings(self, settings: dict) -> dict:
        # A video's budget: up to 8 frames of image_size squared pixels.
        return {**super().tiny_processor_settings(settings), "video_min_pixels": (settings["patch_size"] * 2) ** 2,
                "video_max_pixels": 8 * settings["image_size"] ** 2, "image_mean": IMAGE_STANDARD,
                "image_std": IMAGE_STANDARD}

    def build_processor(self, tokenizer, processor_settings: dict):
        p = processor_settings
        common = {"patch_size": p["patch_size"], "temporal_patch_size": p["temporal_patch_size"],
                  "merge_size": p["merge_size"], "image_mean": p["image_mean"], "image_std": p["image_std"]}
        return self.processor_class(
            image_processor=Qwen2VLImageProcessor(size={"shortest_edge": p["min_pixels"],
                                                        "longest_edge": p["max_pixels"]}, **common),
            video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": p["video_min_pixels"],
                                                        "longest_edge": p["video_max_pixels"]},
                                                  do_sample_frames=False, cap_pixels_per_frame=True, **common),
            tokenizer=tokenizer, chat_template=self.chat_template)


FAMILY = Qwen3VLFamily()
