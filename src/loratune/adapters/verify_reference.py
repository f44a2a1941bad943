"""The reference that `loratune loras verify` compares every export with: the prompts (the run's eval records, or a
prompts file, through the prompt contract) and transformers + peft in float32 answering them greedily, with the
logits along prompt + answer; and how two greedy answers are compared."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

from loratune.config import DataSpec, from_dict
from loratune.errors import LoratuneError
from loratune.prompting import (
    PromptContract,
    format_keys,
    render_chat,
    render_completion,
    sampling_options,
    stop_options,
)
from loratune.workspace import Workspace

Status = Literal["ok", "FAIL", "skipped", "measured", "note"]


@dataclass
class Check:
    artifact: str
    check: str
    status: Status
    result: str


@dataclass
class Prompt:
    messages: list[dict] | None  # a conversation ending with a user turn; None for a raw-text adapter
    text: str  # what is shown (the last user message, or the raw text)


@dataclass
class Reference:
    """transformers + peft on the prompts: prompt ids, greedy answer ids, and the logits along prompt + answer."""

    ids: list[list[int]]
    answers: list[list[int]]
    logits: list[object]


def verify_prompts(
    adapter: Path, ws: Workspace, contract: PromptContract, prompts_file: str | Path | None, limit: int
) -> tuple[list[Prompt], str]:
    """(prompts, where they come from): the prompts file (one per line), else the run's eval data, else its data."""
    if prompts_file:
        path = Path(prompts_file).expanduser()
        if not path.is_file():
            raise LoratuneError(f"prompts file not found: {path}")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise LoratuneError(f"{path}: no prompts in it (one per line)")
        return [_prompt(contract, line) for line in lines[:limit]], f"prompts from {path}"
    from loratune.rundir import CONFIG, config_folder, read_run_config

    saved = read_run_config(config_folder(adapter))
    if saved is None:
        raise LoratuneError(f"{adapter}: no {CONFIG}, so its eval prompts are unknown; pass --prompts-file")
    spec = from_dict(DataSpec, saved.get("data") or {}, f"{config_folder(adapter) / CONFIG}: data")
    from loratune.data.build import find_data, is_raw_text
    from loratune.data.files import kind_of, list_files, read_records
    from loratune.data.shapes import rename_columns

    found = find_data(spec.eval_path or spec.path, ws)
    what = "held-out prompts of data.eval_path" if spec.eval_path else "prompts of the training data (no eval file)"
    if is_raw_text(found, spec.columns) or contract.kind == "raw":
        raise LoratuneError(f"{adapter} was trained on raw text: give the texts to continue with --prompts-file")
    files = [f for one in (found if isinstance(found, list) else [found]) for f in list_files(one).files]
    # Read lazily, columns renamed as training renames them: only the first `limit` prompts are needed.
    records = (rename_columns(r, spec.columns) for f in files if kind_of(f) != "text" for r in read_records(f))
    path = files[0]
    prompts = list(islice((p for p in (_record_prompt(contract, r) for r in records) if p is not None), limit))
    if not prompts:
        raise LoratuneError(f"{path}: no record gives a prompt in the run's prompt format; pass --prompts-file")
    return prompts, f"{what} {path.name}"


def _prompt(contract: PromptContract, text: str) -> Prompt:
    return Prompt(None if contract.kind == "raw" else [{"role": "user", "content": text}], text)


def _record_prompt(contract: PromptContract, record: dict) -> Prompt | None:
    """The conversation before a record's first answer (None where the record has no single prompt)."""
    messages = record.get("messages") or record.get("conversations")
    if isinstance(messages, list):
        first = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), 0)
        turns = [m for m in messages[:first] if isinstance(m, dict) and isinstance(m.get("content"), str)]
        return Prompt(turns, turns[-1]["content"]) if turns and turns[-1].get("role") == "user" else None
    if contract.kind == "format":
        prompt_key, response_key = format_keys(contract.format or {}, contract.format_name or "")
        keys = {k for k, v in record.items() if isinstance(v, str) and v.strip()} - {"system"}
        if keys != {prompt_key, response_key}:
            return None  # another key set (e.g. with 'input'): its prompt is not one user message
    else:
        prompt_key = "instruction"
    text = record.get(prompt_key)
    if not isinstance(text, str) or not text.strip():
        return None
    system = record.get("system") if isinstance(record.get("system"), str) and record["system"].strip() else None
    return Prompt(
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}], text
    )


def prompt_ids(contract: PromptContract, tokenizer, prompt: Prompt) -> list[int]:
    if prompt.messages is None:
        return render_completion(contract, tokenizer, prompt.text)
    return render_chat(contract, tokenizer, prompt.messages)


def run_reference(model, tokenizer, contract, prompts: list[Prompt], tokens: int) -> Reference:
    ids = [prompt_ids(contract, tokenizer, p) for p in prompts]
    answers = [greedy_answer(model, tokenizer, row, tokens, stop_options(contract, tokenizer)) for row in ids]
    logits = [full_logits(model, row + answer) for row, answer in zip(ids, answers, strict=True)]
    return Reference(ids, answers, logits)


def greedy_answer(model, tokenizer, ids: list[int], tokens: int, stops: dict) -> list[int]:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=tokens,
            pad_token_id=pad,
            **sampling_options(0.0),
            **stops,
        )
    return out[0, len(ids) :].tolist()


def full_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def agreement(reference: Reference, answers: list[list[int]]) -> tuple[int, int, int]:
    """(agreeing leading tokens, compared tokens, answers identical) of `answers` against the reference."""
    agree = sum(common_prefix(r, a) for r, a in zip(reference.answers, answers, strict=True))
    compared = sum(len(r) for r in reference.answers)
    same = sum(r == a for r, a in zip(reference.answers, answers, strict=True))
    return agree, compared, same


def divergence_margins(reference: Reference, answers: list[list[int]]) -> list[float]:
    """For each answer that differs: the reference's top-2 logit gap at the first differing token."""
    margins = []
    for ids, ours, theirs, logits in zip(reference.ids, reference.answers, answers, reference.logits, strict=True):
        at = common_prefix(ours, theirs)
        if ours != theirs and at < len(ours):
            top = logits[len(ids) - 1 + at].topk(2).values
            margins.append((top[0] - top[1]).item())
    return margins


def rate(agree: int, compared: int) -> str:
    return f"{agree} / {compared} tokens ({100 * agree / max(compared, 1):.1f} %)"
