"""Merge an adapter into its base model: a plain transformers folder (safetensors + tokenizer) in models/."""

from __future__ import annotations

import shutil
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.errors import LoratuneError
from loratune.models.checks import check_model_folder, load_adapter
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws = home if isinstance(home, Workspace) else Workspace.resolve(home)
    adapter = adapter_path(lora, ws)
    target = merged_model_dir(out, ws)
    if target.exists() and not overwrite:
        raise LoratuneError(f"{target} already exists; choose another --out or pass --overwrite")
    base = base_model_path(adapter, ws)
    check_model_folder(base)  # pickled or broken weights: one line, as for train and generate
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
    with torch.no_grad():
        merged = load_adapter(model, adapter).merge_and_unload()
    tmp = target.with_name(f".{target.name}.merging")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "MERGED_FROM.txt").write_text(f"base: {base}\nadapter: {adapter}\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def merged_model_dir(out: str, ws: Workspace) -> Path:
    name = out.removeprefix("models/").rstrip("/")
    return inside(ws.models, check_name(name, "model name"))
