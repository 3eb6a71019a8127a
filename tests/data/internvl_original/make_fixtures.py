"""Build tiny InternVL checkpoints in InternVL's original layout, with reference logits from InternVL's own code.

Test data only: this script is not imported by vidtune or its tests. It imports InternVL's released model code
from a checkout given on the command line (never copied into this project) and must run in the fixture
environment described in README.md (transformers 4.37.2 for the `internvl_chat` code, 4.55.0 for the
`internvl_chat_gpt_oss` code that builds the Qwen3, Qwen3-MoE and GPT-OSS backbones).

    python make_fixtures.py /path/to/InternVL [backbone ...]

Each fixture folder holds what a Hub folder of that family holds, less its .py files: config.json (with the
Hub's auto_map), sharded or single safetensors weights under the original names, generation_config.json, the
tokenizer files, plus reference.safetensors (input_ids, attention_mask, image_flags, logits) and reference.json;
the image (../image.png) and its pixel values (../pixel_values_SIZE.safetensors) are shared by all fixtures. The reference is computed by loading
the written folder the way a user does (`AutoModel.from_pretrained(..., trust_remote_code=True)` on a temporary
copy with InternVL's .py files added), running `chat()`'s own prompt building and the README's `load_image`.
"""
import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

HERE = Path(__file__).resolve().parent
IMG_TOKENS = ['<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>', '</box>']
QUESTION = '<image>\nDescribe the image.'
TEST_STRINGS = [
    'Hello world! The quick brown fox jumps over the lazy dog.',
    'Ünïcödé: 世界你好, naïve café — 🙂',
    '<img><IMG_CONTEXT><IMG_CONTEXT></img>\nDescribe the image.',
]
VIT_300M_STYLE = dict(qkv_bias=True, qk_normalization=False, norm_type='layer_norm')
VIT_6B_STYLE = dict(qkv_bias=False, qk_normalization=True, norm_type='rms_norm')

# ---------------------------------------------------------------------------------------------------------------
# The backbones: the llm_config keys of the real checkpoint family at tiny sizes, its template and tokenizer kind.
# ---------------------------------------------------------------------------------------------------------------
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64)

