"""adapter.init_from: a run that starts from another LoRA's trained weights (SFT first, then DPO on top of it).

The new run takes that adapter's shape (rank, alpha, targets, rsLoRA, DoRA: its adapter_config.json, so a PEFT adapter
trained elsewhere works too) and its weights. For the methods with a reference (dpo, ipo, kto) the reference is then
the starting adapter, as TRL's reference is the SFT model: its log-probs come from the same model with the starting
weights put in place of the trained ones for the no-grad pass (`swapped_in`), so no second copy of the base is held.
The starting weights are copied into the run folder (START), so a resume needs nothing outside it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from loratune.config import AdapterSpec
from loratune.errors import LoratuneError

START = "start_adapter.safetensors"  # in the run folder: the weights the run started from (reference methods only)


def starting_adapter(current: AdapterSpec, ws, run_dir: Path, resuming: bool, reference: bool):
    """(the adapter group of a run with adapter.init_from, the weights file it starts from). A resumed run keeps its
    saved shape, and needs starting weights only for a `reference`: its own copy (START), else the adapter init_from
    names again; a new run takes the shape that adapter's adapter_config.json gives."""
    from loratune.config import adapter_from_run

    if not resuming:
        folder = _init_folder(current.init_from, ws, run_dir)
        return start_shape(folder, current), folder / "adapter_model.safetensors"
    shape = adapter_from_run(run_dir, current)  # as the run was trained; its checkpoint holds the weights
    if not reference:
        return shape, None
    kept = run_dir / START
    return shape, kept if kept.is_file() else _init_folder(current.init_from, ws, run_dir) / "adapter_model.safetensors"


def _init_folder(init_from: str, ws, run_dir: Path) -> Path:
    """The adapter folder init_from names; never the run's own folder (a new run replaces it)."""
    from loratune.adapters.catalog import adapter_path

    folder = adapter_path(init_from, ws, folders=True)
    if folder.resolve() == run_dir.resolve() or run_dir.resolve() in folder.resolve().parents:
        raise LoratuneError(
            f"adapter.init_from {init_from!r} is this run's own folder, which a new run replaces: train "
            "the new run under another --name"
        )
    return folder


def start_shape(folder: Path, current: AdapterSpec) -> AdapterSpec:
    """The adapter group of a run starting from the adapter in `folder`: its shape, this run's dropout."""
    try:
        saved = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoratuneError(f"adapter.init_from: cannot read {folder / 'adapter_config.json'} ({e})") from None
    targets = saved.get("target_modules")
    if saved.get("peft_type", "LORA") != "LORA" or not saved.get("r") or not targets:
        raise LoratuneError(
            f"adapter.init_from: {folder} is not a LoRA adapter (adapter_config.json has no r / targets)"
        )
    if isinstance(targets, list):
        targets = ",".join(sorted(targets))
    return dataclasses.replace(
        current,
        rank=int(saved["r"]),
        alpha=int(saved.get("lora_alpha") or saved["r"]),
        targets=str(targets),
        rslora=bool(saved.get("use_rslora", False)),
        dora=bool(saved.get("use_dora", False)),
    )


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """The adapter's parameters by name (trained or not: a loaded adapter is frozen)."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def _copies(model) -> dict[str, torch.Tensor]:
    """A copy of the adapter's weights as they are now, by parameter name."""
    return {name: p.detach().clone() for name, p in adapter_tensors(model).items()}


def load_start(model, weights: Path) -> dict[str, torch.Tensor]:
    """Put the adapter file `weights` into `model`'s adapter (a refusal in one line if its shape differs) and return
    a copy of them by parameter name (the reference's weights)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        result = set_peft_model_state_dict(model, load_file(weights))
    except RuntimeError as e:  # size mismatch: another base model, or another rank than its config says
        first = str(e).strip().splitlines()[-1].strip()
        raise LoratuneError(f"adapter.init_from: {weights} does not fit this model's adapter ({first})") from None
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise LoratuneError(
            f"adapter.init_from: {weights} holds weights this model has no place for ({unexpected[0]}, ...): "
            "was it trained on another base model?"
        )
    return _copies(model)


def start_weights_of(model, weights: Path) -> dict[str, torch.Tensor]:
    """The adapter file `weights` by `model`'s parameter names, leaving `model`'s own adapter as it is."""
    own = _copies(model)
    start = load_start(model, weights)
    _copy_into(model, own)
    return start


def keep_start(source: Path, run_dir: Path) -> None:
    """Copy the starting adapter's weights into the run folder (under a temporary name, then renamed)."""
    from loratune.adapters.files import fsync_dir, normal_permissions, temporary

    tmp = temporary(run_dir / START, "tmp")  # a kill leaves this hidden name, cleaned by the next run
    shutil.copyfile(source, tmp)
    normal_permissions(tmp)
    tmp.replace(run_dir / START)
    fsync_dir(run_dir)


@contextmanager
def swapped_in(model, weights: dict[str, torch.Tensor]):
    """`model`'s adapter holds `weights` inside the block, its own weights again after it (no-grad passes only)."""
    saved = _copies(model)
    _copy_into(model, weights)
    try:
        yield
    finally:
        _copy_into(model, saved)


def _copy_into(model, weights: dict[str, torch.Tensor]) -> None:
    params = adapter_tensors(model)
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
