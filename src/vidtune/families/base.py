"""The model-family interface: everything that differs between vision-language model families.

The core (the data check, training data, batching and packing, training, merging, prediction) never names
a family; it asks the family of the model folder (:func:`vidtune.families.family_for_folder`) how a sample
becomes model inputs, how many tokens a sample costs, which submodules are the vision tower, projector and
language model, which linears LoRA targets, which modules QLoRA leaves unquantised, and how a tiny random
model of the architecture is built. A family is one module in this package defining ``FAMILY``, an instance
of a :class:`ModelFamily` subclass (docs/families.md).

What the core relies on:

- :meth:`ModelFamily.encode` returns 1-D ``input_ids``/``attention_mask`` (+ ``labels``) and every other
  tensor the processor returned, untouched; keys in :attr:`ModelFamily.sequence_keys` are per token (padded
  in a batch, concatenated in a packed row), every other key is concatenated along dim 0 when samples are
  batched (``pixel_values``, ``image_grid_thw``, ...);
- :meth:`ModelFamily.sample_length` equals ``len(encode(...)["input_ids"])`` without decoding a pixel;
- :meth:`ModelFamily.packed_position_ids` gives a packed row's positions, restarting per sample.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from vidtune.errors import ModelError

IGNORE_INDEX = -100
PARTS = ("vision", "projector", "language")
# The tokens that close an answer in the chat templates of the supported checkpoints (Qwen/InternLM, Phi-3,
# GPT-OSS, Llama-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|end|>", "<|return|>", "<|eot_id|>")


@dataclasses.dataclass(frozen=True)
class Media:
    """A sample's pixels: a video's sampled frames (in time order) or one or more images.

    ``frame_times`` are the frames' times in the clip in seconds (None where unknown: a frame folder without
    vidtune's frames.json); ``max_dynamic_patch`` is the dataset's most tiles per image (families that tile).
    """

    frames: tuple  # PIL images, RGB
    media_type: str = "video"  # video | image
    frame_times: tuple[float, ...] | None = None
    max_dynamic_patch: int = 1

    def __post_init__(self):
        if self.media_type not in ("video", "image"):
            raise ValueError(f"media_type must be video or image, not {self.media_type!r}")
        object.__setattr__(self, "frames", tuple(self.frames))
        if self.frame_times is not None:
            object.__setattr__(self, "frame_times", tuple(float(t) for t in self.frame_times))

    @property
    def shape(self) -> "MediaShape":
        return MediaShape(tuple(frame.size for frame in self.frames), self.media_type, self.frame_times,
                          self.max_dynamic_patch)


@dataclasses.dataclass(frozen=True)
class MediaShape:
    """What a token count needs of a sample's media, without its pixels: each frame's or image's
    ``(width, height)``, the media type, the frames' times and the tiling limit (as :class:`Media`)."""

    sizes: tuple[tuple[int, int], ...]
    media_type: str = "video"
    frame_times: tuple[float, ...] | None = None
    max_dynamic_patch: int = 1

    @property
    def count(self) -> int:
        """How many frames (video) or images."""
        return len(self.sizes)

    def with_count(self, count: int) -> "MediaShape":
        """The shape of ``count`` of the frames spread evenly over the clip (what truncation keeps)."""
        times = None if self.frame_times is None else tuple(uniform_subset(list(self.frame_times), count))
        return dataclasses.replace(self, sizes=tuple(uniform_subset(list(self.sizes), count)), frame_times=times)


@functools.lru_cache(maxsize=32)
def _measured_tiny_size(family: "ModelFamily", settings: str) -> tuple[int, int, int]:
    import tempfile

    from vidtune.resources import folder_size

    with tempfile.TemporaryDirectory() as temp:
        family.build_tiny(Path(temp) / "model", json.loads(settings))
        size = folder_size(Path(temp) / "model")
    return size.weight_bytes // size.dtype_bytes, size.dtype_bytes, size.vocab_size


def uniform_subset(items: list, count: int) -> list:
    """``count`` of the items, spread evenly (the middle of each of ``count`` equal stretches)."""
    step = len(items) / count
    return [items[int(step * index + step / 2)] for index in range(count)]


