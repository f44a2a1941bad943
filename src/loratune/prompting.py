"""The prompt contract: how a run built its prompts, so every later use of its adapter builds them the same way.

Training writes it as `prompt.json` in the run folder and in every checkpoint, beside the tokenizer files (with the
contract's chat template set, so plain transformers + peft renders the same prompt). `generate`, `chat`, the web UI,
`serve` and `loras merge` read it back with `load_contract` and render prompts with `render_prompt` /
`render_chat` / `render_completion`, which go through the same code as the training samples:

- kind 'chat': the chat template (the exact Jinja text) renders the conversation with its generation prompt;
- kind 'format': the format file's template for the prompt key (e.g. alpaca's `instruction`), the response
  placeholder left open;
- kind 'raw': the bare text (the adapter continues text; a chat request is refused).

Prompt token ids are those training put in front of a response (`prompt_ids`), so "the prompt generate sends" and
"the masked part of a training sample" are equal token for token. Generation stops at the contract's stop ids (EOS and
the template's end-of-turn token), which is what the model was trained to emit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loratune.config import DataSpec, from_dict
from loratune.data import instructions as ins
from loratune.data.build import IGNORE, adds_bos, find_data, is_raw_text, wants_bos
from loratune.data.chat_templates import format_to_jinja, resolve_chat_template
from loratune.data.chats import render_chat_text
from loratune.errors import LoratuneError
from loratune.rundir import CONFIG, CONTRACT_FILE, config_folder, read_run_config
from loratune.workspace import Workspace

# Training tokenizes prompt + response as one text. A prompt is cut where a response starting with a letter (nearly
# all of them) would begin, so e.g. vicuna's "ASSISTANT: " ends before the space that training merged into " Arr".
PROBE = "A"


@dataclass
class PromptContract:
    kind: Literal["chat", "format", "raw"]
    chat_template: str | None = None
    """kind 'chat': the Jinja text training rendered with; 'format': its Jinja equivalent (for exports)."""
    template_name: str | None = None
    """Where the chat template came from: 'model' (the tokenizer's own), 'chatml', ..., or a .jinja path."""
    format: dict[str, str] | None = None
    """kind 'format': the format file's content (key set -> template)."""
    format_name: str | None = None
    system: str | None = None
    """Default system prompt (None: the chat template's own default, if it has one)."""
    add_bos: bool = False
    add_eos: bool = True
    eos_token: str | None = None
    eos_token_id: int | None = None
    stop: list[str] = field(default_factory=list)
    """Texts that end an answer (EOS, the template's end-of-turn token)."""
    stop_token_ids: list[int] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "chat":
            return f"chat template ({self.template_name or 'model'})"
        if self.kind == "format":
            return f"format {self.format_name}"
        return "raw text"


# ---------------------------------------------------------------- making the contract (training)


def make_contract(spec: DataSpec, tokenizer, ws: Workspace) -> PromptContract:
    """The contract of a run on `spec`'s data: the same decisions the sample builders make."""
    return contract_for(spec, tokenizer, ws, raw=is_raw_text(find_data(spec.path, ws), spec.columns))


def contract_for(spec: DataSpec, tokenizer, ws: Workspace, raw: bool) -> PromptContract:
    common = {
        "add_bos": wants_bos(tokenizer, spec.add_bos),
        "add_eos": spec.add_eos,
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if raw:
        return with_stops(PromptContract("raw", **common), tokenizer)
    template = resolve_chat_template(spec.chat_template, tokenizer)
    if spec.format in ("auto", "chat") and template:
        name = "model" if spec.chat_template in ("", "auto") else spec.chat_template
        return with_stops(PromptContract("chat", template, name, **common), tokenizer)
    if spec.format == "chat":
        ins.make_renderer("chat", tokenizer, ws, None)  # raises the one-line error training gives
    fmt = "alpaca" if spec.format in ("auto", "chat") else spec.format
    templates = ins.load_format(fmt, ws)
    try:
        prompt_key, response_key = format_keys(templates, fmt)
        eos = tokenizer.eos_token if spec.add_eos else None
        jinja = format_to_jinja(templates, response_key, prompt_key, eos)
    except LoratuneError:  # a format without a single-prompt key set: fine for training, no chat equivalent
        jinja = None
    contract = PromptContract("format", jinja, None, templates, fmt, **common)  # the name or path, as given
    return with_stops(contract, tokenizer)


def model_contract(tokenizer, folder: Path | None = None) -> PromptContract:
    """A base model used alone (or a merged one): its prompt.json if it has one, else its own chat template."""
    if folder is not None and (folder / CONTRACT_FILE).is_file():
        return read_contract(folder / CONTRACT_FILE)
    template = resolve_chat_template("auto", tokenizer)
    common = {
        "add_bos": adds_bos(tokenizer),
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
    }
    contract = PromptContract("chat", template, "model", **common) if template else PromptContract("raw", **common)
    return with_stops(contract, tokenizer)


def with_stops(contract: PromptContract, tokenizer) -> PromptContract:
    """Fill the stop texts and ids: the chat template's end-of-turn text (as a chat renders it) and EOS."""
    stop = []
    if contract.chat_template and contract.kind == "chat":
        end = turn_end(contract.chat_template, tokenizer)
        if end:
            stop.append(end)
    if contract.eos_token and contract.eos_token not in stop:
        stop.append(contract.eos_token)
    contract.stop = stop
    contract.stop_token_ids = [i for i in (_single_token(s, tokenizer) for s in stop) if i is not None]
    return contract


def turn_end(chat_template: str, tokenizer) -> str:
    """What the template writes right after an assistant's text (e.g. '<|im_end|>'), whitespace trimmed."""
    marker = "\u2063answer\u2063"
    chat = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
    try:
        text = render_chat_text(chat, tokenizer, chat_template, False)
    except Exception:
        return ""
    at = text.rfind(marker)
    return text[at + len(marker) :].strip() if at >= 0 else ""


def _single_token(text: str, tokenizer) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def format_keys(templates: dict[str, str], name: str = "") -> tuple[str, str]:
    """(prompt key, response key) of the format's two-key set (alpaca: instruction, output)."""
    for keys, template in templates.items():
        parts = {p.strip() for p in keys.split(",")}
        if len(parts) == 2 and ins._PLACEHOLDER.search(template):
            response = ins.response_key(template)
            others = parts - {response}
            if len(others) == 1:
                return others.pop(), response
    raise LoratuneError(
        f"format {name!r} has no key set of one prompt key and the response key (like 'instruction,output'), "
        "so a single prompt cannot be written in it; use --no-chat and write the whole prompt"
    )


# ---------------------------------------------------------------- the files: prompt.json and the tokenizer


def save_contract(folder: Path, contract: PromptContract, tokenizer=None) -> None:
    """Write prompt.json (and the tokenizer files with the contract's chat template and EOS) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    if tokenizer is not None:
        tmp = folder / f".tokenizer.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        saved_template, saved_eos = tokenizer.chat_template, tokenizer.eos_token
        try:
            if contract.chat_template:
                tokenizer.chat_template = contract.chat_template
            if contract.eos_token:
                tokenizer.eos_token = contract.eos_token
            tokenizer.save_pretrained(tmp)
        finally:  # the caller's tokenizer is left as it was
            tokenizer.chat_template, tokenizer.eos_token = saved_template, saved_eos
        for file in sorted(tmp.iterdir()):
            os.replace(file, folder / file.name)
            names.append(file.name)
        tmp.rmdir()
    data = {"version": 1, **dataclasses.asdict(contract), "tokenizer_files": names}
    _write_atomic(folder / CONTRACT_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def copy_contract(run_dir: Path, target: Path) -> None:
    """Put the run's prompt.json and tokenizer files into a checkpoint being written (nothing if the run has none)."""
    source = run_dir / CONTRACT_FILE
    if not source.is_file():
        return
    files = json.loads(source.read_text(encoding="utf-8")).get("tokenizer_files") or []
    for name in [CONTRACT_FILE, *files]:
        if (run_dir / name).is_file() and "/" not in name:
            shutil.copyfile(run_dir / name, target / name)


def read_contract(path: Path) -> PromptContract:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(PromptContract)}
        contract = PromptContract(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as e:
        raise LoratuneError(f"{path}: not a valid prompt contract ({e}); retrain, or delete it to derive one") from None
    if contract.kind not in ("chat", "format", "raw"):
        raise LoratuneError(f"{path}: unknown prompt kind {contract.kind!r} (chat, format or raw)")
    return contract


def load_contract(adapter: Path, tokenizer=None, ws: Workspace | None = None) -> PromptContract:
    """The contract of an adapter folder or checkpoint (a checkpoint falls back to its run folder's).

    An adapter trained before prompt.json existed gets the contract its saved loratune.yaml implies (what training
    did with those options); one without either gets the base tokenizer's own (`model_contract`)."""
    adapter = Path(adapter)
    for folder in (adapter, adapter.parent):
        if (folder / CONTRACT_FILE).is_file():
            return read_contract(folder / CONTRACT_FILE)
        if not adapter.name.startswith("checkpoint-"):
            break
    if tokenizer is None:
        raise LoratuneError(f"{adapter} has no {CONTRACT_FILE}; pass its tokenizer to derive the prompt contract")
    saved = read_run_config(config_folder(adapter))
    if saved is not None:
        spec = from_dict(DataSpec, saved.get("data") or {}, f"{config_folder(adapter) / CONFIG}: data")
        raw = is_raw_text(Path(spec.path), spec.columns)
        return contract_for(spec, tokenizer, ws or Workspace.resolve(None), raw=raw)
    return model_contract(tokenizer)


# ---------------------------------------------------------------- rendering (training's code, for generation)


def prompt_ids(contract: PromptContract, tokenizer, text: str) -> list[int]:
    """Token ids of a prompt text exactly as training tokenizes it in front of a response (BOS as trained)."""
    sample = ins.tokenize_segments([(text, False), (PROBE, True)], tokenizer, contract.add_bos)
    first = next(i for i, label in enumerate(sample.labels) if label != IGNORE)
    return sample.input_ids[:first]


def render_completion(contract: PromptContract, tokenizer, prompt: str) -> list[int]:
    """A bare text (raw-text adapters, `--no-chat`, OpenAI completions): its tokens, BOS as the run put it."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if contract.add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return list(ids)


def render_prompt(contract: PromptContract, tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """One prompt as the adapter was trained to read it: a user turn, a format's prompt, or the bare text."""
    if contract.kind == "raw":
        if system:
            raise LoratuneError("this adapter was trained on raw text, so it has no system prompt; drop the system")
        return render_completion(contract, tokenizer, prompt)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return render_chat(contract, tokenizer, messages)


def render_chat(contract: PromptContract, tokenizer, messages: list[dict]) -> list[int]:
    """A conversation (ending with a user turn) as prompt token ids, ready for the assistant's answer."""
    return prompt_ids(contract, tokenizer, chat_text(contract, tokenizer, messages))


def chat_text(contract: PromptContract, tokenizer, messages: list[dict]) -> str:
    if contract.kind == "raw":
        raise LoratuneError(
            "this adapter was trained on raw text (it continues text, it was never shown a chat); send a plain "
            "prompt (a completion), or train on instruction data for chats"
        )
    if not messages or messages[-1].get("role") != "user":
        raise LoratuneError("a chat to answer must end with a user message")
    if contract.system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": contract.system}, *messages]
    if contract.kind == "chat":
        return render_chat_text(messages, tokenizer, contract.chat_template, True)
    return _format_chat(contract, messages)


def _format_chat(contract: PromptContract, messages: list[dict]) -> str:
    """Turns through the format file: each user turn as its prompt, each answer as the response then EOS."""
    templates = contract.format or {}
    prompt_key, response_key = format_keys(templates, contract.format_name or "")
    text, system = "", None
    for i, message in enumerate(messages, 1):
        role, content = message["role"], message["content"]
        if role == "system":
            system = content
        elif role == "user":
            keys = {prompt_key, response_key} | ({"system"} if system else set())
            found = ins.find_key_set(templates, keys)
            if found is None:
                raise LoratuneError(
                    f"format {contract.format_name!r} has no key set {','.join(sorted(keys))}, so it cannot take a "
                    "system prompt; drop the system prompt"
                )
            prompt, _ = ins.split_template(templates[found], found, f"message {i}")
            text += ins.fill(prompt, {prompt_key: content, "system": system or ""}, f"message {i}")
            system = None
        elif role == "assistant":
            text += content + (contract.eos_token if contract.add_eos and contract.eos_token else "")
        else:
            raise LoratuneError(f"message {i}: role {role!r} has no place in format {contract.format_name!r}")
    return text


# ---------------------------------------------------------------- asking the model (generate, chat, serve)


def sampling_options(temperature: float, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0) -> dict:
    """model.generate() keyword arguments for these sampling options (temperature 0: greedy, nothing sampled)."""
    if temperature > 0:
        options = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}  # top_k 0: off
    else:  # None, not the model's generation_config values, so greedy decoding warns about nothing
        options = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if repetition_penalty != 1.0:
        options["repetition_penalty"] = repetition_penalty
    return options


def stop_options(contract: PromptContract, tokenizer, extra_stop: list[str] | None = None) -> dict:
    """model.generate() keyword arguments that stop where the model was trained to stop (plus `extra_stop` texts)."""
    ids = list(contract.stop_token_ids) or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    texts = [s for s in [*contract.stop, *(extra_stop or [])] if _single_token(s, tokenizer) not in ids]
    options: dict = {"eos_token_id": ids} if ids else {}
    if texts:
        options |= {"stop_strings": texts, "tokenizer": tokenizer}
    return options


def cut_at_stop(text: str, contract: PromptContract, extra_stop: list[str] | None = None) -> str:
    """An answer without its stop text (a stop that is plain text, not a special token, stays in the decoded text)."""
    cuts = [text.find(s) for s in [*contract.stop, *(extra_stop or [])] if s]
    cuts = [c for c in cuts if c >= 0]
    return text[: min(cuts)] if cuts else text


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
