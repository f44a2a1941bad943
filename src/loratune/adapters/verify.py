"""`loratune loras verify NAME`: run each export of an adapter and compare it with transformers + peft.

The reference is the base model with the PEFT adapter in float32 on the CPU, prompted through the run's prompt
contract, decoding greedily until a trained stop token. Each artifact is checked on the same prompts (the run's eval
records, or a prompts file):
- merged folder (a models/ folder merged from this adapter, else one merged for the check): logits within 1e-4,
  greedy tokens equal, and its tokenizer / generation_config carry the contract's chat template and stop ids;
- Ollama TEMPLATE (ollama/Modelfile, else the one the export would write), rendered by Go's text/template as Ollama
  does: the same prompt as the contract, character for character and token for token;
- with a llama.cpp build (`--greedy`: tools/verify_gguf/greedy.cpp, `--llama-cpp`: its source tree, for the
  converter): the GGUF adapter on the base converted to an f16 GGUF, and the merged GGUF files (made as f16 and q8_0
  when missing), in the real llama.cpp: the prompt its Jinja engine renders from the GGUF's template, the greedy
  tokens (identical at f32/f16, the agreement rate reported for quantized files) and the EOS id it stops at.
Checks that cannot run say why in the table. A failed check makes the command exit 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.adapters.files import temporary
from loratune.config import DataSpec, from_dict
from loratune.errors import LoratuneError
from loratune.prompting import (
    PromptContract,
    format_keys,
    load_contract,
    render_chat,
    render_completion,
    sampling_options,
    stop_options,
)
from loratune.workspace import Workspace

LOGIT_TOLERANCE = 1e-4
EXACT_GGUF_TYPES = ("ALL_F32", "MOSTLY_F16")  # llama.cpp runs these close enough to float32 for equal greedy tokens
GO_RENDERER = Path(__file__).with_name("ollama_render.go")
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


def verify(
    lora: str,
    home: str | Path | Workspace | None = None,
    prompts_file: str | Path | None = None,
    llama_cpp: str | Path | None = None,
    greedy: str | Path | None = None,
    tokens: int = 32,
    limit: int = 8,
) -> list[Check]:
    """Check every export of `lora` against transformers + peft; returns the table's rows (see the module doc)."""
    import torch

    from loratune.models.checks import load_adapter
    from loratune.models.sources import load_base

    ws = home if isinstance(home, Workspace) else Workspace.resolve(home)
    folder = adapter_path(lora, ws)
    base_dir = base_model_path(folder, ws)
    base, tokenizer = load_base(base_dir, "cpu")
    contract = load_contract(folder, tokenizer, ws)
    prompts, source = verify_prompts(folder, ws, contract, prompts_file, limit)
    checks = [Check("prompts", "source", "note", f"{len(prompts)} {source}; {contract.describe()}")]
    model = load_adapter(base, folder).eval()
    with torch.no_grad():
        reference = run_reference(model, tokenizer, contract, prompts, tokens)
    del model, base
    checks += check_merged_folders(folder, base_dir, ws, tokenizer, contract, reference)
    checks += check_ollama(folder, ws, tokenizer, contract, prompts, reference)
    checks += check_ggufs(folder, base_dir, ws, tokenizer, contract, prompts, reference, llama_cpp, greedy, tokens)
    return checks


def format_table(checks: list[Check]) -> str:
    rows = [("artifact", "check", "result")] + [(c.artifact, c.check, f"{c.status}: {c.result}") for c in checks]
    lines = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]  # Markdown
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines)


def failed(checks: list[Check]) -> bool:
    return any(c.status == "FAIL" for c in checks)


# ---------------------------------------------------------------- prompts and the reference


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


def _rate(agree: int, compared: int) -> str:
    return f"{agree} / {compared} tokens ({100 * agree / max(compared, 1):.1f} %)"


# ---------------------------------------------------------------- the merged folder


def merged_folders(adapter: Path, ws: Workspace) -> list[Path]:
    """The models/ folders `loras merge` made from this adapter (their MERGED_FROM.txt names it)."""
    found = []
    for marker in sorted(ws.models.glob("*/MERGED_FROM.txt")) if ws.models.is_dir() else []:
        lines = marker.read_text(encoding="utf-8").splitlines()
        if f"adapter: {adapter}" in lines:
            found.append(marker.parent)
    return found


