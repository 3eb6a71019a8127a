"""InternVL checkpoints in the original layout (issue 21): converted to the native class with the original
model's logits, preprocessing and token ids; refused at parse time when the native class cannot hold them;
merged models written back in the original layout.

The fixtures under tests/data/internvl_original were made by InternVL's released model code (its README says
how): per backbone a tiny checkpoint folder as the Hub has it (without the .py files) and the original
model's logits, token ids and pixel values for a fixed non-square image and prompt.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import REPO, Workflow, executed_jobs, quick_config
from vidtune.config import check_model_folder
from vidtune.errors import ConfigError
from vidtune.fingerprint import folder_fingerprint
from vidtune.internvl_checkpoint.chat_templates import TEMPLATES, chat_template, render_original
from vidtune.internvl_checkpoint.convert import convert_checkpoint
from vidtune.internvl_checkpoint.export import export_original_layout
from vidtune.internvl_checkpoint.layout import weight_files
from vidtune.families import Media
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.modeling import load_model, load_processor

FIXTURES = REPO / "tests" / "data" / "internvl_original"
BACKBONES = sorted(path.name for path in FIXTURES.iterdir() if (path / "reference.json").is_file())
# InternVL2/2.5/3's code unties every language model (its config class sets tie_word_embeddings false), so
# their checkpoints carry an output layer; InternVL3.5's code keeps the LLM's own setting, and its small Qwen3
# models (Qwen3-0.6B/1.7B/4B) are tied: the qwen3 fixture is.
UNTIED = {"qwen2", "internlm2", "llama", "phi3", "qwen3_moe", "gpt_oss"}


def reference(backbone: str) -> tuple[dict, dict, torch.Tensor]:
    folder = FIXTURES / backbone
    settings = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    tensors = load_file(folder / "reference.safetensors")
    pixel_values = load_file((folder / settings["pixel_values"]).resolve())["pixel_values"]
    return settings, tensors, pixel_values


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """backbone -> its fixture converted to the native layout (once per module)."""
    folders: dict[str, Path] = {}

    def convert(backbone: str) -> Path:
        if backbone not in folders:
            folders[backbone] = tmp_path_factory.mktemp(f"native_{backbone}") / "model"
            convert_checkpoint(FIXTURES / backbone, folders[backbone])
        return folders[backbone]

    return convert


def test_every_backbone_the_issue_names_has_a_fixture():
    from vidtune.internvl_checkpoint.layout import BACKBONES as SUPPORTED

    fixtures = {json.loads((FIXTURES / name / "reference.json").read_text())["llm_architecture"] for name in BACKBONES}
    assert fixtures == set(SUPPORTED), "every supported backbone is proven on a fixture of InternVL's own code"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_converted_model_gives_the_original_models_logits(converted, backbone):
    settings, tensors, pixel_values = reference(backbone)
    model = load_model(converted(backbone), dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                       pixel_values=pixel_values).logits
    stored = tensors["logits"]
    assert stored.abs().max() > 1.0  # logits that differ between tokens, not all near zero
    difference = (logits[:, settings["logits_start"]:] - stored).abs().max().item()
    assert difference <= 1e-4, f"{backbone}: max abs logit difference {difference}"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_converted_processor_encodes_image_and_prompt_as_the_original(converted, backbone):
    """vidtune's own encoding (chat template, tiling into max_dynamic_patch tiles + thumbnail) of the
    fixture's non-square image gives the original's token ids and pixel values."""
    settings, tensors, pixel_values = reference(backbone)
    assert settings["num_patches"] > 1  # tiling really happened
    processor = load_processor(converted(backbone))
    with Image.open((FIXTURES / backbone / settings["image"]).resolve()) as image:
        encoded = INTERNVL.encode(processor, Media([image.convert("RGB")], "image", None,
                                                   settings["max_dynamic_patch"]),
                                  settings["question"].split("\n", 1)[1])
    assert encoded["input_ids"].tolist() == tensors["input_ids"][0].tolist()
    assert encoded["pixel_values"].shape == pixel_values.shape
    assert torch.allclose(encoded["pixel_values"], pixel_values, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_converted_tokenizer_gives_the_original_ids(converted, backbone):
    settings, _, _ = reference(backbone)
    tokenizer = load_processor(converted(backbone)).tokenizer
    for case in settings["tokenizer_tests"]:
        assert tokenizer(case["text"])["input_ids"] == case["ids"], case["text"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tying_eos_and_template_are_the_checkpoints(converted, backbone):
    settings, _, _ = reference(backbone)
    folder = converted(backbone)
    assert settings["tie_word_embeddings"] == (backbone not in UNTIED)
    model = load_model(folder, dtype=torch.float32)
    shared = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shared == settings["tie_word_embeddings"] == model.config.tie_word_embeddings
    generation = json.loads((folder / "generation_config.json").read_text())
    assert settings["chat_eos_token_id"] in generation["eos_token_id"]
    assert (folder / "chat_template.jinja").read_text() == chat_template(settings["template"])
    assert json.loads((folder / "conversion.json").read_text())["source"] == str(FIXTURES / backbone)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_templates_render_as_internvls_conversation_templates(name):
    from transformers.utils.chat_template_utils import _compile_jinja_template

    template = _compile_jinja_template(chat_template(name))
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]}
    question = ("user", "<IMG_CONTEXT>\nWhat is this?")
    assert template.render(messages=[user], add_generation_prompt=True) == \
        render_original(name, [question, ("assistant", None)])
    assert template.render(messages=[user, answer, user, answer]) == \
        render_original(name, [question, ("assistant", "A red circle."), question, ("assistant", "A red circle.")])
    system = {"role": "system", "content": "Be brief."}
    assert template.render(messages=[system, user], add_generation_prompt=True) == \
        render_original(name, [question, ("assistant", None)], system="Be brief.")


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in weight_files(folder):
        with safe_open(path, "pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


@pytest.mark.parametrize("backbone", BACKBONES)
def test_original_to_native_to_original_keeps_every_tensor(converted, backbone, tmp_path):
    exported = tmp_path / "original"
    export_original_layout(converted(backbone), FIXTURES / backbone, exported)
    before, after = _tensors(FIXTURES / backbone), _tensors(exported)
    assert sorted(after) == sorted(before)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    assert (exported / "config.json").read_bytes() == (FIXTURES / backbone / "config.json").read_bytes()


# --- Refused at parse time -----------------------------------------------------------------------------

def _variant(tmp_path: Path, change=None, extra_tensor: str | None = None) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(FIXTURES / "qwen2", folder)
    if change:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
    if extra_tensor:
        save_file({extra_tensor: torch.zeros(2)}, folder / "model-router.safetensors")
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        index["weight_map"][extra_tensor] = "model-router.safetensors"
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("change, extra_tensor, found", [
    (lambda c: c["llm_config"].update(architectures=["MistralForCausalLM"]), None, "'MistralForCausalLM'"),
    (lambda c: c["llm_config"].update(architectures=["InternLM3ForCausalLM"]), None, "InternVL3-9B-hf"),
    (lambda c: c.update(ps_version="v1"), None, "ps_version 'v1'"),
    (lambda c: c.update(use_thumbnail=False), None, "use_thumbnail false"),
    (lambda c: c["vision_config"].update(use_mean_pooling=False), None, "use_mean_pooling false"),
    (lambda c: c.update(template="vicuna_v1.1"), None, "template 'vicuna_v1.1'"),
    (None, "mlp2.0.weight", "(mlp2: a resolution router"),
    (lambda c: c["auto_map"].update(AutoModel="modeling_internvl_chat_hico2.InternVLChatModel"), None,
     "snakemake --cores N export"),
], ids=["backbone", "internlm3", "ps_version", "thumbnail", "mean_pooling", "template", "flash_router", "internvideo2_5"])
def test_unsupported_checkpoints_are_refused_naming_key_finding_and_support(tmp_path, change, extra_tensor, found):
    folder = _variant(tmp_path, change, extra_tensor)
    with pytest.raises(ConfigError) as error:
        check_model_folder(folder, "models.mine.path", "my.yaml")
    message = str(error.value)
    assert "models.mine.path" in message and found in message and "my.yaml" in message, message
    assert "Qwen2ForCausalLM (InternVL2-1B" in message  # what is supported, by name


def test_a_supported_original_folder_passes_the_parse_time_check(tmp_path):
    check_model_folder(_variant(tmp_path), "models.mine.path")


# --- Cached conversion -------------------------------------------------------------------------------

def test_folder_fingerprint_rereads_only_changed_files_and_follows_contents(tmp_path):
    folder = _variant(tmp_path)
    cache = tmp_path / "cache.json"
    first = folder_fingerprint(folder, cache)
    for path in folder.iterdir():  # touched, same bytes
        os.utime(path)
    assert folder_fingerprint(folder, cache) == first
    shard = weight_files(folder)[0]
    # Same size and time, other bytes: the cached hash is used, so the file was not read again.
    stat, data = shard.stat(), bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder_fingerprint(folder, cache) == first
    os.utime(shard)  # now its time says it changed: read again, and the new bytes count
    assert folder_fingerprint(folder, cache) != first
    (folder / "README.md").write_text("notes")  # docs and Python code are not contents
    (folder / "modeling_internvl_chat.py").write_text("# code")
    assert folder_fingerprint(folder, cache) == folder_fingerprint(folder, tmp_path / "fresh.json")


@pytest.mark.integration
def test_train_all_on_an_original_folder_converts_once_and_merges_back(tmp_path):
    """The qwen2 fixture given by path: converted, trained, merged (also in the original layout), predicted
    and scored; touched files convert nothing again, a changed weight file converts again."""
    source = tmp_path / "InternVL-tiny"
    shutil.copytree(FIXTURES / "qwen2", source)
    config = quick_config()
    config["datasets"]["demo"]["shards"] = 1
    config["models"] = {"internvl": {"path": str(source)}}
    config["runs"]["demo"]["model"] = "internvl"
    workflow = Workflow(tmp_path / "work", config)
    result = workflow.snakemake("train_all")
    assert executed_jobs(result)["convert_model"] == 1
    final = json.loads(workflow.path("results/runs/demo/train/final/vidtune.json").read_text())
    assert final["base_model_original"] == str(source) and final["base_model"] == "results/models/internvl"
    merged = workflow.path("results/runs/demo/merged")
    check = json.loads((merged / "merge_check.json").read_text())
    assert check["passed"] and check["original_layout"]["tensors"] == len(_tensors(source))
    exported = _tensors(merged / "original_layout")
    assert {name: tensor.shape for name, tensor in exported.items()} == \
        {name: tensor.shape for name, tensor in _tensors(source).items()}
    assert (merged / "original_layout" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert str(source) in workflow.path("results/runs/demo/report/config.html").read_text()
    assert json.loads(workflow.path("results/runs/demo/metrics.json").read_text())["finetuned"]

    for path in source.iterdir():
        os.utime(path)
    assert workflow.planned_jobs("train_all") == {}
    index = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    name = next(name for name in sorted(index) if name.startswith("mlp1."))
    shard = source / index[name]
    tensors = load_file(shard)
    tensors[name] = tensors[name] + 1
    save_file(tensors, shard, metadata={"format": "pt"})
    planned = workflow.planned_jobs("train_all")
    assert planned.get("convert_model") == 1 and planned.get("train") == 1, planned
