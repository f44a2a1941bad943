"""`loras verify` in the real llama.cpp: the GGUF adapter on the base as an f32 GGUF, and the merged GGUF files, run by
tools/verify_gguf/greedy.cpp (built by `make verify-gguf`) and compared with the transformers + peft reference."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from loratune.adapters.files import temporary
from loratune.adapters.verify_reference import Check, Prompt, Status, agreement, divergence_margins, rate
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

# llama.cpp runs these close enough to float32 for equal greedy tokens, except where the reference's two best tokens
# are closer than the weights' rounding can move them (the top-2 logit gap at which a split counts as a tie)
TIE_MARGIN = {"ALL_F32": 1e-3, "MOSTLY_F16": 0.05}


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
            base_f32 = base_gguf(base_dir, ws, find_converter(ws, llama_cpp))
            runs.append(("GGUF adapter on base f32 GGUF", base_f32, lora_file))
        else:
            checks.append(
                Check(
                    "GGUF adapter", "on base f32 GGUF", "skipped", "no --llama-cpp (its converter makes the base GGUF)"
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
            for q in ("f16", "q8_0", *(("q4_k_m",) if has_quantize(llama_cpp) else ()))
        ]
        if len(models) == 2:
            checks.append(Check("merged GGUF q4_k_m", "export", "skipped", "no llama-quantize on PATH or in the build"))
    elif not models:
        checks.append(
            Check("merged GGUF", "export", "skipped", "none in the adapter folder and no --llama-cpp to make one")
        )
    runs += [(f"merged GGUF {p.name}", p, None) for p in models]
    for label, model_file, lora in runs:
        checks += check_gguf(program, label, model_file, lora, tokenizer, contract, prompts, reference, tokens)
    return checks


def has_quantize(llama_cpp) -> bool:
    from loratune.adapters.export_gguf_model import find_quantize

    try:
        find_quantize(llama_cpp)
    except LoratuneError:
        return False
    return True


def base_gguf(base_dir: Path, ws: Workspace, converter: Path) -> Path:
    """The base model as an f32 GGUF by llama.cpp's converter (exact: the check sees the adapter, not rounding),
    made once into <home>/tools/gguf/."""
    from loratune.adapters.export_gguf_model import convert_to_gguf

    target = ws.home / "tools" / "gguf" / f"{base_dir.name}-f32.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(target, "tmp")
        convert_to_gguf(converter, base_dir, tmp, "f32")
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
    exact = file_type in TIE_MARGIN
    checks = []
    answers, same_prompt, same_builtin = [], 0, 0
    for prompt, ids in zip(prompts, reference.ids, strict=True):
        jinja, builtin, their_ids, answer = run_greedy(program, model_file, lora, tokens, prompt, ids)
        answers.append(answer)
        same_prompt += their_ids == ids
        same_builtin += builtin is not None and builtin == jinja
    agree, compared, same = agreement(reference, answers)
    quant = file_type.removeprefix("ALL_").removeprefix("MOSTLY_").lower()
    result = f"{same} / {len(prompts)} answers identical, {rate(agree, compared)} ({quant})"
    margins = divergence_margins(reference, answers)
    if margins:  # a split at a near-tie of the reference is rounding; a large margin is a wrong export
        result += f"; reference top-2 logit margin where they split: {', '.join(f'{m:.3f}' for m in margins)}"
    ties = False
    if exact:
        ties = all(m < TIE_MARGIN[file_type] for m in margins) and len(margins) == len(prompts) - same
        if margins and ties:
            result += f" (each below {TIE_MARGIN[file_type]}: a tie the weights' rounding decides)"
        checks.append(Check(label, f"greedy tokens (up to {tokens})", "ok" if ties else "FAIL", result))
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
    tie_splits = len(margins) if exact and ties else 0  # an answer split at a tie cannot end at the same token
    ok = bool(ends & set(contract.stop_token_ids)) and (not exact or same_stop + tie_splits >= stopped)
    names = ", ".join(f"{i} {tokenizer.convert_ids_to_tokens(i)!r}" for i in sorted(ends)) or "none"
    result = f"GGUF end ids {names}; {same_stop} of {stopped} stopped answers end at the same token"
    checks.append(Check(label, "stops at the trained EOS", "ok" if ok else ("FAIL" if exact else "measured"), result))
    return checks
