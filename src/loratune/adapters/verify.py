"""`loratune loras verify NAME`: run each export of an adapter and compare it with transformers + peft.

The reference is the base model with the PEFT adapter in float32 on the CPU, prompted through the run's prompt
contract, decoding greedily until a trained stop token. Each artifact is checked on the same prompts (the run's eval
records, or a prompts file):
- merged folder (a models/ folder merged from this adapter, else one merged for the check): logits within 1e-4,
  greedy tokens equal, and its tokenizer / generation_config carry the contract's chat template and stop ids;
- Ollama TEMPLATE (ollama/Modelfile, else the one the export would write), rendered by Go's text/template as Ollama
  does: the same prompt as the contract, character for character and token for token;
- with a llama.cpp build (`--greedy`: tools/verify_gguf/greedy.cpp, `--llama-cpp`: its source tree, for the
  converter): the GGUF adapter on the base converted to an f32 GGUF, and the merged GGUF files (made as f16, q8_0
  and, with llama-quantize, q4_k_m when missing), in the real llama.cpp: the prompt its Jinja engine renders from
  the GGUF's template, the greedy tokens (identical at f32/f16 but where the reference's two best tokens are
  closer than the weights' rounding, TIE_MARGIN; the agreement rate reported for quantized files) and the EOS id it
  stops at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.adapters.files import temporary
from loratune.adapters.merge import merged_folders
from loratune.adapters.verify_gguf import check_ggufs
from loratune.adapters.verify_reference import (
    Check,
    agreement,
    full_logits,
    greedy_answer,
    rate,
    run_reference,
    verify_prompts,
)
from loratune.errors import LoratuneError
from loratune.prompting import load_contract
from loratune.workspace import Workspace

LOGIT_TOLERANCE = 1e-4
GO_RENDERER = Path(__file__).with_name("ollama_render.go")


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


# ---------------------------------------------------------------- the merged folder


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
            f"{same} / {len(answers)} answers identical, {rate(agree, compared)}",
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