BACKBONES = {
    # InternVL2.5-1B / InternVL3-1B..14B: Qwen2.5 (Hermes-2 for InternVL2-1B, internvl2_5 for 2.5 and 3).
    'qwen2': dict(
        code='internvl_chat', template='internvl2_5', tokenizer='qwen2', vit=VIT_300M_STYLE,
        image_size=56, patch_size=14, shards=2, seed=1,
        llm=dict(architectures=['Qwen2ForCausalLM'], model_type='qwen2', hidden_act='silu',
                 max_position_embeddings=32768, max_window_layers=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
                 sliding_window=32768, use_sliding_window=False, rope_scaling=None, attention_dropout=0.0,
                 torch_dtype='bfloat16', use_cache=True, **SMALL)),
    # InternVL2-2B/8B/26B, InternVL2.5-2B/8B/26B: InternLM2 / InternLM2.5 (remote code, packed wqkv).
    'internlm2': dict(
        code='internvl_chat', template='internlm2-chat', tokenizer='internlm2', vit=VIT_6B_STYLE,
        image_size=56, patch_size=14, shards=2, seed=2,
        llm=dict(architectures=['InternLM2ForCausalLM'], model_type='internlm2', hidden_act='silu',
                 max_position_embeddings=32768, rope_theta=1000000, rms_norm_eps=1e-5, bias=False,
                 rope_scaling={'type': 'dynamic', 'factor': 2.0}, attn_implementation='eager',
                 torch_dtype='bfloat16', use_cache=True,
                 auto_map={'AutoConfig': 'configuration_internlm2.InternLM2Config',
                           'AutoModel': 'modeling_internlm2.InternLM2ForCausalLM',
                           'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM'},
                 **SMALL)),
    # InternVL2-Llama3-76B (Hermes-2-Theta-Llama-3-70B: Llama-3 tokenizer with ChatML tokens), internlm2-chat.
    'llama': dict(
        code='internvl_chat', template='internlm2-chat', tokenizer='llama3', vit=VIT_300M_STYLE,
        image_size=56, patch_size=14, shards=1, seed=3,
        llm=dict(architectures=['LlamaForCausalLM'], model_type='llama', hidden_act='silu',
                 max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, attention_bias=False,
                 rope_scaling=None, pretraining_tp=1, torch_dtype='bfloat16', use_cache=True, **SMALL)),
    # InternVL2-4B / Mini-InternVL-Chat-4B-V1-5: Phi-3-mini-128k (remote code, fused qkv/gate_up, 'su' rope).
    'phi3': dict(
        code='internvl_chat', template='phi3-chat', tokenizer='phi3', vit=VIT_300M_STYLE,
        image_size=56, patch_size=14, shards=1, seed=4,
        llm=dict(architectures=['Phi3ForCausalLM'], model_type='phi3', hidden_act='silu',
                 max_position_embeddings=131072, original_max_position_embeddings=4096, rope_theta=10000.0,
                 rms_norm_eps=1e-5, sliding_window=262144, embd_pdrop=0.0, resid_pdrop=0.0,
                 attention_dropout=0.0, torch_dtype='bfloat16', use_cache=True,
                 auto_map={'AutoConfig': 'configuration_phi3.Phi3Config',
                           'AutoModelForCausalLM': 'modeling_phi3.Phi3ForCausalLM'},
                 **{**SMALL, 'num_key_value_heads': 4})),
    # InternVL3.5-1B..4B: Qwen3 with an explicit head_dim and q/k norms; tied like Qwen3-0.6B..4B.
    'qwen3': dict(
        code='internvl_chat_gpt_oss', template='internvl2_5', tokenizer='qwen2', vit=VIT_300M_STYLE,
        image_size=56, patch_size=14, shards=2, seed=5, tied=True,
        llm=dict(architectures=['Qwen3ForCausalLM'], model_type='qwen3', hidden_act='silu', head_dim=32,
                 max_position_embeddings=40960, max_window_layers=2, rope_theta=1000000, rms_norm_eps=1e-6,
                 sliding_window=None, use_sliding_window=False, rope_scaling=None, attention_bias=False,
                 attention_dropout=0.0, torch_dtype='bfloat16', use_cache=True, tie_word_embeddings=True,
                 **SMALL)),
    # InternVL3.5-30B-A3B: Qwen3-MoE, untied.
    'qwen3_moe': dict(
        code='internvl_chat_gpt_oss', template='internvl2_5', tokenizer='qwen2', vit=VIT_300M_STYLE,
        image_size=56, patch_size=14, shards=1, seed=6,
        llm=dict(architectures=['Qwen3MoeForCausalLM'], model_type='qwen3_moe', hidden_act='silu', head_dim=16,
                 max_position_embeddings=40960, max_window_layers=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
                 sliding_window=None, use_sliding_window=False, rope_scaling=None, attention_bias=False,
                 attention_dropout=0.0, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                 decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, output_router_logits=False,
                 router_aux_loss_coef=0.001, torch_dtype='bfloat16', use_cache=True, tie_word_embeddings=False,
                 **SMALL)),
    # InternVL3.5-GPT-OSS-20B-A4B-Preview: GPT-OSS (attention sinks, sliding/full layers, MoE), untied.
    'gpt_oss': dict(
        code='internvl_chat_gpt_oss', template='internvl3_5_gpt_oss', tokenizer='gpt_oss', vit=VIT_300M_STYLE,
        image_size=56, patch_size=14, shards=1, seed=8,
        llm=dict(architectures=['GptOssForCausalLM'], model_type='gpt_oss', hidden_act='silu', head_dim=16,
                 max_position_embeddings=131072, initial_context_length=4096, rope_theta=150000,
                 rope_scaling={'rope_type': 'yarn', 'factor': 32.0, 'beta_fast': 32.0, 'beta_slow': 1.0,
                               'truncate': False, 'original_max_position_embeddings': 4096},
                 rms_norm_eps=1e-5, sliding_window=16, layer_types=['sliding_attention', 'full_attention'],
                 attention_bias=True, attention_dropout=0.0, num_local_experts=4, num_experts_per_tok=2,
                 experts_per_token=2, router_aux_loss_coef=0.9, output_router_logits=False, swiglu_limit=7.0,
                 torch_dtype='bfloat16', use_cache=True, tie_word_embeddings=False,
                 **{**SMALL, 'intermediate_size': 64})),
}

# ---------------------------------------------------------------------------------------------------------------
# InternVL's .py files as a Hub folder carries them (flat, relative imports).
# ---------------------------------------------------------------------------------------------------------------