def check_merged_folders(adapter, base_dir, ws, tokenizer, contract, reference) -> list[Check]:
    from loratune.adapters.merge import write_merged

    checks = []
    for folder in merged_folders(adapter, ws):
        checks += check_merged_folder(folder, f"merged folder models/{folder.name}", tokenizer, contract, reference)
    if checks:
        return checks
    work = temporary(adapter / "verify-merged", "tmp")
    try:
        write_merged(adapter, base_dir, work, ws=ws)
        return check_merged_folder(work, "merged folder (merged for the check)", tokenizer, contract, reference)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_merged_folder(folder: Path, label: str, tokenizer, contract, reference) -> list[Check]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    stored = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    stored_dtype = str(stored.get("dtype") or stored.get("torch_dtype") or "float32")
    worst = 0.0
    for ids, answer, expected in zip(reference.ids, reference.answers, reference.logits, strict=True):
        worst = max(worst, (full_logits(model, ids + answer) - expected).abs().max().item())
    checks = []
    if stored_dtype == "float32":
        status = "ok" if worst <= LOGIT_TOLERANCE else "FAIL"
        checks.append(Check(label, "logits vs base + adapter", status, f"max abs diff {worst:.2e} (limit 1e-4)"))
    else:  # merged in the stored half precision: rounding moves logits by more than 1e-4; the tokens must agree
        checks.append(
            Check(label, "logits vs base + adapter", "measured", f"max abs diff {worst:.2e} ({stored_dtype})")
        )
    # Plain transformers: greedy with the folder's own generation_config, which must stop where the adapter stops.
    answers = [
        greedy_answer(model, tokenizer, ids, max(len(a), 1), {})
        for ids, a in zip(reference.ids, reference.answers, strict=True)
    ]
    agree, compared, same = agreement(reference, answers)
    status = "ok" if same == len(answers) else "FAIL"
    checks.append(
        Check(
            label,
            "greedy tokens, own generation_config",
            status,
            f"{same} / {len(answers)} answers identical, {_rate(agree, compared)}",
        )
    )
    saved = AutoTokenizer.from_pretrained(folder)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    problems = []
    if contract.chat_template and saved.chat_template != contract.chat_template:
        problems.append("tokenizer chat template is not the contract's")
    if contract.eos_token and saved.eos_token != contract.eos_token:
        problems.append(f"eos_token {saved.eos_token!r}, trained {contract.eos_token!r}")
    if not set(contract.stop_token_ids) <= eos:
        problems.append(f"generation_config eos ids {sorted(eos)} miss trained stops {contract.stop_token_ids}")
    result = "; ".join(problems) or f"chat template and EOS {contract.eos_token!r} as trained, stop ids {sorted(eos)}"
    checks.append(Check(label, "prompt contract in the folder", "FAIL" if problems else "ok", result))
    return checks


# ---------------------------------------------------------------- the Ollama TEMPLATE


def check_ollama(adapter, ws, tokenizer, contract, prompts, reference) -> list[Check]:
    label = "Ollama TEMPLATE"
    if contract.kind == "raw":
        return [Check(label, "rendering", "skipped", "raw-text adapter: TEMPLATE is {{ .Prompt }}")]
    go = shutil.which("go")
    if go is None:
        return [Check(label, "rendering", "skipped", "Go is not installed (Debian: apt-get install golang-go)")]
    from loratune.adapters.export_ollama import modelfile_text, ollama_template, read_prompt_contract

    with tempfile.TemporaryDirectory(prefix="loratune-verify-") as tmp:
        modelfile = adapter / "ollama" / "Modelfile"
        if modelfile.is_file():
            label = "Ollama ollama/Modelfile"
        else:  # what `loras export --format ollama` would write, without the GGUF files
            try:
                template, system, notes = ollama_template(read_prompt_contract(adapter, ws, tokenizer), tokenizer)
            except LoratuneError as e:
                return [Check(label, "rendering", "FAIL", str(e))]
            modelfile = Path(tmp) / "Modelfile"
            modelfile.write_text(
                modelfile_text("verify", modelfile, Path("base.gguf"), None, template, system, [], notes), "utf-8"
            )
            label = "Ollama TEMPLATE (as exported)"
        renders = go_render(go, ws, modelfile, [p.messages for p in prompts])
    bos = tokenizer.bos_token_id
    same_ids = 0
    for rendered, expected in zip(renders, reference.ids, strict=True):
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        ids = [bos, *ids] if contract.add_bos and bos is not None else ids  # llama.cpp adds BOS, not the TEMPLATE
        same_ids += ids == expected
    status = "ok" if same_ids == len(prompts) else "FAIL"
    return [
        Check(
            label,
            "rendering (Go text/template) vs contract",
            status,
            f"{same_ids} / {len(prompts)} prompts same token ids",
        )
    ]


