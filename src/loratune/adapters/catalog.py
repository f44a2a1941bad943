"""The adapters in loras/: list them with their checkpoints and losses, promote a checkpoint, delete.

A run folder's own adapter files are what `generate --lora name`, merge and export use. Promoting copies a checkpoint's
adapter files over them (each file replaced atomically) and records which checkpoint it was in `promoted.json`, with
the file's hash, so a later training run that rewrites the adapter is never mistaken for the promoted checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loratune.errors import LoratuneError
from loratune.workspace import Workspace, check_name, inside

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PROMOTED = "promoted.json"
_CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class CheckpointInfo:
    name: str  # checkpoint-000200
    path: Path
    step: int
    loss: float | None  # the logged loss of that optimizer step (None when it was not logged)
    complete: bool  # only complete checkpoints can be resumed from or promoted


@dataclass
class AdapterInfo:
    name: str
    path: Path
    base_model: str  # as recorded by peft (a folder path for models trained here)
    rank: int | None
    alpha: float | None
    targets: list[str]
    step: int | None  # the optimizer step the run folder's adapter comes from (None: unknown or not trained yet)
    loss: float | None  # the logged loss at that step
    promoted_from: str | None  # checkpoint name, when a checkpoint was promoted to be the adapter
    has_adapter: bool  # False while the first run is still training (only checkpoints so far)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)


def list_adapters(home: str | Path | Workspace | None = None) -> list[AdapterInfo]:
    """Every run folder in loras/ (sorted by name) that holds an adapter, a checkpoint or a config."""
    ws = _workspace(home)
    if not ws.loras.is_dir():
        return []
    found = []
    for folder in sorted(ws.loras.iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and _looks_like_run(folder):
            found.append(adapter_info(folder))
    return found


def get_adapter(name: str, home: str | Path | Workspace | None = None) -> AdapterInfo:
    """One run folder's details; a missing name is a LoratuneError."""
    folder = _workspace(home).lora_dir(name)
    if not folder.is_dir() or not _looks_like_run(folder):
        raise LoratuneError(f"no adapter named {name!r} in {folder.parent}")
    return adapter_info(folder)


def adapter_info(folder: Path) -> AdapterInfo:
    losses = read_losses(folder / "metrics.jsonl")
    checkpoints = []
    for path in sorted(folder.glob(_CHECKPOINT_PREFIX + "*")):
        step = _checkpoint_step(path.name)
        if path.is_dir() and step is not None:
            checkpoints.append(CheckpointInfo(path.name, path, step, losses.get(step), (path / "COMPLETE").is_file()))
    config = _read_json(folder / "adapter_config.json")
    has_adapter = all((folder / f).is_file() for f in ADAPTER_FILES)
    promoted = promoted_checkpoint(folder) if has_adapter else None
    if promoted is not None:
        step = _checkpoint_step(promoted)
    elif has_adapter and losses:
        step = max(losses)  # the final adapter is written after the last step
    else:
        step = None
    targets = config.get("target_modules") or []
    return AdapterInfo(
        name=folder.name,
        path=folder,
        base_model=str(config.get("base_model_name_or_path") or _saved_model_source(folder)),
        rank=config.get("r"),
        alpha=config.get("lora_alpha"),
        targets=sorted(targets) if isinstance(targets, list) else [str(targets)],
        step=step,
        loss=losses.get(step) if step is not None else None,
        promoted_from=promoted,
        has_adapter=has_adapter,
        checkpoints=checkpoints,
    )


