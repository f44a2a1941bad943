"""What protects a run while it trains: one writer per run folder, and a checkpoint when it crashes.

`train()` runs inside `with RunGuard() as guard:`. Setup `claim`s the run folder (the lock, once the folder exists) and,
once the model, optimizer and data are built, hands the guard the `Run` to `protect`. If the run then fails with an
unexpected exception (out of memory, a driver error, our bug), the guard saves the last finished step as a complete
checkpoint before the error goes on, so nothing done before the failure is lost. It saves nothing after a
LoratuneError (a NaN loss, a bad file) or a second Ctrl-C: those never replace or add a checkpoint.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loratune.errors import LoratuneError
from loratune.rundir import checkpoint_name
from loratune.training.checkpoint import checkpoint_dir, is_complete, latest_checkpoint
from loratune.training.lock import RunLock
from loratune.training.resume import resume_command

if TYPE_CHECKING:
    from loratune.training.setup import Run

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class RunGuard:
    def __init__(self):
        self.lock = RunLock()
        self.run_dir: Path | None = None  # the run folder, from `claim` on
        self.home: Path | None = None  # the workspace, for a resume hint that works from any folder
        self.run: Run | None = None  # from `protect` on: what a failure saves

    def __enter__(self) -> RunGuard:
        return self

    def claim(self, run_dir: Path, home: Path, is_main_process: bool = True) -> None:
        """Lock the run folder for this run: a no-op until the folder exists, so call it again once it is created
        (only the main process writes, so only it locks)."""
        self.run_dir, self.home = run_dir, home
        if is_main_process:
            self.lock.acquire(run_dir)

    def protect(self, run: Run) -> None:
        """From here on, an unexpected failure saves the last finished step of `run` as a checkpoint."""
        self.run = run

    def __exit__(self, kind, error, tb) -> None:
        try:
            if isinstance(error, Exception) and not isinstance(error, LoratuneError):
                self._on_failure(error)
        finally:
            self.lock.release()

    def _on_failure(self, error: Exception) -> None:
        # The scheduler counts the optimizer steps taken, even when the failure came after an optimizer step but
        # before the loop counted it (in a callback, a metrics write): the weights belong to that step.
        step = self.run.scheduler.last_epoch if self.run is not None else 0
        where = f"at step {step + 1}" if self.run is not None else "before the first step"
        if is_disk_full(error):
            then = f"continue with: {self.resume_hint()}" if self.resumable() else "start again"
            raise LoratuneError(
                f"disk full after step {step} while writing in {self.run_dir} ({reason(error)}); nothing "
                f"half-written was kept; free some space, then {then}"
            ) from error
        saved = self._rescue(step)
        if is_out_of_memory(error):
            micro_batch = self.run.config.train.micro_batch if self.run is not None else 0
            smaller = max(1, micro_batch // 2)
            again = (
                f"continue with a smaller micro-batch: {self.resume_hint('--train.micro_batch', str(smaller))}"
                if self.resumable()
                else f"start again with a smaller micro-batch: --train.micro_batch {smaller}"
            )
            raise LoratuneError(
                f"out of memory {where} with train.micro_batch {micro_batch}; {saved}; {again} "
                "(the batch size stays the same)"
            ) from error
        after = f"; after fixing the cause: {self.resume_hint()}" if self.resumable() else ""
        print(f"loratune: training failed {where}: {saved}{after}", file=sys.stderr)

    def resumable(self) -> bool:
        return self.run_dir is not None and self.run_dir.is_dir() and latest_checkpoint(self.run_dir) is not None

    def resume_hint(self, *extra: str) -> str:
        return resume_command(self.home or self.run_dir.parent.parent, self.run_dir.name, *extra)

    def _rescue(self, step: int) -> str:
        """Save `step` (the last finished one) if that is new work; say what was saved (or why not)."""
        if self.run is None or self.run_dir is None:
            return "nothing was trained yet"
        if step == 0:
            return "no step had finished, so there was nothing to save"
        if is_complete(checkpoint_dir(self.run_dir, step)):
            return f"{checkpoint_name(step)} holds all finished steps"
        if self.run.sharded:  # gathering the shards needs every process, and the others may be gone or stuck
            latest = latest_checkpoint(self.run_dir)
            kept = f"{latest.name} is the last complete checkpoint" if latest else "no checkpoint was written yet"
            return f"under FSDP each process holds a shard of the adapter, so nothing was saved now; {kept}"
        try:
            self.run.save_checkpoint(step, write=True)
        except Exception as e:
            return f"saving {checkpoint_name(step)} failed too ({type(e).__name__}: {e})"
        return f"saved the {step} finished steps as {checkpoint_name(step)}"


def is_disk_full(error: BaseException) -> bool:
    """Out of space, over quota or over the file-size limit, from Python (OSError) or from safetensors' Rust writer."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return True
    return any(f"os error {code})" in str(error) for code in DISK_FULL)


def reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).rsplit(": ", 1)[-1].split(" (os error")[0]


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