def code_files(checkout, code):
    """Map file name -> source text of InternVL's model code, rewritten to a Hub folder's flat relative imports."""
    checkout = Path(checkout)
    if code == 'internvl_chat':
        base = checkout / 'internvl_chat' / 'internvl'
        paths = [*(base / 'model' / 'internvl_chat').glob('*.py'), base / 'conversation.py',
                 *(base / 'model' / 'internlm2').glob('*.py'), *(base / 'model' / 'phi3').glob('*.py')]
    else:
        paths = list((checkout / 'internvl_chat_gpt_oss' / 'internvl' / 'model' / 'internvl_chat').glob('*.py'))
    files = {}
    for path in paths:
        if path.name == '__init__.py':
            continue
        text = path.read_text()
        text = re.sub(r'from internvl\.model\.(internlm2|phi3)\.(\w+) import', r'from .\2 import', text)
        text = text.replace('from internvl.conversation import', 'from .conversation import')
        files[path.name] = text
    if not files:
        sys.exit(f'no InternVL model code found under {checkout} for {code}: pass the InternVL checkout root')
    return files


def hub_copy(folder, checkout, code):
    """A temporary copy of `folder` with InternVL's .py files beside it, as the Hub folder has them."""
    tmp = Path(tempfile.mkdtemp(prefix='internvl_hub_'))
    for item in Path(folder).iterdir():
        if item.is_file():
            shutil.copy(item, tmp / item.name)
    for name, text in code_files(checkout, code).items():
        (tmp / name).write_text(text)
    return tmp


def remote_class(folder, ref):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    return get_class_from_dynamic_module(ref, str(folder))


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers: the real kind with the real special tokens, trained on a tiny corpus.
# ---------------------------------------------------------------------------------------------------------------


def corpus(checkout):
    """Prompt text the fixtures tokenize (templates, system prompts, question, test strings) plus filler."""
    lines = [*TEST_STRINGS, 'Describe the image.', 'The image shows a colourful striped pattern.',
             'user assistant system message end return start channel final analysis']
    for template in ('Hermes-2', 'internlm2-chat', 'phi3-chat', 'internvl2_5'):
        lines.append(_conv_module(checkout, 'internvl_chat').get_conv_template(template).system_message)
    lines.append(_conv_module(checkout, 'internvl_chat_gpt_oss').get_conv_template(
        'internvl3_5_gpt_oss').system_message)
    return [line for line in lines for _ in range(20)]


_CONV = {}


def _conv_module(checkout, code):
    if code not in _CONV:
        import importlib.util
        path = (Path(checkout) / 'internvl_chat/internvl/conversation.py' if code == 'internvl_chat' else
                Path(checkout) / 'internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py')
        spec = importlib.util.spec_from_file_location(f'_conv_{code}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _CONV[code] = module
    return _CONV[code]


QWEN_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|object_ref_end|>',
                 '<|box_start|>', '<|box_end|>', '<|quad_start|>', '<|quad_end|>', '<|vision_start|>',
                 '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>', '<|video_pad|>', '<tool_call>',
                 '</tool_call>']
LLAMA3_SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|im_start|>', '<|im_end|>',
                   '<|reserved_special_token_0|>', '<|reserved_special_token_1|>', '<|finetune_right_pad_id|>',
                   '<|reserved_special_token_2|>', '<|start_header_id|>', '<|end_header_id|>', '<|eom_id|>',
                   '<|eot_id|>', '<|python_tag|>']
GPT_OSS_SPECIALS = ['<|startoftext|>', '<|endoftext|>', '<|reserved_200000|>', '<|reserved_200001|>', '<|return|>',
                    '<|constrain|>', '<|reserved_200004|>', '<|channel|>', '<|start|>', '<|end|>', '<|message|>',
                    '<|reserved_200009|>', '<|reserved_200010|>', '<|reserved_200011|>', '<|call|>']
PHI3_SPECIALS = ['<|endoftext|>', '<|assistant|>', '<|placeholder1|>', '<|placeholder2|>', '<|placeholder3|>',
                 '<|placeholder4|>', '<|system|>', '<|end|>', '<|placeholder5|>', '<|placeholder6|>', '<|user|>']
