"""The model a method trains: which parts are trainable (LoRA targets, frozen parts, QLoRA's 4-bit base),
and the check afterwards that training moved them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from vidtune.errors import ModelError
from vidtune.modeling import load_model
from vidtune.training.settings import TrainingSettings

# Linear layers LoRA targets in the language model: Qwen2/Llama-style and InternLM2-style names.
LANGUAGE_LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                         "wqkv", "wo", "w1", "w2", "w3"}
# Submodule names in transformers' InternVL and in InternVL's own (remote-code) checkpoints.
PART_NAMES = {"vision": ("vision_tower", "vision_model"), "projector": ("multi_modal_projector", "mlp1"),
              "language": ("language_model",)}


def find_part(model: nn.Module, part: str) -> tuple[str, nn.Module] | None:
    """The (shortest-named) submodule for vision/projector/language, under any wrapper prefix."""
    matches = [(name, module) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in PART_NAMES[part]]
    return min(matches, key=lambda match: len(match[0])) if matches else None


def lora_target_modules(model: nn.Module, vision: bool = False) -> list[str]:
    """Full names of the language model's attention/MLP linears (plus the vision tower's linears if asked)."""
    language = find_part(model, "language")
    if language is None:
        raise ModelError("cannot find the language model to put LoRA on",
                         fix="use an InternVL checkpoint (transformers' or InternVL's own layout)")
    prefix = language[0] + "."
    targets = [name for name, module in model.named_modules()
               if name.startswith(prefix) and isinstance(module, nn.Linear)
               and name.rsplit(".", 1)[-1] in LANGUAGE_LORA_TARGETS]
    if vision and (tower := find_part(model, "vision")) is not None:
        targets += [name for name, module in model.named_modules()
                    if name.startswith(tower[0] + ".") and isinstance(module, nn.Linear)]
    if not targets:
        raise ModelError("no q/k/v/o/gate/up/down (or wqkv/wo/w1/w2/w3) linears in the language model",
                         fix="use method full for this architecture")
    return targets


def prepare_model(model_dir: Path, settings: TrainingSettings, log: logging.Logger):
    """Load the base model and make exactly the chosen parts trainable."""
    method, bf16 = settings.method, settings.uses_bf16
    if method == "qlora":
        model = load_model(model_dir, quantization="nf4", dtype=torch.bfloat16)
    else:
        # LoRA keeps the frozen base in bf16 where training runs in bf16 (adapters stay fp32, peft's default).
        base_dtype = torch.bfloat16 if bf16 and method == "lora" else torch.float32
        model = load_model(model_dir, dtype=base_dtype)
    model.config.use_cache = False
    # The language model reads its own config: with a cache, transformers would not build the block-diagonal
    # mask of packed rows (masking_utils) and samples would attend across their boundaries.
    model.config.get_text_config().use_cache = False
    if settings.attention != model.config._attn_implementation:
        model.set_attn_implementation(settings.attention)  # packed rows: flash-attention's varlen kernel
    if method == "full":
        frozen = {"vision": settings.freeze_vision, "projector": settings.freeze_projector,
                  "language": settings.freeze_language}
        for part, freeze in frozen.items():
            found = find_part(model, part)
            if found is not None:
                found[1].requires_grad_(not freeze)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            head.requires_grad_(not settings.freeze_language)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = settings.lora
    projector = find_part(model, "projector")
    modules_to_save = [projector[0].rsplit(".", 1)[-1]] if lora.train_projector and projector else None
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora_target_modules(model, lora.vision), modules_to_save=modules_to_save)
    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("%s: %d trainable of %d parameters (%d LoRA targets%s)", method, trainable, total,
             len(config.target_modules), ", projector trained" if modules_to_save else "")
    return model


def _gathered(param: nn.Parameter):
    """The whole tensor inside the block, also when DeepSpeed ZeRO-3 holds only this process's shard of it
    (a collective: every process must enter it)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([param])
    return contextlib.nullcontext()


def trainable_fingerprints(model: nn.Module) -> dict[str, torch.Tensor]:
    """A small slice of every trainable tensor, to tell afterwards whether training changed it.

    Under ZeRO-3 every process must call it (each tensor is gathered in turn)."""
    fingerprints = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            with _gathered(param):
                if param.numel() > 0:
                    fingerprints[name] = param.detach().flatten()[:4096].float().cpu().clone()
    return fingerprints


def check_weights_changed(model: nn.Module, before: dict[str, torch.Tensor], final_dir: Path) -> dict:
    """Fail when nothing trainable moved, or when a saved LoRA B matrix is all zeros (LoRA + ZeRO-3 bug).

    Under ZeRO-3 every process must call it."""
    from safetensors import safe_open

    after = trainable_fingerprints(model)
    unchanged = [name for name, value in before.items() if name in after and torch.equal(after[name], value)]
    if before and len(unchanged) == len(before):
        raise ModelError("training changed no trainable weight", file=str(final_dir),
                         fix="check the learning rate, the data and (with DeepSpeed ZeRO-3) the LoRA setup")
    zero_lora_b = []
    adapter = final_dir / "adapter_model.safetensors"
    if adapter.is_file():
        with safe_open(adapter, "pt") as handle:
            lora_b = [key for key in handle.keys() if "lora_B" in key]
            zero_lora_b = [key for key in lora_b if not handle.get_tensor(key).any()]
        if not lora_b or zero_lora_b:
            raise ModelError(f"{len(zero_lora_b)} of {len(lora_b)} saved LoRA B matrices are all zeros",
                             file=str(adapter), fix="the adapter did not train; with ZeRO-3 gather weights on save")
    return {"trainable_tensors": len(before), "unchanged_tensors": len(unchanged)}