def go_render(go: str, ws: Workspace, modelfile: Path, conversations: list) -> list[str]:
    """Render conversations with the Modelfile's TEMPLATE as Ollama does (the Go program is built once)."""
    import hashlib

    source = GO_RENDERER.read_bytes()
    tools = ws.home / "tools" / f"ollama-render-{hashlib.sha256(source).hexdigest()[:12]}"
    program = tools / "render"
    if not program.is_file():
        tools.mkdir(parents=True, exist_ok=True)
        (tools / "render.go").write_bytes(source)
        env = {**os.environ, "GOCACHE": str(tools / "cache"), "GOPATH": str(tools / "path"), "GO111MODULE": "off"}
        built = subprocess.run(
            [go, "build", "-o", "render.tmp", "render.go"], cwd=tools, env=env, capture_output=True, text=True
        )
        if built.returncode != 0:
            raise LoratuneError(f"building the Ollama template renderer with Go failed: {built.stderr.strip()[-200:]}")
        os.replace(tools / "render.tmp", program)
    request = json.dumps({"modelfile": str(modelfile), "conversations": conversations})
    done = subprocess.run([str(program)], input=request, capture_output=True, text=True)
    if done.returncode != 0:
        raise LoratuneError(f"rendering {modelfile} failed: {done.stderr.strip()[-200:]}")
    return json.loads(done.stdout)["renders"]


# ---------------------------------------------------------------- GGUF files in llama.cpp


def check_ggufs(adapter, base_dir, ws, tokenizer, contract, prompts, reference, llama_cpp, greedy, tokens) -> list:
    from loratune.adapters.export_gguf import export_gguf
    from loratune.adapters.export_gguf_model import export_gguf_model, find_converter

    program = Path(greedy).expanduser() if greedy else None
    if program is None or not (program.is_file() and os.access(program, os.X_OK)):
        why = "no llama.cpp driver given (--greedy BIN: make build/verify-gguf/greedy builds it)"
        if program is not None:
            why = f"{program} is not an executable (make build/verify-gguf/greedy builds it)"
        return [Check("GGUF adapter and merged GGUF", "llama.cpp runs", "skipped", why)]
    checks = []
    llama_cpp = llama_cpp or os.environ.get("LORATUNE_LLAMA_CPP")
    # The GGUF adapter, on the base converted to f16 by llama.cpp's converter (exact), and on a shipped base GGUF.
    try:
        lora_file = adapter / "adapter.gguf"
        if not lora_file.is_file():
            lora_file = export_gguf(str(adapter.relative_to(ws.loras)), ws)
    except LoratuneError as e:
        checks.append(Check("GGUF adapter", "export", "skipped", str(e)))
        lora_file = None
    runs: list[tuple[str, Path, Path | None]] = []  # (label, model GGUF, adapter GGUF)
    if lora_file is not None:
        if llama_cpp:
            base_f16 = base_gguf(base_dir, ws, find_converter(ws, llama_cpp))
            runs.append(("GGUF adapter on base f16 GGUF", base_f16, lora_file))
        else:
            checks.append(
                Check(
                    "GGUF adapter", "on base f16 GGUF", "skipped", "no --llama-cpp (its converter makes the base GGUF)"
                )
            )
        from loratune.adapters.export_ollama import base_gguf_file

        shipped = base_gguf_file(adapter, ws)
        if shipped is not None:
            runs.append((f"GGUF adapter on {shipped.name}", shipped, lora_file))
    models = sorted(p for p in adapter.glob("*.gguf") if gguf_type(p) != "adapter")
    if not models and llama_cpp:
        models = [
            export_gguf_model(str(adapter.relative_to(ws.loras)), ws, quant=q, llama_cpp=llama_cpp)
            for q in ("f16", "q8_0")
        ]
    elif not models:
        checks.append(
            Check("merged GGUF", "export", "skipped", "none in the adapter folder and no --llama-cpp to make one")
        )
    runs += [(f"merged GGUF {p.name}", p, None) for p in models]
    for label, model_file, lora in runs:
        checks += check_gguf(program, label, model_file, lora, tokenizer, contract, prompts, reference, tokens)
    return checks


def base_gguf(base_dir: Path, ws: Workspace, converter: Path) -> Path:
    """The base model as an f16 GGUF by llama.cpp's converter, made once into <home>/tools/gguf/."""
    from loratune.adapters.export_gguf_model import convert_to_gguf

    target = ws.home / "tools" / "gguf" / f"{base_dir.name}-f16.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(target, "tmp")
        convert_to_gguf(converter, base_dir, tmp, "f16")
        os.replace(tmp, target)
    return target