INTERNLM2_CHAT = ['<|plugin|>', '<|interpreter|>', '<|action_end|>', '<|action_start|>', '<|im_end|>',
                  '<|im_start|>']
QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
O200K_REGEX = '|'.join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"])


def byte_level_bpe(lines, regex, merges):
    """A byte-level BPE (tokenizers) with the family's pre-tokenizer regex and `merges` learnt merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def sentencepiece_model(lines, path, user_defined, vocab_size):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(path.with_suffix('')), model_type='bpe',
        vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0, user_defined_symbols=user_defined,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name='identity', num_threads=1)
    from transformers.convert_slow_tokenizer import import_protobuf  # the proto module transformers registers
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(path.read_bytes())
    proto.trainer_spec.model_prefix = 'tokenizer'  # not the temporary path, so a rebuild gives the same bytes
    path.write_bytes(proto.SerializeToString())
    return path


def build_tokenizer(kind, out, lines, hub):
    """Write the tokenizer files of `kind` into `out` (and `hub`, the folder with .py files). Returns extra
    tokenizer_config keys that the Hub folders carry."""
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix='tok_'))
    if kind == 'qwen2':
        bpe = byte_level_bpe(lines, QWEN_REGEX, 100)
        bpe.model.save(str(work))
        tok = transformers.Qwen2Tokenizer(work / 'vocab.json', work / 'merges.txt', unk_token=None,
                                          bos_token=None, eos_token=None, pad_token=None, errors='replace')
        tok.add_tokens(QWEN_SPECIALS, special_tokens=True)
        tok.add_tokens(IMG_TOKENS, special_tokens=True)
        tok.eos_token, tok.pad_token = '<|im_end|>', '<|endoftext|>'
        tok.model_max_length = 8192
        tok.save_pretrained(out)
        patch = {'tokenizer_class': 'Qwen2Tokenizer'}
    elif kind in ('llama3', 'gpt_oss'):
        from tokenizers import processors
        specials = LLAMA3_SPECIALS if kind == 'llama3' else GPT_OSS_SPECIALS
        bpe = byte_level_bpe(lines, LLAMA3_REGEX if kind == 'llama3' else O200K_REGEX, 100)
        bpe.add_special_tokens(specials)
        if kind == 'llama3':  # Llama-3 prepends <|begin_of_text|> in its post-processor; GPT-OSS adds nothing
            bos = bpe.token_to_id('<|begin_of_text|>')
            bpe.post_processor = processors.TemplateProcessing(
                single='<|begin_of_text|> $A', pair='<|begin_of_text|> $A <|begin_of_text|> $B:1',
                special_tokens=[('<|begin_of_text|>', bos)])
        else:
            bpe.post_processor = processors.ByteLevel(trim_offsets=False)
        names = (dict(bos_token='<|begin_of_text|>', eos_token='<|im_end|>') if kind == 'llama3' else
                 dict(bos_token='<|startoftext|>', eos_token='<|return|>', pad_token='<|endoftext|>'))
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=131072,
                                                   clean_up_tokenization_spaces=True, **names)
        tok.add_tokens(IMG_TOKENS, special_tokens=True)
        tok.save_pretrained(out)
        patch = {'tokenizer_class': 'PreTrainedTokenizerFast'}
    elif kind == 'internlm2':
        model = sentencepiece_model(lines, work / 'tokenizer.model', INTERNLM2_CHAT, 420)
        cls = remote_class(hub, 'tokenization_internlm2.InternLM2Tokenizer')
        tok = cls(vocab_file=str(model))
        tok.add_tokens(INTERNLM2_CHAT, special_tokens=True)
        tok.add_tokens(IMG_TOKENS, special_tokens=True)
        tok.eos_token = '</s>'
        tok.model_max_length = 8192
        tok.save_pretrained(out)
        patch = {'tokenizer_class': 'InternLM2Tokenizer',
                 'auto_map': {'AutoTokenizer': ['tokenization_internlm2.InternLM2Tokenizer', None]}}
    elif kind == 'phi3':
        model = sentencepiece_model(lines, work / 'tokenizer.model', [], 400)
        tok = transformers.LlamaTokenizer(vocab_file=str(model), legacy=False, add_bos_token=True,
                                          add_eos_token=False, pad_token='<|endoftext|>')
        tok.add_tokens(PHI3_SPECIALS, special_tokens=True)
        tok.add_tokens(IMG_TOKENS, special_tokens=True)
        tok.eos_token = '<|endoftext|>'
        tok.model_max_length = 131072
        tok.save_pretrained(out)
        patch = {'tokenizer_class': 'LlamaTokenizer'}
    else:
        raise ValueError(kind)
    config_path = out / 'tokenizer_config.json'
    config = json.loads(config_path.read_text())
    config.update(patch)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + '\n')
    for item in out.glob('*.py'):  # a remote-code tokenizer saves its own code: a Hub folder has it, we do not
        item.unlink()
    for item in out.iterdir():
        if item.name.startswith(('tokenizer', 'vocab', 'merges', 'added_tokens', 'special_tokens')):
            shutil.copy(item, Path(hub) / item.name)
    shutil.rmtree(work)
    return tok


# ---------------------------------------------------------------------------------------------------------------
# Model: InternVL's own config and model classes, seeded weights, written as the Hub writes them.
# ---------------------------------------------------------------------------------------------------------------


def fill_weights(model, seed):
    """Seeded weights with logits far from 0: matrices ~ N(0, 1/fan_in), norms ~ 1, values rounded to bf16 so
    the bf16 files hold exactly the values the fp32 reference used."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            shape = param.shape
            if ('norm' in name or name.endswith(('ls1', 'ls2', 'mlp1.0.weight'))) and len(shape) == 1:
                value = 1.0 + 0.2 * torch.randn(shape, generator=gen)
            elif len(shape) == 1:
                value = 0.1 * torch.randn(shape, generator=gen)
            elif 'patch_embedding' in name:
                value = torch.randn(shape, generator=gen) / math.sqrt(np.prod(shape[1:]))
            elif 'embed' in name or name.endswith(('class_embedding', 'position_embedding')):
                value = torch.randn(shape, generator=gen)
            else:
                value = torch.randn(shape, generator=gen) / math.sqrt(shape[-1] if len(shape) == 2 else
                                                                      np.prod(shape[1:]))
                if 'experts' in name and len(shape) == 3:  # GPT-OSS packs experts as [E, in, out]
                    value = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
            param.copy_(value.to(torch.bfloat16).to(param.dtype))