def read_losses(metrics: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    losses: dict[int, float] = {}
    if not metrics.is_file():
        return losses
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            loss = float(row["loss"])
            losses[int(row["step"])] = loss if math.isfinite(loss) else float("nan")
        except (ValueError, KeyError, TypeError):
            continue
    return losses


def promote(name: str, checkpoint: str, home: str | Path | Workspace | None = None) -> AdapterInfo:
    """Make `checkpoint` (e.g. 'checkpoint-000200' or '200') the run's adapter; returns the updated info."""
    ws = _workspace(home)
    folder = ws.lora_dir(name)
    source = checkpoint_path(folder, checkpoint)
    if not (source / "COMPLETE").is_file():
        raise LoratuneError(f"{source} is not a complete checkpoint (it was interrupted while being written)")
    missing = [f for f in ADAPTER_FILES if not (source / f).is_file()]
    if missing:
        raise LoratuneError(f"{source} has no {', '.join(missing)}")
    for file in ADAPTER_FILES:  # copy beside, then rename: the run folder never holds a half-written file
        tmp = folder / f".{file}.promote-{os.getpid()}"
        shutil.copyfile(source / file, tmp)
        os.replace(tmp, folder / file)
    record = {"checkpoint": source.name, "sha256": _sha256(folder / "adapter_model.safetensors")}
    tmp = folder / f".{PROMOTED}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, folder / PROMOTED)
    return adapter_info(folder)


def promoted_checkpoint(folder: Path) -> str | None:
    """The checkpoint the run's adapter was promoted from, if the adapter file is still that one."""
    record = _read_json(folder / PROMOTED)
    if not record.get("checkpoint") or record.get("sha256") != _sha256(folder / "adapter_model.safetensors"):
        return None
    return str(record["checkpoint"])


def delete(name: str, home: str | Path | Workspace | None = None, checkpoint: str | None = None) -> Path:
    """Delete a whole run folder, or only one of its checkpoints; returns what was deleted."""
    ws = _workspace(home)
    folder = ws.lora_dir(name)
    if not folder.is_dir():
        raise LoratuneError(f"no adapter named {name!r} in {ws.loras}")
    target = checkpoint_path(folder, checkpoint) if checkpoint else folder
    shutil.rmtree(target)
    return target


def checkpoint_path(folder: Path, checkpoint: str) -> Path:
    """'checkpoint-000200', '000200' or '200' inside a run folder, checked to exist and to stay inside it."""
    text = checkpoint.removeprefix(_CHECKPOINT_PREFIX)
    if text.isdigit():
        checkpoint = f"{_CHECKPOINT_PREFIX}{int(text):06d}"
    path = inside(folder, check_name(checkpoint, "checkpoint name"))
    if not path.is_dir() or _checkpoint_step(path.name) is None:
        have = ", ".join(p.name for p in sorted(folder.glob(_CHECKPOINT_PREFIX + "*"))) or "none"
        raise LoratuneError(f"no checkpoint {checkpoint!r} in {folder} (have: {have})")
    return path


def adapter_path(spec: str, home: str | Path | Workspace | None = None) -> Path:
    """`name` or `name/checkpoint-000200` in loras/ -> the folder holding adapter_config.json."""
    ws = _workspace(home)
    name, _, checkpoint = spec.partition("/")
    folder = ws.lora_dir(name)
    path = checkpoint_path(folder, checkpoint) if checkpoint else folder
    if not (path / "adapter_config.json").is_file():
        raise LoratuneError(f"no adapter at {spec!r} (no adapter_config.json in {path})")
    from loratune.models.checks import check_adapter_folder

    check_adapter_folder(path)  # one rule everywhere (serve, merge, export): safetensors only, never a pickle
    return path


def base_model_path(adapter: Path, home: str | Path | Workspace | None = None) -> Path:
    """The base model folder an adapter was trained on: peft's record, else the run's saved model source."""
    from loratune.models import resolve_model_path

    recorded = _read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    if recorded and (Path(recorded) / "config.json").is_file():
        return Path(recorded)
    source = _saved_model_source(adapter) or _saved_model_source(adapter.parent)
    if source:
        return resolve_model_path(source, _workspace(home))
    raise LoratuneError(f"{adapter}: its base model {recorded!r} is not on this machine; pass the model explicitly")


def _saved_model_source(folder: Path) -> str:
    saved = folder / "loratune.yaml"
    if not saved.is_file():
        return ""
    data = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    return str((data.get("model") or {}).get("source") or "")


def _looks_like_run(folder: Path) -> bool:
    return any((folder / f).exists() for f in (*ADAPTER_FILES, "loratune.yaml")) or any(
        folder.glob(_CHECKPOINT_PREFIX + "*")
    )


def _checkpoint_step(name: str) -> int | None:
    digits = name.removeprefix(_CHECKPOINT_PREFIX)
    return int(digits) if name.startswith(_CHECKPOINT_PREFIX) and digits.isdigit() else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _workspace(home: str | Path | Workspace | None) -> Workspace:
    return home if isinstance(home, Workspace) else Workspace.resolve(home)
