"""Atomic checkpoints: write into a temporary folder beside the target, fsync, rename, mark complete last.

A checkpoint folder is a complete PEFT adapter (loadable with `PeftModel.from_pretrained`) plus the training state
(optimizer, scheduler, RNG, step and data position) as `training_state.safetensors` (the tensors) and
`training_state.json` (everything else): no pickle, so loading a checkpoint can never run code. Only folders holding
the completion marker are ever resumed from; the others are reported and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from array import array
from pathlib import Path

import torch

from loratune.adapters.files import ADAPTER_STEP, clean_stale, normal_permissions, sha256, write_json
from loratune.errors import LoratuneError
from loratune.prompting import copy_contract
from loratune.rundir import CHECKPOINT_PREFIX, COMPLETE, LOCK, PROMOTED, checkpoint_name, checkpoint_step
from loratune.training.pause import pause_point

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / checkpoint_name(step)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    weights: dict,
    optimizer_state: dict,
    scheduler,
    keep: int = 0,
    position: dict | None = None,
) -> Path:
    """Write checkpoint-<step> atomically; then keep only the newest `keep` complete ones (0: all).

    `weights` are the adapter's (sharding.adapter_weights) and `optimizer_state` the optimizer's state dict, whole
    (under FSDP gathered from every process first): the checkpoint is the same whatever the number of processes.
    """
    target = checkpoint_dir(run_dir, step)
    bad = next((name for name, w in weights.items() if not torch.isfinite(w).all()), None)
    if bad is not None:  # a checkpoint is only ever complete with weights a resume can train on
        raise LoratuneError(
            f"the adapter weights are not finite at step {step} ({bad}), so no checkpoint was written; lower "
            "train.lr or train.weight_decay and start again with --overwrite"
        )
    tmp = run_dir / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=weights)
        copy_contract(run_dir, tmp)  # prompt.json and tokenizer files: a checkpoint is prompted like its run
        pause_point("checkpoint-write")
        state = {
            "step": step,
            "position": {**(position or {}), **_epoch_of(step, position)},
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        write_state(tmp, state)
        normal_permissions(tmp)  # safetensors writes 0600 whatever the umask
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full, Ctrl-C twice) leaves nothing half-done
        raise
    old = run_dir / f".{target.name}.old-{os.getpid()}"
    if target.exists():  # moved aside, not deleted first, so a kill here still leaves a loadable folder
        target.rename(old)
    tmp.rename(target)
    pause_point("checkpoint-rename")
    _write_synced(target / COMPLETE, f"{step}\n")
    _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    prune(run_dir, keep, protect=target)
    return target


def _epoch_of(step: int, position: dict | None) -> dict:
    per_epoch = (position or {}).get("steps_per_epoch")
    return {"epoch": step // per_epoch, "step_in_epoch": step % per_epoch} if per_epoch else {}


def save_adapter(run_dir: Path, model, weights: dict, step: int | None = None) -> None:
    """The final adapter (`weights`, whole: sharding.adapter_weights) into the run folder itself; each file replaced
    atomically, so none is ever truncated.

    With `step`, `adapter_step.json` records the step these weights come from (with their hash), so the LoRAs list
    shows it, not the step a later resumed run has reached. The weights file is replaced last, after the config.
    """
    tmp = run_dir / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=weights)
        normal_permissions(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for file in sorted(tmp.iterdir(), key=lambda f: f.name == "adapter_model.safetensors"):
        os.replace(file, run_dir / file.name)
        pause_point("final-save")
    tmp.rmdir()
    _fsync_dir(run_dir)
    weights = run_dir / "adapter_model.safetensors"
    if step is not None and weights.is_file():
        write_json(run_dir / ADAPTER_STEP, {"step": step, "sha256": sha256(weights)})
    (run_dir / PROMOTED).unlink(missing_ok=True)  # describes weights that are gone now


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE).is_file()


def step_of(checkpoint: Path) -> int:
    return checkpoint_step(checkpoint.name)


def checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-<step> folders, oldest first (complete or not); symlinks are never followed out of the run."""
    found = [
        p
        for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and checkpoint_step(p.name) is not None and _own_folder(p, run_dir)
    ]
    return sorted(found, key=step_of)


def _own_folder(path: Path, run_dir: Path) -> bool:
    """A real folder of this run, not a link planted to elsewhere: resume must not read state from outside the
    workspace, and prune must not delete through it (a link's target may be anyone's files)."""
    return not path.is_symlink() and path.resolve().parent == run_dir.resolve()


def latest_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for p in checkpoints(run_dir) if is_complete(p)]
    return complete[-1] if complete else None


def incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Names of checkpoint folders a kill interrupted (no COMPLETE marker) and of leftover temporary folders."""
    names = [p.name for p in checkpoints(run_dir) if not is_complete(p)]
    return names + sorted(p.name for p in run_dir.glob(f".{CHECKPOINT_PREFIX}*") if p.is_dir())


def clean_leftovers(run_dir: Path) -> None:
    """Remove what interrupted saves, promotes and exports left (only ever called while holding the run's lock).

    A checkpoint moved aside to be replaced (`.checkpoint-N.old-PID`) is put back if its replacement never arrived.
    """
    clean_stale(run_dir, dead_prefixes=(f".{CHECKPOINT_PREFIX}", ".final."))
    for checkpoint in checkpoints(run_dir):
        if not checkpoint.is_symlink():
            clean_stale(checkpoint)


def clear_run_dir(run_dir: Path) -> None:
    """Empty a run folder for --overwrite, keeping its lock file (deleting a held lock would let a second run in)."""
    for entry in run_dir.iterdir() if run_dir.is_dir() else []:
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            (entry / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(entry)
        else:
            entry.unlink()


def prune(run_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep` complete checkpoints (0: keep all), and incomplete ones before the newest.

    `protect` (the checkpoint just written) is never deleted, whatever else the folder holds.
    """
    found = checkpoints(run_dir)
    complete = [p for p in found if is_complete(p)]
    newest = step_of(complete[-1]) if complete else -1
    doomed = complete[:-keep] if keep > 0 else []
    doomed += [p for p in found if not is_complete(p) and step_of(p) < newest]
    for folder in doomed:
        if protect is not None and folder.name == protect.name:
            continue
        (folder / COMPLETE).unlink(missing_ok=True)  # first: a half-deleted folder must never look complete
        shutil.rmtree(folder, ignore_errors=True)


def data_position(samples: list, steps_per_epoch: int, seed: int) -> dict:
    """Besides the step, what fixes the data a step sees: the samples (a fingerprint), the epoch length, the seed.

    A data.store.SampleSet (the cached samples) knows its fingerprint from its stores' digests, with no pass over
    the tokens; a plain list of samples (e.g. after data.eval_split) is hashed sample by sample.
    """
    fingerprint = samples.fingerprint() if hasattr(samples, "fingerprint") else sample_hash(samples)
    return {
        "samples": len(samples),
        "fingerprint": fingerprint,
        "steps_per_epoch": steps_per_epoch,
        "seed": seed,
    }


def sample_hash(samples) -> str:
    """The fingerprint of samples hashed one by one (what every checkpoint held before the samples cache)."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(array("q", sample.input_ids).tobytes())
        digest.update(array("q", sample.labels).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def load_state(checkpoint: Path, model, scheduler, position: dict | None = None, samples=None) -> tuple[int, dict]:
    """Restore adapter weights, scheduler and RNG; return the step to continue from and the optimizer's state.

    The optimizer's state is loaded by the caller once the optimizer holds the parameters it trains: under FSDP,
    the shards that accelerate's `prepare` puts in place of the whole parameters (sharding.shard_optimizer_state).

    With `position`, refuse a resume whose data no longer matches the checkpoint's: its steps would see other samples.
    A checkpoint written before the samples cache holds the sample-by-sample hash: `samples` are hashed that way then.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = read_state(checkpoint)
    saved = state.get("position") or {}
    if position and saved:
        changed = [k for k in ("samples", "fingerprint", "steps_per_epoch", "seed") if saved.get(k) != position[k]]
        if changed == ["fingerprint"] and samples is not None and saved["fingerprint"] == sample_hash(samples):
            changed = []  # the same samples, fingerprinted the older way
        if changed:
            raise LoratuneError(
                f"cannot resume exactly from {checkpoint}: the data or its options changed since it was written "
                f"({', '.join(f'{k} {saved.get(k)} then, {position[k]} now' for k in changed)}); restore them, "
                "or start again with --overwrite"
            )
    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file():
        raise LoratuneError(f"{checkpoint} has no adapter_model.safetensors (loratune loads no pickled weights)")
    set_peft_model_state_dict(model, load_file(weights))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), state["optimizer"]


# ---------------------------------------------------------------- the training state without pickle
# Tensors go to a safetensors file, everything else to JSON; dicts with non-string keys (the optimizer's parameter
# indices) and tuples are tagged, so the state comes back exactly as it was saved.


def write_state(folder: Path, state: dict) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    save_file(tensors, folder / STATE_TENSORS)
    (folder / STATE_JSON).write_text(json.dumps(encoded), encoding="utf-8")


def read_state(folder: Path) -> dict:
    missing = [name for name in (STATE_JSON, STATE_TENSORS) if not (folder / name).is_file()]
    if missing:  # deleted by hand, or a copy made by another tool: no other state file is ever read
        raise LoratuneError(
            f"{folder} has no {' or '.join(missing)} (its training state); resume from another checkpoint or start "
            "again with --overwrite"
        )
    from safetensors.torch import load_file

    tensors = load_file(folder / STATE_TENSORS)
    return _decode(json.loads((folder / STATE_JSON).read_text(encoding="utf-8")), tensors)


def _encode(value, tensors: dict):
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__} ({value!r})")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
