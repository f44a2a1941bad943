"""Chat templates: the ones `data.chat_template` names, and a Jinja equivalent of a format file.

A model without a chat template (OPT, GPT-J, Pythia, RWKV, LLaMA-1 bases) can still learn chats: `data.chat_template`
picks one of these (or a `.jinja` file), and the choice becomes part of the run's prompt contract, so generation,
serving and the merged model use the same text. Every template here renders a chat by appending turns (what
masking needs) and ends each assistant turn with its end-of-turn text, so the model learns to stop.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from loratune.errors import LoratuneError


def _literal(text: str) -> str:
    """A Jinja string literal (Jinja reads backslash escapes as Python does; non-ASCII text stays as it is)."""
    return json.dumps(text, ensure_ascii=False)


# ChatML (Qwen, SmolLM, many fine-tunes): <|im_end|> ends every turn.
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# Llama 3's header / <|eot_id|> layout (BOS is left to data.add_bos, as for every template here).
LLAMA3 = (
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)
# Alpaca and Vicuna as their shipped format files lay a single turn out (a system message replaces the preamble);
# EOS ends each answer, as training appends it.
_PREAMBLE_CHAT = (
    "{%- if messages and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\\n\\n' }}"
    "{%- set turns = messages[1:] -%}{%- else -%}{{ @PREAMBLE@ }}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ ('' if loop.first else '\\n\\n') + @USER@ + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ @ASSISTANT@ + message['content'] + (eos_token or '') }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ @ASSISTANT@ }}{%- endif -%}"
)


def _preamble_chat(preamble: str, user: str, assistant: str) -> str:
    text = _PREAMBLE_CHAT.replace("@PREAMBLE@", _literal(preamble)).replace("@USER@", _literal(user))
    return text.replace("@ASSISTANT@", _literal(assistant))


ALPACA = _preamble_chat(
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
    "### Instruction:\n",
    "### Response:\n",
)
VICUNA = _preamble_chat(
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions.\n\n",
    "USER: ",
    "ASSISTANT: ",
)
NAMED = {"chatml": CHATML, "llama3": LLAMA3, "alpaca": ALPACA, "vicuna": VICUNA}


def resolve_chat_template(option: str, tokenizer) -> str | None:
    """The Jinja text `data.chat_template` stands for: 'auto' is the tokenizer's own (None when it has none)."""
    if option in ("", "auto"):
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: the default one renders chats
            own = own.get("default")
        return own or None
    if option in NAMED:
        return NAMED[option]
    path = Path(option).expanduser()
    if path.suffix == ".jinja":
        if not path.is_file():
            raise LoratuneError(f"data.chat_template: {path} not found")
        return path.read_text(encoding="utf-8")
    raise LoratuneError(f"data.chat_template {option!r}: use auto, {', '.join(NAMED)} or the path of a .jinja file")


def format_to_jinja(templates: dict[str, str], response_key: str, prompt_key: str, eos: str | None) -> str:
    """A chat template that renders what the format file renders: each user turn through the format's prompt
    (the `prompt_key` key set, or `system,prompt_key` after a system message), each assistant turn as the response
    followed by EOS. So plain transformers' apply_chat_template gives a format-trained adapter its exact prompt."""
    plain = _key_set(templates, {prompt_key, response_key})
    with_system = _key_set(templates, {"system", prompt_key, response_key})

    def prompt_part(template: str) -> str:
        cut = template.rfind(f"%{response_key}%")
        pieces = []
        for i, piece in enumerate(re.split(r"%([A-Za-z0-9_]+)%", template[:cut])):
            if i % 2 == 0:
                pieces.append(_literal(piece) if piece else "")
            else:
                pieces.append({prompt_key: "message['content']", "system": "ns.system"}[piece])
        return " + ".join(p for p in pieces if p) or "''"

    no_system = "{{ raise_exception('this format has no system prompt') }}"
    system_turn = f"{{{{ {prompt_part(with_system)} }}}}" if with_system else no_system
    end = f" + {_literal(eos)}" if eos else ""
    return (
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
        "{%- elif message['role'] == 'user' -%}"
        f"{{%- if ns.system -%}}{system_turn}{{%- set ns.system = '' -%}}"
        f"{{%- else -%}}{{{{ {prompt_part(plain)} }}}}{{%- endif -%}}"
        f"{{%- elif message['role'] == 'assistant' -%}}{{{{ message['content']{end} }}}}"
        "{%- endif -%}{%- endfor -%}"
    )


def _key_set(templates: dict[str, str], keys: set[str]) -> str | None:
    return next((t for k, t in templates.items() if {p.strip() for p in k.split(",")} == keys), None)