def make_image(path):
    """A deterministic non-square RGB pattern (130 x 70: aspect 1.86, tiled as 2 x 1 plus the thumbnail with
    max_dynamic_patch 6): gradients plus a checkerboard, so every tile differs."""
    y, x = np.mgrid[0:70, 0:130]
    rgb = np.stack([(x * 255 // 129), (y * 255 // 69), ((x // 10 + y // 10) % 2) * 200 + 25], -1)
    Image.fromarray(rgb.astype(np.uint8), 'RGB').save(path)


def tutorial_functions(checkout):
    """build_transform / dynamic_preprocess / load_image exactly as InternVL's README gives them."""
    readme = (Path(checkout) / 'internvl_chat' / 'README.md').read_text()
    start = readme.index('IMAGENET_MEAN = (0.485, 0.456, 0.406)')
    end = readme.index('\n# If you want to load a model using multiple GPUs', start)
    namespace = {}
    exec('import torch\nimport torchvision.transforms as T\nfrom PIL import Image\n'
         'from torchvision.transforms.functional import InterpolationMode\n' + readme[start:end], namespace)
    return namespace


def write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + '\n')


def build(name, checkout, out_root):
    spec = BACKBONES[name]
    want = '4.37.2' if spec['code'] == 'internvl_chat' else '4.55.0'
    if transformers.__version__ != want:
        sys.exit(f'{name}: InternVL code {spec["code"]} needs transformers {want}; this env has '
                 f'{transformers.__version__} (see README.md)')
    out = Path(out_root) / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    hub = hub_copy(out, checkout, spec['code'])

    tok = build_tokenizer(spec['tokenizer'], out, corpus(checkout), hub)
    conv = _conv_module(checkout, spec['code']).get_conv_template(spec['template'])
    llm = dict(spec['llm'])
    llm['vocab_size'] = (len(tok) + 15) // 16 * 16 + 16  # padded past the tokenizer, as the real ones are
    ids = tok.convert_tokens_to_ids
    llm['bos_token_id'] = tok.bos_token_id
    llm['eos_token_id'] = tok.eos_token_id
    llm['pad_token_id'] = tok.pad_token_id
    if spec['llm']['model_type'] == 'phi3':  # su scaling with non-trivial factors (head_dim / 2 each)
        half = SMALL['hidden_size'] // SMALL['num_attention_heads'] // 2
        llm['rope_scaling'] = {'type': 'su', 'short_factor': [round(1.0 + 0.1 * i, 2) for i in range(half)],
                               'long_factor': [2.0 + 0.5 * i for i in range(half)]}
    vision = dict(architectures=['InternVisionModel'], model_type='intern_vit_6b', hidden_size=16,
                  intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=spec['image_size'],
                  patch_size=spec['patch_size'], num_channels=3, hidden_act='gelu', layer_norm_eps=1e-6,
                  dropout=0.0, drop_path_rate=0.0, attention_dropout=0.0, initializer_range=0.02,
                  initializer_factor=0.1, use_flash_attn=False, torch_dtype='bfloat16', **spec['vit'])
    config_cls = remote_class(hub, 'configuration_internvl_chat.InternVLChatConfig')
    model_cls = remote_class(hub, 'modeling_internvl_chat.InternVLChatModel')
    config = config_cls(vision_config=vision, llm_config=llm, template=spec['template'], ps_version='v2',
                        downsample_ratio=0.5, select_layer=-1, dynamic_image_size=True, use_thumbnail=True,
                        min_dynamic_patch=1, max_dynamic_patch=6, force_image_size=spec['image_size'],
                        pad2square=False, use_backbone_lora=0, use_llm_lora=0)
    config.architectures = ['InternVLChatModel']
    config.auto_map = {'AutoConfig': 'configuration_internvl_chat.InternVLChatConfig',
                       'AutoModel': 'modeling_internvl_chat.InternVLChatModel',
                       'AutoModelForCausalLM': 'modeling_internvl_chat.InternVLChatModel'}
    torch.manual_seed(spec['seed'])
    model = model_cls(config).float().eval()
    fill_weights(model, spec['seed'])
    if spec.get('tied'):  # one matrix is both embedding and head: scale it as a head so logits stay moderate
        embedding = model.language_model.get_input_embeddings().weight
        with torch.no_grad():
            embedding.copy_((embedding / 8).to(torch.bfloat16).to(embedding.dtype))
        model.language_model.tie_weights()
    tied = model.language_model.get_output_embeddings().weight is model.language_model.get_input_embeddings().weight
    assert tied == bool(spec.get('tied')), (name, tied)

    total = sum(t.numel() * 2 for t in model.state_dict().values())
    model.to(torch.bfloat16).save_pretrained(
        out, safe_serialization=True, max_shard_size=(total * 6 // 10 if spec['shards'] == 2 else total * 2))
    shards = sorted(out.glob('model*.safetensors'))
    assert len(shards) == spec['shards'], (name, [s.name for s in shards])
    # The Hub folders say what flash attention the vision tower may use; the LLM picks its own at load time.
    saved = json.loads((out / 'config.json').read_text())
    saved['vision_config']['use_flash_attn'] = True
    saved.pop('_commit_hash', None)
    saved['transformers_version'] = transformers.__version__
    write_json(out / 'config.json', saved)
    eos = [ids(conv.sep.strip())] + ([tok.eos_token_id] if tok.eos_token_id != ids(conv.sep.strip()) else [])
    write_json(out / 'generation_config.json', {'_from_model_config': True, 'eos_token_id': eos,
                                                 'transformers_version': transformers.__version__})
    make_image(out.parent / 'image.png')
    shutil.rmtree(hub)
    reference(name, spec, checkout, out, tied=tied, shards=len(shards))


def reference(name, spec, checkout, out, tied, shards):
    """Load the written folder as a user does and record chat()'s inputs and the forward pass's fp32 logits."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoTokenizer
    hub = hub_copy(out, checkout, spec['code'])
    model = AutoModel.from_pretrained(hub, trust_remote_code=True, torch_dtype=torch.float32).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(hub, trust_remote_code=True, use_fast=False)
    tut = tutorial_functions(checkout)
    max_num = model.config.max_dynamic_patch
    pixel_values = tut['load_image'](out.parent / 'image.png', input_size=model.config.force_image_size,
                                     max_num=max_num)

    captured = {}

    def capture(pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        captured.update(input_ids=input_ids, attention_mask=attention_mask)
        return torch.zeros((1, 1), dtype=torch.long)

    model.generate = capture
    model.chat(tokenizer, pixel_values, QUESTION, dict(max_new_tokens=1, do_sample=False))
    input_ids, attention_mask = captured['input_ids'], captured['attention_mask']

    conv = sys.modules[type(model).__module__].get_conv_template(model.template)
    conv.system_message = model.system_message
    conv.append_message(conv.roles[0], QUESTION)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    num_patches = pixel_values.shape[0]
    query = prompt.replace('<image>', '<img>' + '<IMG_CONTEXT>' * model.num_image_token * num_patches + '</img>', 1)
    assert tokenizer(query, return_tensors='pt').input_ids.tolist() == input_ids.tolist(), name

    image_flags = torch.ones((num_patches, 1), dtype=torch.long)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                       image_flags=image_flags, return_dict=True).logits.float()
    assert logits.abs().max() > 1.0, f'{name}: logits too close to 0'
    # Every fixture of one image size shares the image's pixel values (one file, to keep the fixtures small).
    pixel_file = out.parent / f'pixel_values_{model.config.force_image_size}.safetensors'
    if pixel_file.exists():
        assert torch.equal(load_file(pixel_file)['pixel_values'], pixel_values), pixel_file
    else:
        save_file({'pixel_values': pixel_values.contiguous()}, pixel_file)
    # Logits from the <img> token on (every later position depends on the vision tower, the projector and
    # all earlier text positions), to keep the fixtures small; reference.json says where they start.
    logits_start = input_ids[0].tolist().index(tokenizer.convert_tokens_to_ids('<img>'))
    save_file({'input_ids': input_ids.contiguous(), 'attention_mask': attention_mask.contiguous(),
               'image_flags': image_flags, 'logits': logits[:, logits_start:].contiguous()},
              out / 'reference.safetensors')
    # chat()'s eos: the template's sep (internvl_chat code), sep2 where the template has one (gpt_oss code)
    sep = conv.sep2.strip() if spec['code'] == 'internvl_chat_gpt_oss' and conv.sep2 is not None else conv.sep.strip()
    write_json(out / 'reference.json', {
        'backbone': name,
        'llm_architecture': model.config.llm_config.architectures[0],
        'internvl_code': spec['code'],
        'transformers_version': transformers.__version__,
        'template': model.template,
        'system_message': model.system_message,
        'question': QUESTION,
        'image': '../image.png',
        'pixel_values': f'../{pixel_file.name}',
        'prompt': prompt,
        'query': query,
        'num_patches': num_patches,
        'num_image_token': model.num_image_token,
        'max_dynamic_patch': max_num,
        'image_size': model.config.force_image_size,
        'img_context_token_id': model.img_context_token_id,
        'chat_eos_token': sep,
        'chat_eos_token_id': tokenizer.convert_tokens_to_ids(sep),
        'tokenizer_eos_token_id': tokenizer.eos_token_id,
        'tokenizer_bos_token_id': tokenizer.bos_token_id,
        'tokenizer_class': type(tokenizer).__name__,
        'tie_word_embeddings': tied,
        'shards': shards,
        'tokenizer_tests': [{'text': text, 'ids': tokenizer(text).input_ids,
                             'ids_no_special': tokenizer(text, add_special_tokens=False).input_ids}
                            for text in TEST_STRINGS],
        'logits_start': logits_start,
        'logits_max_abs': float(logits.abs().max()),
    })
    shutil.rmtree(hub)
    print(f'{name}: {num_patches} patches, {input_ids.shape[1]} tokens, vocab {logits.shape[-1]}, tied={tied}, '
          f'shards={shards}, |logits|max={float(logits.abs().max()):.2f}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkout', help='root of an InternVL checkout (has internvl_chat/ and internvl_chat_gpt_oss/)')
    parser.add_argument('backbones', nargs='*', default=None, help=f'default: all of {", ".join(BACKBONES)} that '
                        'this environment\'s transformers version builds')
    parser.add_argument('--out', default=str(HERE))
    args = parser.parse_args()
    names = args.backbones or [n for n, s in BACKBONES.items()
                               if (s['code'] == 'internvl_chat') == (transformers.__version__ == '4.37.2')]
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    for name in names:
        build(name, args.checkout, args.out)


if __name__ == '__main__':
    main()
