"""Record shapes: which one a record has, and turning chat-like shapes into one list of messages.

- alpaca: instruction / input / output (optional system), or any key set of a format file;
- chat: `messages` (OpenAI style: content text or a list of text parts, system / tool turns, assistant tool_calls,
  a `tools` list beside);
- sharegpt: `conversations` of {from, value} (human / gpt / system, function_call / observation), optional
  `system` and `tools` beside;
- completion: `prompt` and `completion` (text: the prompt as it is; message lists: a chat);
- text: `text` alone, a raw text document;
- preference: `chosen` and `rejected` beside a `prompt` (text, or a chat history as a message list, the sides then
  message lists too: TRL's form) or alpaca keys (`instruction` / `input` / `system`: LLaMA-Factory's pairwise form);
  each side becomes a record of the shapes above (see `preference_sides`), for train.method dpo / ipo / simpo / orpo;
- kto: `prompt`, `completion` and a boolean `label` (desirable or not: TRL's unpaired form), the prompt text or a
  chat history, the completion text or message lists; one record of the shapes above (see `kto_side`), for
  train.method kto.
`data.columns` renames a file's columns to these names first.
"""

from __future__ import annotations

import json

from loratune.errors import LoratuneError

SHAPES = ("alpaca", "chat", "sharegpt", "completion", "text", "preference", "kto")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_call": "assistant",
}


def rename_columns(record: dict, columns: dict[str, str]) -> dict:
    """data.columns {shape name: the file's column}: the file's columns under the names the shapes use."""
    if not columns:
        return record
    renamed = dict(record)
    for name, column in columns.items():
        if column in record:
            renamed[name] = renamed.pop(column)
    return renamed


def shape_of(record: dict) -> str:
    if "chosen" in record and "rejected" in record:
        return "preference"
    if "label" in record and "completion" in record:
        return "kto"
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "prompt" in record and "completion" in record:
        return "completion"
    if "text" in record and not {"instruction", "output"} & set(record):
        return "text"
    return "alpaca"


def preference_sides(record: dict, where: str) -> tuple[dict, dict]:
    """A preference record's (chosen, rejected) as two instruction records that share the prompt (see `answer_of`)."""
    return answer_of(record, "chosen", where), answer_of(record, "rejected", where)


def kto_side(record: dict, where: str) -> tuple[dict, bool]:
    """A KTO record as an instruction record (see `answer_of`) and whether its completion is desirable. The label is
    a boolean; 0 / 1 and the texts true / false (a CSV column) are read as one."""
    label = record["label"]
    if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):
        label = label.strip().lower() in ("true", "1")
    elif isinstance(label, int) and label in (0, 1):  # bool is an int: True, False, 1, 0
        label = bool(label)
    else:
        raise LoratuneError(f"{where}: 'label' must be true (a desirable completion) or false, got {label!r}")
    return answer_of(record, "completion", where), label


