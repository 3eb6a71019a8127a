"""The model a method trains: which parts are trainable (frozen parts, LoRA targets, QLoRA's 4-bit base),
the trainable parameters per part, and the check afterwards that training moved them.

One story for every method: ``freeze_vision``/``freeze_projector``/``freeze_language`` say which parts of
the model train. ``full`` trains the parts not frozen, weight by weight. ``lora``/``qlora`` train the
language model through adapters (unless it is frozen), the vision tower through adapters where
``lora.vision`` is set (which needs ``freeze_vision: false``), and the projector fully unless it is frozen
(``lora.train_projector: false`` says the same as ``freeze_projector: true``). A frozen part has no
trainable parameter, no adapter and so no optimizer state; the config check rejects contradictions.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from vidtune.errors import ModelError
from vidtune.families import ModelFamily, family_for_folder
from vidtune.families.base import PARTS
from vidtune.modeling import load_model
from vidtune.training.settings import TrainingSettings


def lora_target_modules(model: nn.Module, family: ModelFamily, *, language: bool = True,
                        vision: bool = False) -> list[str]:
    """Full names of the language model's attention/MLP linears (the family's short names) where
    ``language``, plus every linear of the vision tower where ``vision``."""
    targets = []
    if language:
        found = family.find_part(model, "language")
        if found is None:
            raise ModelError(f"cannot find the language model to put LoRA on ({family.name}: "
                             f"{', '.join(family.part_names['language'])})",
                             fix=f"use a {family.name} checkpoint in transformers' layout")
        prefix = found[0] + "."
        targets += [name for name, module in model.named_modules()
                    if name.startswith(prefix) and isinstance(module, nn.Linear)
                    and name.rsplit(".", 1)[-1] in family.language_lora_targets]
        if not targets:
            raise ModelError(f"no {'/'.join(sorted(family.language_lora_targets))} linears in the language model",
                             fix="use method full for this architecture")
    if vision and (tower := family.find_part(model, "vision")) is not None:
        # A projector inside the tower (Qwen2-VL's merger) is no LoRA target: it trains fully or is frozen.
        projector = family.find_part(model, "projector")
        inside = projector[0] + "." if projector and projector[0].startswith(tower[0] + ".") else None
        targets += [name for name, module in model.named_modules()
                    if name.startswith(tower[0] + ".") and isinstance(module, nn.Linear)
                    and not (inside and name.startswith(inside))]
    return targets


def frozen_parts(settings: TrainingSettings) -> dict[str, bool]:
    """Which parts the settings keep frozen (``lora.train_projector: false`` freezes the projector too)."""
    lora_method = settings.method in ("lora", "qlora")
    return {"vision": settings.freeze_vision,
            "projector": settings.freeze_projector or (lora_method and settings.lora.train_projector is False),
            "language": settings.freeze_language}


def prepare_model(model_dir: Path, settings: TrainingSettings, log: logging.Logger,
                  family: ModelFamily | None = None):
    """Load the base model and make exactly the chosen parts trainable."""
    family = family or family_for_folder(model_dir)
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
    frozen = frozen_parts(settings)
    if method == "full":
        for part, freeze in frozen.items():
            found = family.find_part(model, part)
            if found is not None:
                found[1].requires_grad_(not freeze)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            head.requires_grad_(not frozen["language"])
        log.info("full: %s", _counts_line(trainable_parameters(model, family)))
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = settings.lora
    projector = family.find_part(model, "projector")
    modules_to_save = [projector[0].rsplit(".", 1)[-1]] if projector and not frozen["projector"] else None
    targets = lora_target_modules(model, family, language=not frozen["language"],
                                  vision=lora.vision and not frozen["vision"])
    if not targets:
        raise ModelError("no LoRA target: the language model is frozen and lora.vision is off",
                         fix="unfreeze the language model, set lora.vision (with freeze_vision: false), or use "
                             "method full")
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, modules_to_save=modules_to_save)
    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, config)
    log.info("%s: %s (%d LoRA targets%s)", method, _counts_line(trainable_parameters(model, family)),
             len(config.target_modules), ", projector trained" if modules_to_save else "")
    return model


def trainable_parameters(model: nn.Module, family: ModelFamily) -> dict[str, int]:
    """Trainable parameters per part (vision, projector, language; ``other``: outside the three, such as
    an untied lm_head), LoRA adapters and fully trained copies counted in the part they sit in.

    Under DeepSpeed ZeRO-3 a parameter's full size is its ``ds_numel``."""
    prefixes = {}
    for part in PARTS:
        found = family.find_part(model, part)
        if found is not None:
            prefixes[part] = found[0] + "."
    counts = dict.fromkeys((*PARTS, "other"), 0)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # The longest matching prefix: a projector inside the vision tower counts as the projector.
        part = max((part for part, prefix in prefixes.items() if name.startswith(prefix)),
                   key=lambda part: len(prefixes[part]), default="other")
        counts[part] += int(getattr(param, "ds_numel", param.numel()))
    return counts


def _counts_line(counts: dict[str, int]) -> str:
    return "trainable parameters " + ", ".join(f"{part} {count:,}" for part, count in counts.items())


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


