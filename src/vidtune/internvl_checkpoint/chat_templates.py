"""InternVL's conversation templates (its ``conversation.py``, named by a checkpoint's ``template``) as chat
templates, so the native folder renders a conversation exactly as the original model's ``chat()`` and
InternVL's finetuning did: the template's system prompt (unless the conversation brings its own), its role
headers and separators, images as ``<IMG_CONTEXT>`` lines that the processor expands to
``<img><IMG_CONTEXT>...</img>`` as InternVL does for ``<image>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

INTERNVL_SYSTEM = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
                   "多模态大语言模型。")
INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
GPT_OSS_SYSTEM = ("You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: "
                  "2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be "
                  "included for every message.")


@dataclass(frozen=True)
class ConversationStyle:
    """One of InternVL's templates: ``system_prefix + system + sep``, then ``role + message + sep`` per turn
    (``answer_end`` closes the last answer where the template has a second separator)."""

    system_prefix: str
    system: str
    user: str
    assistant: str
    sep: str
    answer_end: str | None = None

    @property
    def stop_token(self) -> str:
        """The token that ends an answer (InternVL's chat() stops generation on it)."""
        return (self.answer_end or self.sep).strip()


_IM = {"system_prefix": "<|im_start|>system\n", "user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}
TEMPLATES = {
    "internvl2_5": ConversationStyle(**_IM, system=INTERNVL_SYSTEM, sep="<|im_end|>\n"),
    "internlm2-chat": ConversationStyle(**_IM, system=INTERNVL2_SYSTEM, sep="<|im_end|>"),
    "Hermes-2": ConversationStyle(**_IM, system=INTERNVL2_SYSTEM, sep="<|im_end|>"),
    "phi3-chat": ConversationStyle(system_prefix="<|system|>\n", system=INTERNVL2_SYSTEM, user="<|user|>\n",
                                   assistant="<|assistant|>\n", sep="<|end|>"),
    "internvl3_5_gpt_oss": ConversationStyle(system_prefix="<|start|>system<|message|>", system=GPT_OSS_SYSTEM,
                                             user="<|start|>user<|message|>", assistant="<|start|>assistant",
                                             sep="<|end|>", answer_end="<|return|>"),
}


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def chat_template(name: str) -> str:
    """The Jinja chat template of InternVL's template ``name``."""
    style = TEMPLATES[name]
    last_end = style.answer_end or style.sep
    # The end-of-turn token belongs to the answer (it is learned); a newline after it does not.
    last_close, middle_close = last_end.rstrip(), style.sep.rstrip()
    last_tail, middle_tail = last_end[len(last_close):], style.sep[len(middle_close):]
    content = (
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
        "{%- elif part['type'] == 'video' -%}{{- '<video>\\n' -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}")
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] if messages[0]['content'] is string else "
        "messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
        "{%- set turns = messages[1:] -%}"
        f"{{%- else -%}}{{%- set system = {_literal(style.system)} -%}}{{%- set turns = messages -%}}{{%- endif -%}}"
        f"{{{{- {_literal(style.system_prefix)} + system + {_literal(style.sep)} -}}}}"
        "{%- for message in turns -%}"
        "{%- if message['role'] == 'assistant' -%}"
        f"{{{{- {_literal(style.assistant)} -}}}}"
        "{%- generation -%}" + content +
        f"{{{{- {_literal(last_close)} if loop.last else {_literal(middle_close)} -}}}}{{%- endgeneration -%}}"
        f"{{{{- {_literal(last_tail)} if loop.last else {_literal(middle_tail)} -}}}}"
        "{%- else -%}"
        f"{{{{- {_literal(style.user)} -}}}}" + content + f"{{{{- {_literal(style.sep)} -}}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {_literal(style.assistant)} -}}}}{{%- endif -%}}"
    )


def render_original(name: str, turns: list[tuple[str, str | None]], system: str | None = None) -> str:
    """A conversation as InternVL's own ``get_prompt`` renders it (``turns``: (role, text) with role user or
    assistant; None text = the generation prompt). Used to check :func:`chat_template` against it."""
    style = TEMPLATES[name]
    text = style.system_prefix + (style.system if system is None else system) + style.sep
    for index, (role, message) in enumerate(turns):
        header = style.user if role == "user" else style.assistant
        if message is None:
            text += header
        else:
            last_answer = role == "assistant" and index == len(turns) - 1 and style.answer_end
            text += header + message + (style.answer_end if last_answer else style.sep)
    return text
