"""InternVL (transformers' InternVLForConditionalGeneration: InternVL3, InternVL2.5 converted to its layout).

Video frames go in as images, one tile each, labelled ``Frame1: <image>\\nFrame2: <image>...`` (InternVL's
video expansion); images get up to ``max_dynamic_patch`` tiles plus a thumbnail (InternVL's dynamic
tiling). Each image becomes ``<img>`` + tiles x ``image_seq_length`` context tokens + ``</img>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import AutoProcessor, InternVLConfig, InternVLProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

from vidtune.errors import ModelError
from vidtune.families.base import Media, MediaShape, ModelFamily


class InternVLImageOnlyProcessor(InternVLProcessor):
    """InternVLProcessor without a video processor (which needs torchvision): frames go in as images.

    The folder it saves still names ``InternVLProcessor``, so the stock processor loads it where
    torchvision is installed.
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                 **kwargs):
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.image_seq_length = image_seq_length
        self.start_image_token = tokenizer.start_image_token
        self.end_image_token = tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token = tokenizer.context_image_token
        self.video_token = tokenizer.video_token
        self.image_token_id = tokenizer.context_image_token_id
        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})")

    def save_pretrained(self, save_directory, **kwargs):
        result = super().save_pretrained(save_directory, **kwargs)
        _name_stock_processor(Path(save_directory))
        return result


AutoProcessor.register(InternVLConfig, InternVLImageOnlyProcessor, exist_ok=True)


def _name_stock_processor(folder: Path) -> None:
    """Make the saved configs name the stock InternVLProcessor (and its video processor)."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            if "processor_class" in data or name == "processor_config.json":
                data["processor_class"] = "InternVLProcessor"
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    video_config = folder / "video_preprocessor_config.json"
    if not video_config.exists():
        image = json.loads((folder / "preprocessor_config.json").read_text()) \
            if (folder / "preprocessor_config.json").is_file() else {}
        size = image.get("size", {"height": 448, "width": 448})
        video_config.write_text(json.dumps({
            "video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor",
            "do_resize": True, "size": size, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": image.get("image_mean", [0.485, 0.456, 0.406]),
            "image_std": image.get("image_std", [0.229, 0.224, 0.225]), "do_convert_rgb": True,
            "initial_shift": True, "do_sample_frames": False,
        }, indent=2, sort_keys=True) + "\n")


def images_kwargs(media_type: str, max_dynamic_patch: int) -> dict:
    """The image processor's tiling: one tile per video frame; up to max_dynamic_patch (+ thumbnail) per image."""
    if media_type == "video":
        return {"crop_to_patches": False}
    return {"crop_to_patches": max_dynamic_patch > 1, "max_patches": max_dynamic_patch}


class InternVLFamily(ModelFamily):
    name = "internvl"
    # transformers' layout; "internvl_chat" is InternVL's original layout, which the workflow converts first.
    model_types = ("internvl", "internvl_chat")
    # Submodule names in transformers' InternVL and in InternVL's own (remote-code) checkpoints.
    part_names = {"vision": ("vision_tower", "vision_model"), "projector": ("multi_modal_projector", "mlp1"),
                  "language": ("language_model",)}
    # Qwen2/Llama-style and InternLM2-style names.
    language_lora_targets = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                       "down_proj", "wqkv", "wo", "w1", "w2", "w3"})
    qlora_skip_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    architectures = ("internvl3-1b", "internvl3-2b", "internvl3-8b")

    def load_processor(self, folder: str | Path):
        """The stock processor where its video processor is usable, else the image-only one.

        Images are resized by PIL (the image processor's pil backend), as InternVL's own preprocessing does
        (torchvision's transforms on PIL images): the same tiles as the checkpoint saw in its training, not
        the slightly different pixels of a tensor resize.
        """
        from transformers import AutoImageProcessor

        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError("model folder not found", file=folder, fix="check the model path in the config")
        try:
            processor = AutoProcessor.from_pretrained(folder) if is_torchvision_available() \
                else InternVLImageOnlyProcessor.from_pretrained(folder)
            processor.image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
            return processor
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise ModelError(f"cannot load the processor: {error}", file=folder,
                             fix="the folder needs the tokenizer and preprocessor files of an InternVL "
                                 "checkpoint") from error

    def build_messages(self, prompt: str, media: Media | MediaShape, target: str | None = None) -> list[dict]:
        """Frames as ``Frame<i>: <image>`` lines for video, images first, then the prompt."""
        count = media.count if isinstance(media, MediaShape) else len(media.frames)
        content: list[dict] = []
        for index in range(count):
            if media.media_type == "video":
                content.append({"type": "text", "text": f"Frame{index + 1}: "})
            content.append({"type": "image"})
        content.append({"type": "text", "text": prompt})
        messages = [{"role": "user", "content": content}]
        if target is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
        return messages

    def processor_inputs(self, processor, media: Media, text: str) -> dict:
        return processor(images=list(media.frames), text=text, return_tensors="pt",
                         images_kwargs=images_kwargs(media.media_type, media.max_dynamic_patch))

    def tiles(self, processor, shape: MediaShape) -> list[int]:
        """Tiles of each frame (one) or image (by the processor's dynamic tiling of its size)."""
        if shape.media_type == "video":
            return [1] * shape.count
        kwargs = images_kwargs("image", shape.max_dynamic_patch)
        return [processor.image_processor.get_number_of_image_patches(height, width, kwargs)
                for width, height in shape.sizes]

    def sample_length(self, processor, shape: MediaShape, prompt: str, target: str | None) -> int:
        """The rendered text's tokens, each image placeholder replaced by its tiles x the tokens per tile,
        plus its <img></img> pair."""
        text = self.render(processor, prompt, shape, target)
        text_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        tiles = self.tiles(processor, shape)
        return text_tokens - len(tiles) + sum(count * processor.image_seq_length + 2 for count in tiles)

    def finish_merged_folder(self, merged_dir: Path, original_base: Path | None = None) -> dict:
        """With the run's base in InternVL's original layout, the merged model in that layout too
        (``original_layout/``, for InternVL's own tools)."""
        if original_base is None:
            return {}
        from vidtune.internvl_checkpoint.export import export_original_layout

        return {"original_layout": export_original_layout(merged_dir, original_base,
                                                          Path(merged_dir) / ORIGINAL_LAYOUT_FOLDER)}

    def built_size(self, kind: str, settings: dict) -> tuple[int, int, int]:
        from vidtune import resources

        if kind == "architecture":
            text, vision = resources.architecture_dims(settings)
            dtype_bytes = resources.DTYPE_BYTES[settings["dtype"]]
        else:
            text, vision = resources.tiny_dims(settings)
            dtype_bytes = 4  # built in float32
        return resources.internvl_parameters(text, vision), dtype_bytes, text["vocab_size"]

    def build_tiny(self, out_dir: Path, settings: dict) -> None:
        from vidtune.tiny_model import build_tiny_model

        build_tiny_model(Path(out_dir), settings)

    def build_architecture(self, out_dir: Path, settings: dict, device: str = "cpu") -> None:
        from vidtune.tiny_model import build_architecture_model

        build_architecture_model(Path(out_dir), settings, device)


ORIGINAL_LAYOUT_FOLDER = "original_layout"
FAMILY = InternVLFamily()
