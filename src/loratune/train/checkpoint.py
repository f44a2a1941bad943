"""Atomic checkpoints: write into a temporary folder beside the target, fsync, rename, mark complete last.

A checkpoint folder is a complete PEFT adapter (loadable with `PeftModel.from_pretrained`) plus `training_state.pt`
(optimizer, scheduler, RNG, step). Only folders holding the completion marker are ever resumed from.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from loratune.train.pause import pause_point

COMPLETE = "COMPLETE"
STATE = "training_state.pt"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler) -> Path:
    target = checkpoint_dir(run_dir, step)
    tmp = run_dir / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    pause_point("checkpoint-write")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        tmp / STATE,
    )
    _fsync_tree(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    pause_point("checkpoint-rename")
    _write_synced(target / COMPLETE, f"{step}\n")
    _fsync_dir(run_dir)
    return target


def save_adapter(run_dir: Path, model) -> None:
    """The final adapter into the run folder itself; each file replaced atomically, so none is ever truncated."""
    tmp = run_dir / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _fsync_tree(tmp)
    for file in tmp.iterdir():
        os.replace(file, run_dir / file.name)
        pause_point("final-save")
    tmp.rmdir()
    _fsync_dir(run_dir)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE).is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for p in run_dir.glob("checkpoint-*") if is_complete(p)]
    return max(complete, key=lambda p: p.name, default=None)


def load_state(checkpoint: Path, model, optimizer, scheduler) -> int:
    """Restore adapter weights, optimizer, scheduler and RNG; return the step to continue from."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
    state = torch.load(checkpoint / STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


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