def gguf_type(path: Path) -> str:
    return str(gguf_fields(path).get("general.type", "model"))


def gguf_fields(path: Path) -> dict:
    """The scalar and string metadata of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out = {}
    for key, field in reader.fields.items():
        if len(field.data) != 1 or field.types[0].name == "ARRAY":
            continue
        value = field.parts[field.data[0]]
        out[key] = bytes(value).decode("utf-8", "replace") if field.types[0].name == "STRING" else value.item()
    return out


def run_greedy(program: Path, model_file: Path, lora: Path | None, tokens: int, prompt: Prompt, ids: list[int]):
    """llama.cpp's (Jinja rendering, built-in rendering, the Jinja rendering's ids, greedy ids from `ids`)."""
    messages = prompt.messages or []
    args = [str(program), str(model_file), str(lora or "-"), str(tokens), str(len(messages))]
    args += [part for m in messages for part in (m["role"], m["content"])] + [str(i) for i in ids]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise LoratuneError(f"llama.cpp ({program.name}) failed on {model_file.name}: {done.stderr.strip()[-300:]}")
    lines = done.stdout.split("\n")
    return (
        json.loads(lines[0]),
        json.loads(lines[1]),
        [int(x) for x in lines[2].split()],
        [int(x) for x in lines[3].split()],
    )


def check_gguf(program, label, model_file, lora, tokenizer, contract, prompts, reference, tokens) -> list[Check]:
    from gguf import LlamaFileType

    fields = gguf_fields(model_file)
    file_type = LlamaFileType(int(fields.get("general.file_type", 0))).name
    exact = file_type in EXACT_GGUF_TYPES
    checks = []
    answers, same_prompt, same_builtin = [], 0, 0
    for prompt, ids in zip(prompts, reference.ids, strict=True):
        jinja, builtin, their_ids, answer = run_greedy(program, model_file, lora, tokens, prompt, ids)
        answers.append(answer)
        same_prompt += their_ids == ids
        same_builtin += builtin is not None and builtin == jinja
    agree, compared, same = agreement(reference, answers)
    quant = file_type.removeprefix("ALL_").removeprefix("MOSTLY_").lower()
    result = f"{same} / {len(prompts)} answers identical, {_rate(agree, compared)} ({quant})"
    margins = divergence_margins(reference, answers)
    if margins:  # a split at a near-tie of the reference is rounding; a large margin is a wrong export
        result += f"; reference top-2 logit margin where they split: {', '.join(f'{m:.3f}' for m in margins)}"
    if exact:
        checks.append(Check(label, f"greedy tokens (up to {tokens})", "ok" if same == len(prompts) else "FAIL", result))
    else:
        checks.append(Check(label, f"greedy tokens (up to {tokens})", "measured", result))
    if contract.kind != "raw":
        carries = lora is None  # a merged GGUF carries the contract; a base GGUF has the base model's own template
        status: Status = "ok" if same_prompt == len(prompts) else ("FAIL" if carries else "note")
        result = f"{same_prompt} / {len(prompts)} prompts same token ids"
        if status == "note":
            result += " (the base GGUF's own template: give llama.cpp the run's chat template, or use the Modelfile)"
        checks.append(Check(label, "prompt: llama.cpp Jinja of the GGUF's template", status, result))
        if carries:
            checks.append(
                Check(
                    label,
                    "prompt: llama.cpp built-in template (no --jinja)",
                    "note",
                    f"{same_builtin} / {len(prompts)} same text as Jinja",
                )
            )
    eos = fields.get("tokenizer.ggml.eos_token_id")
    eot = fields.get("tokenizer.ggml.eot_token_id")
    ends = {i for i in (eos, eot) if i is not None}
    stopped = sum(bool(r) and r[-1] in contract.stop_token_ids for r in reference.answers)
    same_stop = sum(
        bool(r) and r[-1] in contract.stop_token_ids and a == r for r, a in zip(reference.answers, answers, strict=True)
    )
    ok = bool(ends & set(contract.stop_token_ids)) and (not exact or same_stop == stopped)
    names = ", ".join(f"{i} {tokenizer.convert_ids_to_tokens(i)!r}" for i in sorted(ends)) or "none"
    result = f"GGUF end ids {names}; {same_stop} of {stopped} stopped answers end at the same token"
    checks.append(Check(label, "stops at the trained EOS", "ok" if ok else ("FAIL" if exact else "measured"), result))
    return checks
