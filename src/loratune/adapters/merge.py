"""Merge an adapter into its base model: a plain transformers folder (safetensors + tokenizer) in models/."""

from __future__ import annotations

import shutil
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.errors import LoratuneError
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
    ws = home if isinstance(home, Workspace) else Workspace.resolve(home)
    adapter = adapter_path(lora, ws)
    target = merged_model_dir(out, ws)
    if target.exists() and not overwrite:
        raise LoratuneError(f"{target} already exists; choose another --out or pass --overwrite")
    tmp = target.with_name(f".{target.name}.merging")
    shutil.rmtree(tmp, ignore_errors=True)
    write_merged(adapter, base_model_path(adapter, ws), tmp, trust_remote_code)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def write_merged(adapter: Path, base: Path, folder: Path, trust_remote_code: bool = False) -> None:
    """Write base + adapter, merged on the CPU in the base's stored dtype, as a transformers folder `folder`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "MERGED_FROM.txt").write_text(f"base: {base}\nadapter: {adapter}\n", encoding="utf-8")


def merged_model_dir(out: str, ws: Workspace) -> Path:
    name = out.removeprefix("models/").rstrip("/")
    return inside(ws.models, check_name(name, "model name"))
