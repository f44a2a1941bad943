"""Merge an adapter into its base model: a plain transformers folder (safetensors + tokenizer) in models/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.adapters.files import clean_stale, fsync_dir, normal_permissions, temporary
from loratune.errors import LoratuneError
from loratune.models.checks import check_model_folder, load_adapter
from loratune.training.pause import pause_point
from loratune.workspace import Workspace, check_name, inside

MERGED_FROM = "MERGED_FROM.txt"  # in each merged model folder: the base and the adapter it was made from


def merged_folders(adapter: Path, ws: Workspace) -> list[Path]:
    """The models/ folders `loras merge` made from this adapter folder (their MERGED_FROM.txt names it)."""
    found = []
    for marker in sorted(ws.models.glob(f"*/{MERGED_FROM}")) if ws.models.is_dir() else []:
        lines = marker.read_text(encoding="utf-8", errors="replace").splitlines()
        named = [line.removeprefix("adapter: ") for line in lines if line.startswith("adapter: ")]
        if named and Path(named[0]).resolve() == adapter.resolve():
            found.append(marker.parent)
    return found


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
    clean_stale(ws.models)
    if target.exists() and not overwrite:
        raise LoratuneError(f"{target} already exists; choose another --out or pass --overwrite")
    # Written under a hidden name, then swapped in: a kill leaves the old model (or none) plus hidden temporaries,
    # which the next command removes (or, for the old model moved aside, puts back), never a half-written model.
    tmp = temporary(target, "merging")
    try:
        write_merged(adapter, base_model_path(adapter, ws), tmp, trust_remote_code, ws)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pause_point("merge-written")
    old = temporary(target, "old")
    if target.exists():
        target.rename(old)  # aside, not deleted: until the new one is in, the old one can still be put back
        pause_point("merge-swap")
    tmp.rename(target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_merged(
    adapter: Path, base: Path, folder: Path, trust_remote_code: bool = False, ws: Workspace | None = None
) -> None:
    """Write base + adapter, merged on the CPU in the base's stored dtype, as a transformers folder `folder`, with
    the adapter's prompt contract (tokenizer files carrying its chat template and EOS, prompt.json)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratune.prompting import load_contract, save_contract  # it imports torch: `loratune --help` must not

    check_model_folder(base)  # pickled or broken weights: one line, as for train and generate
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
    contract = load_contract(adapter, tokenizer, ws or Workspace.resolve(None))
    with torch.no_grad():
        merged = load_adapter(model, adapter).merge_and_unload()
    if contract.stop_token_ids:  # plain generate() on the merged folder stops where the adapter learned to stop
        merged.generation_config.eos_token_id = contract.stop_token_ids
    merged.save_pretrained(folder, safe_serialization=True)
    save_contract(folder, contract, tokenizer)
    (folder / MERGED_FROM).write_text(f"base: {base}\nadapter: {adapter}\n", encoding="utf-8")
    normal_permissions(folder)  # safetensors writes 0600 whatever the umask


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def merged_model_dir(out: str, ws: Workspace) -> Path:
    name = out.removeprefix("models/").rstrip("/")
    return inside(ws.models, check_name(name, "model name"))
