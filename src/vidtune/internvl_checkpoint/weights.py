"""Tensor names and shapes between InternVL's original layout and transformers' native InternVL, both ways.

Native names are those ``InternVLForConditionalGeneration.save_pretrained`` writes (``vision_tower.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.weight``). The vision
tower's packed ``attn.qkv`` becomes ``q_proj``/``k_proj``/``v_proj``; an InternLM2 language model becomes a
Llama one (its packed ``wqkv`` holds, per key/value head, that head's query heads, then its key, then its
value). Every other language model keeps its names: the original folder saved transformers' own class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

_LAYER, _PARAM = r"(?P<i>\d+)", r"(?P<p>weight|bias)"

VISION_RENAMES = [
    ("vision_model.embeddings.class_embedding", "vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.patch_embedding.{p}", "vision_tower.embeddings.patch_embeddings.projection.{p}"),
    ("vision_model.embeddings.position_embedding", "vision_tower.embeddings.position_embeddings"),
    ("vision_model.encoder.layers.{i}.attn.proj.{p}", "vision_tower.encoder.layer.{i}.attention.projection_layer.{p}"),
    ("vision_model.encoder.layers.{i}.attn.q_norm.{p}", "vision_tower.encoder.layer.{i}.attention.q_norm.{p}"),
    ("vision_model.encoder.layers.{i}.attn.k_norm.{p}", "vision_tower.encoder.layer.{i}.attention.k_norm.{p}"),
    ("vision_model.encoder.layers.{i}.ls1", "vision_tower.encoder.layer.{i}.lambda_1"),
    ("vision_model.encoder.layers.{i}.ls2", "vision_tower.encoder.layer.{i}.lambda_2"),
    ("vision_model.encoder.layers.{i}.norm1.{p}", "vision_tower.encoder.layer.{i}.layernorm_before.{p}"),
    ("vision_model.encoder.layers.{i}.norm2.{p}", "vision_tower.encoder.layer.{i}.layernorm_after.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc1.{p}", "vision_tower.encoder.layer.{i}.mlp.fc1.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc2.{p}", "vision_tower.encoder.layer.{i}.mlp.fc2.{p}"),
    ("mlp1.0.{p}", "multi_modal_projector.layer_norm.{p}"),
    ("mlp1.1.{p}", "multi_modal_projector.linear_1.{p}"),
    ("mlp1.3.{p}", "multi_modal_projector.linear_2.{p}"),
]
INTERNLM2_RENAMES = [
    ("language_model.model.tok_embeddings.weight", "language_model.model.embed_tokens.weight"),
    ("language_model.model.layers.{i}.attention.wo.{p}", "language_model.model.layers.{i}.self_attn.o_proj.{p}"),
    ("language_model.model.layers.{i}.feed_forward.w1.{p}", "language_model.model.layers.{i}.mlp.gate_proj.{p}"),
    ("language_model.model.layers.{i}.feed_forward.w3.{p}", "language_model.model.layers.{i}.mlp.up_proj.{p}"),
    ("language_model.model.layers.{i}.feed_forward.w2.{p}", "language_model.model.layers.{i}.mlp.down_proj.{p}"),
    ("language_model.model.layers.{i}.attention_norm.weight",
     "language_model.model.layers.{i}.input_layernorm.weight"),
    ("language_model.model.layers.{i}.ffn_norm.weight",
     "language_model.model.layers.{i}.post_attention_layernorm.weight"),
    ("language_model.model.norm.weight", "language_model.model.norm.weight"),
    ("language_model.output.weight", "language_model.lm_head.weight"),
]
VISION_QKV = ("vision_model.encoder.layers.{i}.attn.qkv.{p}",
              [f"vision_tower.encoder.layer.{{i}}.attention.{part}_proj.{{p}}" for part in "qkv"])
INTERNLM2_QKV = ("language_model.model.layers.{i}.attention.wqkv.{p}",
                 [f"language_model.model.layers.{{i}}.self_attn.{part}_proj.{{p}}" for part in "qkv"])


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", _LAYER).replace(r"\{p\}", _PARAM) + "$")


def _fill(template: str, match: re.Match) -> str:
    return template.format(**match.groupdict())


@dataclass(frozen=True)
class Heads:
    """A packed InternLM2 ``wqkv``'s geometry."""

    heads: int
    kv_heads: int
    head_dim: int

    def split(self, packed: torch.Tensor) -> list[torch.Tensor]:
        groups = self.heads // self.kv_heads
        grouped = packed.reshape(self.kv_heads, groups + 2, self.head_dim, *packed.shape[1:])
        query = grouped[:, :groups].reshape(self.heads * self.head_dim, *packed.shape[1:])
        return [query.contiguous(), grouped[:, -2].reshape(-1, *packed.shape[1:]).contiguous(),
                grouped[:, -1].reshape(-1, *packed.shape[1:]).contiguous()]

    def pack(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        groups = self.heads // self.kv_heads
        rest = query.shape[1:]
        return torch.cat([query.reshape(self.kv_heads, groups, self.head_dim, *rest),
                          key.reshape(self.kv_heads, 1, self.head_dim, *rest),
                          value.reshape(self.kv_heads, 1, self.head_dim, *rest)], dim=1).reshape(-1, *rest)


def _split_even(packed: torch.Tensor) -> list[torch.Tensor]:
    return [part.contiguous() for part in packed.chunk(3, dim=0)]


def _pack_even(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.cat([query, key, value], dim=0)


@dataclass
class _Split:
    original: re.Pattern
    original_template: str
    native: list[str]
    native_patterns: list[re.Pattern]
    split: Callable[[torch.Tensor], list[torch.Tensor]]
    pack: Callable[..., torch.Tensor]


class WeightMap:
    """The name mapping of one checkpoint (its backbone decides the language model's part)."""

    def __init__(self, weights: str = "same", heads: Heads | None = None):
        renames = VISION_RENAMES + (INTERNLM2_RENAMES if weights == "internlm2" else [])
        self.renames = [(_pattern(o), o, _pattern(n), n) for o, n in renames]
        splits = [(VISION_QKV, _split_even, _pack_even)]
        if weights == "internlm2":
            if heads is None:
                raise ValueError("an InternLM2 weight map needs the attention geometry")
            splits.append((INTERNLM2_QKV, heads.split, heads.pack))
        self.splits = [_Split(_pattern(o), o, n, [_pattern(t) for t in n], split, pack)
                       for (o, n), split, pack in splits]
        self.language_model_unchanged = weights == "same"

    def to_native(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """The native tensors of one original tensor; KeyError for a name the layout does not know."""
        for original, _, _, native in self.renames:
            match = original.match(name)
            if match:
                return [(_fill(native, match), tensor)]
        for split in self.splits:
            match = split.original.match(name)
            if match:
                return [(_fill(template, match), part)
                        for template, part in zip(split.native, split.split(tensor))]
        if self.language_model_unchanged and name.startswith("language_model."):
            return [(name, tensor)]
        raise KeyError(name)

    def to_original(self, name: str, tensor: torch.Tensor, pending: dict) -> list[tuple[str, torch.Tensor]]:
        """The original tensors that native tensor ``name`` completes: a packed tensor comes out once all its
        parts went in (``pending`` holds the parts seen so far; it is empty again when every part arrived)."""
        for _, original_template, native, _ in self.renames:
            match = native.match(name)
            if match:
                return [(_fill(original_template, match), tensor)]
        for split in self.splits:
            for index, pattern in enumerate(split.native_patterns):
                match = pattern.match(name)
                if match:
                    target = _fill(split.original_template, match)
                    parts = pending.setdefault(target, {})
                    parts[index] = tensor
                    if len(parts) < len(split.native):
                        return []
                    del pending[target]
                    return [(target, split.pack(*(parts[i] for i in range(len(split.native)))))]
        if self.language_model_unchanged and name.startswith("language_model."):
            return [(name, tensor)]
        raise KeyError(name)