def answer_of(record: dict, key: str, where: str) -> dict:
    """The answer under `key` with the record's prompt, as an instruction record: a prompt/completion record (a text
    prompt as it is, or a chat history with the answer as message lists) or an alpaca record."""
    value = record[key]
    if isinstance(value, list):  # message lists: the answer's turns after the history
        prompt = record.get("prompt", [])
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list):
            raise LoratuneError(f"{where}: 'prompt' must be text or a list of messages")
        return {"prompt": prompt, "completion": value} | _beside(record)
    if not isinstance(value, str):
        raise LoratuneError(f"{where}: '{key}' must be text or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise LoratuneError(f"{where}: '{key}' is empty; give it an answer or remove the record")
    if "prompt" in record:
        return {"prompt": record["prompt"], "completion": value}
    if "instruction" in record:
        return {k: record[k] for k in ("instruction", "input", "system") if k in record} | {"output": value}
    raise LoratuneError(f"{where}: a '{key}' needs a 'prompt' (or 'instruction') beside it")


def _beside(record: dict) -> dict:
    """What a chat side keeps of its record besides the messages (the tools the template renders)."""
    return {"tools": record["tools"]} if "tools" in record else {}


def text_of(record: dict, where: str) -> str:
    value = record["text"]
    if not isinstance(value, str):
        raise LoratuneError(f"{where}: 'text' must be text, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def completion_parts(record: dict, where: str) -> tuple[str, str] | list[dict]:
    """(prompt, completion) texts, or the chat they make when both are message lists (TRL's conversational form)."""
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        return prompt + completion
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str):
            raise LoratuneError(
                f"{where}: '{key}' must be text (or both prompt and completion lists of messages), "
                f"got {type(value).__name__}"
            )
    if not completion.strip():
        raise LoratuneError(f"{where}: 'completion' is empty; give it text or remove the record")
    return prompt, completion


def sharegpt_messages(record: dict, where: str) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise LoratuneError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} objects")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise LoratuneError(f"{where}: conversation turn {i} must be an object with 'from' and 'value'")
        if "role" in turn and "from" not in turn:  # some ShareGPT exports use the OpenAI names inside
            messages.append(turn)
            continue
        speaker, value = turn.get("from"), turn.get("value")
        if not isinstance(speaker, str) or not isinstance(value, str):
            raise LoratuneError(f"{where}: conversation turn {i} needs text 'from' and 'value'")
        role = SHAREGPT_ROLES.get(speaker.lower())
        if role is None:
            known = ", ".join(sorted(SHAREGPT_ROLES))
            raise LoratuneError(f"{where}: conversation turn {i} is from '{speaker}'; known speakers: {known}")
        if speaker.lower() == "function_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": [_function_call(value, where, i)]})
        else:
            messages.append({"role": role, "content": value})
    return messages


def _function_call(value: str, where: str, turn: int) -> dict:
    try:
        call = json.loads(value)
    except json.JSONDecodeError:
        call = None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise LoratuneError(f"{where}: conversation turn {turn} (function_call) must be JSON with a 'name'")
    return {"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments") or {}}}


def tools_of(record: dict, where: str) -> list[dict] | None:
    """The record's `tools` list (a JSON string of one too, as LLaMA-Factory stores it), None when it has none."""
    tools = record.get("tools")
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise LoratuneError(f"{where}: 'tools' is text but not JSON ({e.msg}); give a list of tools") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise LoratuneError(f"{where}: 'tools' must be a list of tool objects (OpenAI function schemas)")
    return tools


def check_messages(messages, where: str) -> list[dict]:
    """Messages as chat templates take them: content as text (text parts joined), tool_calls with dict arguments."""
    if not isinstance(messages, list) or not messages:
        raise LoratuneError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    checked = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise LoratuneError(f"{where}: message {i} needs text 'role' and 'content'")
        m = {k: v for k, v in m.items() if v is not None}  # Parquet / Arrow rows hold every struct field, some null
        if m.get("tool_calls"):
            m["tool_calls"] = [_tool_call(call, where, i) for call in _as_list(m["tool_calls"], where, i)]
            m.setdefault("content", "")
        else:
            m.pop("tool_calls", None)
        m["content"] = _content_text(m.get("content"), where, i)
        checked.append(m)
    if not any(m["role"] == "assistant" for m in checked):
        raise LoratuneError(f"{where}: no 'assistant' message, so there is nothing to learn")
    return checked


def _content_text(content, where: str, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for n, part in enumerate(content, 1):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise LoratuneError(
                    f"{where}: message {i} content part {n} is {kind or type(part).__name__!r}; only text parts "
                    "({'type': 'text', 'text': ...}) can be trained"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise LoratuneError(f"{where}: message {i} needs text 'role' and 'content'")


def _as_list(value, where: str, i: int) -> list:
    if not isinstance(value, list):
        raise LoratuneError(f"{where}: message {i} 'tool_calls' must be a list")
    return value


def _tool_call(call, where: str, i: int) -> dict:
    """OpenAI's {type, function: {name, arguments: JSON text}} with the arguments as an object, as templates expect."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise LoratuneError(f"{where}: message {i} has a tool call without function.name")
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise LoratuneError(f"{where}: message {i} tool call arguments are not JSON ({e.msg})") from None
    call = {k: v for k, v in call.items() if v is not None}
    return call | {"type": call.get("type", "function"), "function": {"name": function["name"], "arguments": arguments}}