class ModelFamily:
    """One vision-language model family. Subclasses set the class attributes and override what differs;
    the defaults here suit a processor that takes ``images=`` (or ``videos=``) and ``text=`` and a chat
    template whose generation prompt prefixes the full turn."""

    # --- What the family is -------------------------------------------------------------------------------
    name: str = ""
    # config.json ``model_type`` values of checkpoints of this family.
    model_types: tuple[str, ...] = ()
    # Short submodule names of each part (the shortest-named match under any wrapper prefix is the part).
    part_names: dict[str, tuple[str, ...]] = {"vision": (), "projector": (), "language": ()}
    # Short names of the language model's linears LoRA targets.
    language_lora_targets: frozenset[str] = frozenset()
    # Full module paths QLoRA leaves unquantised (bitsandbytes matches short names too loosely).
    qlora_skip_modules: tuple[str, ...] = ()
    # Keys of encode()'s output that are per token: padded in a batch, concatenated in a packed row.
    sequence_keys: frozenset[str] = frozenset({"input_ids", "attention_mask", "labels", "token_type_ids",
                                               "mm_token_type_ids"})
    # Architecture names (the schema's models.<name>.architecture.name values) this family builds.
    architectures: tuple[str, ...] = ()
    end_of_turn_tokens: tuple[str, ...] = END_OF_TURN_TOKENS

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    # --- Processor and prompt -----------------------------------------------------------------------------
    def load_processor(self, folder: str | Path):
        """The model folder's processor (with its tokenizer and chat template)."""
        from transformers import AutoProcessor

        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError("model folder not found", file=folder, fix="check the model path in the config")
        try:
            return AutoProcessor.from_pretrained(folder)
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise ModelError(f"cannot load the processor: {error}", file=folder,
                             fix=f"the folder needs the tokenizer and preprocessor files of a {self.name} "
                                 f"checkpoint") from error

    def build_messages(self, prompt: str, media: "Media | MediaShape", target: str | None = None) -> list[dict]:
        """The conversation of one sample for the chat template (media first, then the prompt)."""
        count = media.count if isinstance(media, MediaShape) else len(media.frames)
        visual = [{"type": "video"}] if media.media_type == "video" else [{"type": "image"}] * count
        content = [*visual, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        if target is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
        return messages

    def render(self, processor, prompt: str, media: "Media | MediaShape", target: str | None = None) -> str:
        """The sample's text through the folder's chat template (with the generation prompt when no target)."""
        messages = self.build_messages(prompt, media, target)
        return processor.apply_chat_template(messages, add_generation_prompt=target is None)

    def processor_inputs(self, processor, media: Media, text: str) -> dict:
        """The processor's output for one sample's rendered text and media (batch of one, tensors)."""
        return processor(images=list(media.frames), text=text, return_tensors="pt")

    # --- Encoding -----------------------------------------------------------------------------------------
    def encode(self, processor, media: Media, prompt: str, target: str | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for one sample: 1-D input_ids/attention_mask (+labels with a target) and every other
        tensor the processor returns, untouched.

        Labels are -100 everywhere but the assistant's answer and the end-of-turn token that closes it.
        Without a target the text ends with the assistant header, ready for generation.
        """
        prompt_text = self.render(processor, prompt, media)
        prompt_inputs = self.processor_inputs(processor, media, prompt_text)
        if target is None:
            return self._unbatched(prompt_inputs)
        full_text = self.render(processor, prompt, media, target)
        if not full_text.startswith(prompt_text):
            raise ModelError("the chat template does not render the answer after the generation prompt",
                             fix="use a chat template whose add_generation_prompt output prefixes the full turn")
        encoded = self._unbatched(self.processor_inputs(processor, media, full_text))
        input_ids = encoded["input_ids"]
        num_prompt = prompt_inputs["input_ids"].shape[-1]
        if not torch.equal(input_ids[:num_prompt], prompt_inputs["input_ids"].reshape(-1)):
            raise ModelError("the prompt tokenises differently inside the full conversation",
                             fix="end the chat template's generation prompt with a newline or special token")
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        answer_end = len(input_ids)
        end_ids = self.end_of_turn_ids(processor.tokenizer)
        for position in range(num_prompt, len(input_ids)):
            if int(input_ids[position]) in end_ids:
                answer_end = position + 1
                break
        labels[num_prompt:answer_end] = input_ids[num_prompt:answer_end]
        return {**encoded, "labels": labels}

    def _unbatched(self, inputs) -> dict[str, torch.Tensor]:
        """The processor's batch of one: per-token keys as 1-D tensors, everything else as it came."""
        return {key: value[0] if key in self.sequence_keys else value
                for key, value in inputs.items() if isinstance(value, torch.Tensor)}

    def end_of_turn_ids(self, tokenizer) -> set[int]:
        ids = {tokenizer.eos_token_id}
        for token in self.end_of_turn_tokens:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
        return {i for i in ids if i is not None}

    # --- Token counts -------------------------------------------------------------------------------------
    def sample_length(self, processor, shape: MediaShape, prompt: str, target: str | None) -> int:
        """Tokens of the sample as :meth:`encode` makes it, without decoding a pixel."""
        raise NotImplementedError(f"{self.name}: sample_length")

    # --- Packing ------------------------------------------------------------------------------------------
    def packed_position_ids(self, samples: Sequence[dict[str, torch.Tensor]], model_config=None) -> torch.Tensor:
        """The position ids of a packed row of encoded samples (batch dim first): 0..n-1 for each sample,
        one after the other. A family with multi-dimensional (rope) positions returns each sample's own,
        restarting the same way, in the shape its model takes; ``model_config`` is the model's config where
        the caller has it (the training collator does)."""
        return torch.cat([torch.arange(len(sample["input_ids"])) for sample in samples])[None]

    # --- Merging ------------------------------------------------------------------------------------------
    def finish_merged_folder(self, merged_dir: Path, original_base: Path | None = None) -> dict:
        """Anything a merged folder needs beyond the model's and processor's own save, once the merge check
        passed; ``original_base`` is the run's base as given where the workflow converted it from another
        layout. Returns what to add to merge_check.json (default: nothing to do, {})."""
        return {}

    # --- Tiny and real-shape random builds ----------------------------------------------------------------
    def build_tiny(self, out_dir: Path, settings: dict) -> None:
        """Write a tiny random checkpoint folder of the family's architecture (``settings``: the schema's
        ``tiny_model``)."""
        raise NotImplementedError(f"{self.name}: build_tiny")

    def build_architecture(self, out_dir: Path, settings: dict, device: str = "cpu") -> None:
        """Write a random-weight checkpoint of one of :attr:`architectures` (``settings``: the schema's
        ``architecture``)."""
        raise NotImplementedError(f"{self.name}: build_architecture")

    def built_size(self, kind: str, settings: dict) -> tuple[int, int, int]:
        """(parameters, bytes per parameter, vocabulary) of what :meth:`build_tiny` (``kind`` "tiny") or
        :meth:`build_architecture` ("architecture") makes of ``settings`` (defaults filled in), without
        building it: the jobs' memory requests are planned from it when the workflow is parsed.

        The default builds a tiny model once (per process and settings) in a temporary folder and measures
        its weights; a family counts its architectures' parameters itself (building them would take minutes
        and gigabytes)."""
        if kind != "tiny":
            raise NotImplementedError(f"{self.name}: built_size of an architecture (for the jobs' memory requests)")
        return _measured_tiny_size(self, json.dumps(settings, sort_keys=True))

    # --- Helpers for the core -----------------------------------------------------------------------------
    def find_part(self, model: torch.nn.Module, part: str) -> tuple[str, torch.nn.Module] | None:
        """The (shortest-named) submodule of a part (vision/projector/language), under any wrapper prefix."""
        names = self.part_names[part]
        matches = [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in names]
        return min(matches, key=lambda match: len(match[0])) if matches else None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model_types": list(self.model_types), "architectures": list(self.architectures)}
