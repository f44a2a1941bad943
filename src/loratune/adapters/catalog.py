"""The adapters in loras/: list them with their checkpoints and losses, promote a checkpoint (and undo it), delete.

A run folder's own adapter files are what `generate --lora name`, merge and export use. Training writes them together
with `adapter_step.json` (the step they come from and the weights' SHA-256), and writes the same weights as a complete
checkpoint of that step, so the final adapter is never the only copy. Promoting copies a checkpoint's adapter files
over the run's (each replaced atomically) and records the checkpoint, and the way back, in `promoted.json`; the hashes
make a record that no longer matches the weights (a later training run rewrote them) count for nothing.
`promote --undo` puts back the adapter the run had before its first promote (the one training ended with).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from loratune.adapters.files import (
    clean_stale,
    fsync_dir,
    read_record,
    sha256,
    temporary,
    write_json,
)
from loratune.errors import LoratuneError
from loratune.rundir import (
    ADAPTER_FILES,
    ADAPTER_STEP,
    CHECKPOINT_PREFIX,
    COMPLETE,
    CONFIG,
    PROMOTED,
    checkpoint_folders,
    checkpoint_name,
    checkpoint_step,
    is_complete,
    read_json,
    read_losses,
    read_retention,
    saved_model_source,
)
from loratune.training.lock import hold, is_training
from loratune.workspace import Workspace, check_name, inside

WEIGHTS = "adapter_model.safetensors"
BEFORE_PROMOTE = "adapter-before-promote"  # a copy of the adapter promote replaced, when no checkpoint holds it


@dataclass
class CheckpointInfo:
    name: str  # checkpoint-000200
    path: Path
    step: int
    loss: float | None  # the logged loss of that optimizer step (None when it was not logged)
    complete: bool  # only complete checkpoints can be resumed from or promoted
    retention: dict | None = None  # {retention_kl, retention_same} measured at that step (None: not measured)


@dataclass
class AdapterInfo:
    name: str
    path: Path
    base_model: str  # as recorded by peft (a folder path for models trained here), else by the run's loratune.yaml
    rank: int | None
    alpha: float | None
    targets: list[str]
    step: int | None  # the optimizer step the run folder's adapter comes from (None: unknown or not trained yet)
    loss: float | None  # the logged loss at that step
    promoted_from: str | None  # checkpoint name, when a checkpoint was promoted to be the adapter
    has_adapter: bool  # False while the first run is still training (only checkpoints so far)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    training: bool = False  # a live training run holds the folder's lock
    retention: dict | None = None  # {retention_kl, retention_same} at the adapter's step (None: not measured)


def list_adapters(home: str | Path | Workspace | None = None) -> list[AdapterInfo]:
    """Every run folder in loras/ (sorted by name) that holds an adapter, a checkpoint or a config.

    Also cleans what killed commands left (hidden temporaries of dead processes) in loras/ and models/.
    """
    ws = _workspace(home)
    clean_workspace(ws)
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


def clean_workspace(ws: Workspace) -> list[str]:
    """Remove the hidden temporaries killed commands left in loras/, each run folder, its checkpoints and models/.

    A run folder a live training run holds is left alone: its temporaries may be the ones it is writing.
    """
    cleaned = clean_stale(ws.loras) + clean_stale(ws.models)
    for run in sorted(ws.loras.iterdir()) if ws.loras.is_dir() else []:
        if run.name.startswith(".") or not run.is_dir() or run.is_symlink() or is_training(run):
            continue
        cleaned += clean_stale(run)
        for checkpoint in checkpoint_folders(run):
            if not checkpoint.is_symlink():
                cleaned += clean_stale(checkpoint)
    return cleaned


def adapter_info(folder: Path) -> AdapterInfo:
    losses, retained = read_losses(folder), read_retention(folder)
    checkpoints = _checkpoints(folder, losses)
    for checkpoint in checkpoints:
        checkpoint.retention = retained.get(checkpoint.step)
    config = read_json(folder / "adapter_config.json")
    has_adapter = all((folder / f).is_file() for f in ADAPTER_FILES)
    training = is_training(folder)
    promoted, step = None, None
    if has_adapter:
        digest = sha256(folder / WEIGHTS)
        record = read_record(folder / PROMOTED, digest)
        if record is not None:
            promoted = str(record["checkpoint"])
            step = record.get("step", checkpoint_step(promoted))
        else:
            step = _adapter_step(folder, digest, checkpoints, losses, training)
    targets = config.get("target_modules") or []
    return AdapterInfo(
        name=folder.name,
        path=folder,
        base_model=(recorded_bases(folder) or [""])[0],
        rank=config.get("r"),
        alpha=config.get("lora_alpha"),
        targets=sorted(targets) if isinstance(targets, list) else [str(targets)],
        step=step,
        loss=losses.get(step) if step is not None else None,
        promoted_from=promoted,
        has_adapter=has_adapter,
        checkpoints=checkpoints,
        training=training,
        retention=retained.get(step) if step is not None else None,
    )


def _checkpoints(folder: Path, losses: dict[int, float]) -> list[CheckpointInfo]:
    found = []
    for path in checkpoint_folders(folder):
        step = checkpoint_step(path.name)
        found.append(CheckpointInfo(path.name, path, step, losses.get(step), is_complete(path)))
    return found


def _adapter_step(folder: Path, digest: str, checkpoints: list, losses: dict, training: bool) -> int | None:
    """The step the run folder's adapter comes from: its record, else the complete checkpoint with the same weights.

    Runs trained before `adapter_step.json` existed fall back to the last logged step, but never while a run trains:
    a resumed run logs steps past the adapter's (the adapter was written when the run before ended).
    """
    record = read_record(folder / ADAPTER_STEP, digest)
    if record is not None and isinstance(record.get("step"), int):
        return record["step"]
    for c in reversed(checkpoints):
        if c.complete and (c.path / WEIGHTS).is_file() and sha256(c.path / WEIGHTS) == digest:
            return c.step
    if training or not losses or (folder / ADAPTER_STEP).exists():
        return None
    return max(losses)


def promote(name: str, checkpoint: str, home: str | Path | Workspace | None = None) -> AdapterInfo:
    """Make `checkpoint` (e.g. 'checkpoint-000200' or '200') the run's adapter; returns the updated info.

    Undo it with `undo_promote`: the adapter it replaces stays in a complete checkpoint (training writes the final
    step as one), or is copied to `adapter-before-promote/` first when no checkpoint holds it (older runs).
    """
    folder = _run_folder(name, home)
    source = checkpoint_path(folder, checkpoint)
    if not is_complete(source):
        raise LoratuneError(f"{source} is not a complete checkpoint (it was interrupted while being written)")
    missing = [f for f in ADAPTER_FILES if not (source / f).is_file()]
    if missing:
        raise LoratuneError(f"{source} has no {', '.join(missing)}")
    with hold(folder, f"promote {source.name}"):
        clean_stale(folder)
        way_back = _way_back(folder)
        # The record first, naming the weights it describes: until they are copied it matches nothing, and a kill
        # at any point leaves the old adapter or the new one, with the way back already written down.
        record = {"checkpoint": source.name, "step": checkpoint_step(source.name), "sha256": sha256(source / WEIGHTS)}
        write_json(folder / PROMOTED, {**record, "undo": way_back})
        _copy_adapter(source, folder, "promote")
    return adapter_info(folder)


def undo_promote(name: str, home: str | Path | Workspace | None = None) -> AdapterInfo:
    """Put back the adapter the run had before it was first promoted (the one its training ended with)."""
    folder = _run_folder(name, home)
    with hold(folder, "undo the promote"):
        clean_stale(folder)
        weights = folder / WEIGHTS
        record = read_record(folder / PROMOTED, sha256(weights)) if weights.is_file() else None
        if record is None:
            raise LoratuneError(f"nothing to undo: the adapter in {folder} is not a promoted checkpoint")
        back = record.get("undo")
        if not isinstance(back, dict) or not back.get("folder"):
            raise LoratuneError(f"nothing to undo: {folder} had no adapter before {record['checkpoint']} was promoted")
        source = inside(folder, check_name(str(back["folder"]), "folder in promoted.json"))
        if not (source / WEIGHTS).is_file() or sha256(source / WEIGHTS) != back.get("sha256"):
            raise LoratuneError(
                f"cannot undo: {source}, which held the adapter before the promote, is gone or changed; "
                "promote another checkpoint instead (loratune loras list shows them)"
            )
        _copy_adapter(source, folder, "promote")
        write_json(folder / ADAPTER_STEP, {"step": back.get("step"), "sha256": back["sha256"]})
        (folder / PROMOTED).unlink(missing_ok=True)
        if source.name == BEFORE_PROMOTE:
            _remove_atomically(source)
    return adapter_info(folder)


def _way_back(folder: Path) -> dict | None:
    """Where the adapter about to be replaced can be found again: {'folder', 'step', 'sha256'} (None: no adapter)."""
    weights = folder / WEIGHTS
    if not all((folder / f).is_file() for f in ADAPTER_FILES):
        return None
    digest = sha256(weights)
    promoted = read_record(folder / PROMOTED, digest)
    if promoted is not None:  # promoted already: the way back stays the one to the adapter before the first promote
        return promoted.get("undo")
    losses = read_losses(folder)
    checkpoints = _checkpoints(folder, losses)
    for c in reversed(checkpoints):
        if c.complete and (c.path / WEIGHTS).is_file() and sha256(c.path / WEIGHTS) == digest:
            return {"folder": c.name, "step": c.step, "sha256": digest}
    step = _adapter_step(folder, digest, checkpoints, losses, training=False)  # we hold the lock: nobody trains
    backup = folder / BEFORE_PROMOTE
    tmp = temporary(backup, "tmp")
    tmp.mkdir()
    for file in (*ADAPTER_FILES, ADAPTER_STEP):
        if (folder / file).is_file():
            shutil.copyfile(folder / file, tmp / file)
    _sync_files(tmp)
    if backup.exists():
        _remove_atomically(backup)
    tmp.rename(backup)
    fsync_dir(folder)
    return {"folder": BEFORE_PROMOTE, "step": step, "sha256": digest}


def _copy_adapter(source: Path, folder: Path, tag: str) -> None:
    """Copy the adapter files of `source` over `folder`'s: each beside, synced, then renamed in; the weights last."""
    from loratune.training.pause import pause_point

    for file in ADAPTER_FILES:
        tmp = temporary(folder / file, tag)
        shutil.copyfile(source / file, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        pause_point("promote-copy")
        os.replace(tmp, folder / file)
    fsync_dir(folder)


def promoted_checkpoint(folder: Path) -> str | None:
    """The checkpoint the run's adapter was promoted from, if the adapter file is still that one."""
    weights = folder / WEIGHTS
    record = read_record(folder / PROMOTED, sha256(weights)) if weights.is_file() else None
    return str(record["checkpoint"]) if record else None


def delete(name: str, home: str | Path | Workspace | None = None, checkpoint: str | None = None) -> Path:
    """Delete a whole run folder, or only one of its checkpoints; returns what was deleted.

    Refused while a training run holds the folder. The target is first renamed to a hidden name beside it, then
    removed: a kill leaves either all of it or a hidden leftover that the next command removes.
    """
    ws = _workspace(home)
    folder = ws.lora_dir(name)
    if not folder.is_dir():
        raise LoratuneError(f"no adapter named {name!r} in {ws.loras}")
    target = checkpoint_path(folder, checkpoint) if checkpoint else folder
    with hold(folder, f"delete {'it' if target == folder else target.name}"):
        _remove_atomically(target)
    return target


def _remove_atomically(target: Path) -> None:
    from loratune.training.pause import pause_point

    aside = temporary(target, "deleting")
    target.rename(aside)
    fsync_dir(target.parent)
    pause_point("delete")
    (aside / COMPLETE).unlink(missing_ok=True)  # a half-removed checkpoint must never look complete
    shutil.rmtree(aside)


def _run_folder(name: str, home) -> Path:
    folder = _workspace(home).lora_dir(name)
    if not folder.is_dir() or not _looks_like_run(folder):
        raise LoratuneError(f"no adapter named {name!r} in {folder.parent}")
    return folder


def _sync_files(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb+") as f:
            os.fsync(f.fileno())
    fsync_dir(folder)


def checkpoint_path(folder: Path, checkpoint: str) -> Path:
    """'checkpoint-000200', '000200' or '200' inside a run folder, checked to exist and to stay inside it."""
    text = checkpoint.removeprefix(CHECKPOINT_PREFIX)
    if text.isdigit():
        checkpoint = checkpoint_name(int(text))
    path = inside(folder, check_name(checkpoint, "checkpoint name"))
    if not path.is_dir() or checkpoint_step(path.name) is None:
        have = ", ".join(p.name for p in sorted(folder.glob(CHECKPOINT_PREFIX + "*"))) or "none"
        raise LoratuneError(f"no checkpoint {checkpoint!r} in {folder} (have: {have})")
    return path


# ---------------------------------------------------------------- the one resolver of adapters and their base models
# generate, chat, merge, export, serve and the UI all find an adapter and its base model here.


def adapter_path(spec: str, home: str | Path | Workspace | None = None, folders: bool = False) -> Path:
    """The folder holding the adapter `spec` names: `name` or `name/checkpoint-000200` (or `name/200`) in loras/;
    with `folders` (the command line's --lora), also an adapter folder anywhere, given as its path (looked at first).

    The browser and the API never pass `folders`: they can only name what is in loras/. Either way the folder passes
    the same safetensors-only check (never a pickle).
    """
    ws = _workspace(home)
    if folders:
        given = Path(spec).expanduser()
        if (given / "adapter_config.json").is_file():
            return _checked_adapter(given)
        if given.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
            raise LoratuneError(f"no adapter at '{spec}' (looked for adapter_config.json as given and in {ws.loras})")
    name, _, checkpoint = spec.partition("/")
    folder = ws.lora_dir(name)
    path = checkpoint_path(folder, checkpoint) if checkpoint else folder
    if not (path / "adapter_config.json").is_file():
        raise LoratuneError(f"no adapter at {spec!r} (no adapter_config.json in {path})")
    return _checked_adapter(path)


def _checked_adapter(path: Path) -> Path:
    from loratune.models.checks import check_adapter_folder

    check_adapter_folder(path)  # one rule everywhere (serve, merge, export): safetensors only, never a pickle
    return path


def recorded_bases(adapter: Path) -> list[str]:
    """The base model of an adapter folder as recorded: by peft (adapter_config.json's base_model_name_or_path, the
    model's folder for models trained here), then by the run (model.source in its loratune.yaml). Either may be
    missing, and a recorded folder may since have moved."""
    peft = read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    return [str(base) for base in (peft, saved_model_source(adapter)) if base]


def base_model_path(adapter: Path, home: str | Path | Workspace | None = None, trust_remote_code: bool = False) -> Path:
    """The base model folder an adapter was trained on: the folder peft recorded while it is still there, else the
    model source the run's loratune.yaml gives, found as `train` found it (models/<name>, a hub id's download folder,
    'default'), so a workspace moved elsewhere still works."""
    from loratune.models import resolve_model_path

    recorded = read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    if recorded and (Path(str(recorded)) / "config.json").is_file():
        return Path(str(recorded))
    source = saved_model_source(adapter)
    if source:
        return resolve_model_path(source, _workspace(home), trust_remote_code)
    raise LoratuneError(
        f"{adapter}: its base model {recorded!r} is not on this machine; pass the model explicitly (--model)"
    )


def _looks_like_run(folder: Path) -> bool:
    return any((folder / f).exists() for f in (*ADAPTER_FILES, CONFIG)) or any(folder.glob(CHECKPOINT_PREFIX + "*"))


def _workspace(home: str | Path | Workspace | None) -> Workspace:
    return home if isinstance(home, Workspace) else Workspace.resolve(home)
