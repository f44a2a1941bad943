"""Merge an adapter into its base model: a plain transformers folder (safetensors + tokenizer) in models/."""

from __future__ import annotations

import shutil
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.errors import LoratuneError
from loratune.prompting import load_contract, save_contract
from loratune.workspace import Workspace, check_name, inside


def merge(
    lora: str,
    out: str,
    home: str | Path | Workspace | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Write base + `lora` (a name or 'name/checkpoint-N') merged into models/<out>/; returns that folder.

    The base keeps its stored dtype (weights are merged on the CPU, so no GPU is needed and nothing is rounded
    twice). `out` may be given as 'models/<name>' or '<name>'.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws = home if isinstance(home, Workspace) else Workspace.resolve(home)
    adapter = adapter_path(lora, ws)
    target = merged_model_dir(out, ws)
    if target.exists() and not overwrite:
        raise LoratuneError(f"{target} already exists; choose another --out or pass --overwrite")
    base = base_model_path(adapter, ws)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
    contract = load_contract(adapter, tokenizer, ws)  # the prompt it was trained with travels with the merged model
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if contract.stop_token_ids:  # plain generate() on the merged folder stops where the adapter learned to stop
        merged.generation_config.eos_token_id = contract.stop_token_ids
    tmp = target.with_name(f".{target.name}.merging")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    save_contract(tmp, contract, tokenizer)  # tokenizer files with the contract's chat template and EOS, prompt.json
    (tmp / "MERGED_FROM.txt").write_text(f"base: {base}\nadapter: {adapter}\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def merged_model_dir(out: str, ws: Workspace) -> Path:
    name = out.removeprefix("models/").rstrip("/")
    return inside(ws.models, check_name(name, "model name"))
