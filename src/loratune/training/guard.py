"""What protects a run while it trains: graceful stop, one writer per run folder, and a checkpoint when it crashes.

`train()` runs inside `with RunGuard(stop) as guard:`. The loop tells the guard what to save (`watch`) and reports each
finished step (`after_step`, which also says when to stop). If the run then fails with an unexpected exception (out of
memory, a driver error, our bug), the guard saves the last finished step as a complete checkpoint before the error
goes on, so nothing done before the failure is lost. It saves nothing after a LoratuneError (a NaN loss, a bad file)
or a second Ctrl-C: those never replace or add a checkpoint.
"""

from __future__ import annotations

import errno
import pickle
import sys
from pathlib import Path

import torch

from loratune.errors import LoratuneError
from loratune.training.checkpoint import checkpoint_dir, is_complete, latest_checkpoint, save_checkpoint
from loratune.training.lock import RunLock
from loratune.training.resume import resume_command
from loratune.training.stop import StopRequest, StopSource

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class RunGuard:
    def __init__(self, stop: StopSource = None):
        self.stop = StopRequest(stop)
        self.lock = RunLock()
        self.run_dir: Path | None = None
        self.saving = None  # (model, optimizer, scheduler, keep, data position) once the loop starts
        self.step = 0
        self.micro_batch = 0
        self.name = ""
        self.home: Path | None = None  # the workspace, for a resume hint that works from any folder
        self.stop_at_loss = 0.0
        self.reached_loss = False
        self.progress = None

    def __enter__(self) -> RunGuard:
        self.stop.__enter__()
        return self

    def claim(self, run_dir: Path, is_main_process: bool = True, home: Path | None = None) -> None:
        """Lock the run folder for this run (a no-op until the folder exists; only the main process writes)."""
        self.run_dir, self.name = run_dir, run_dir.name
        self.home = home or self.home
        if is_main_process:
            self.lock.acquire(run_dir)

    def watch(self, config, model, optimizer, scheduler, step: int, position: dict) -> None:
        """From here on, an unexpected failure saves `step` (the last finished one) as a checkpoint."""
        self.saving = (model, optimizer, scheduler, config.train.keep_checkpoints, position)
        self.step, self.micro_batch = step, config.train.micro_batch
        self.stop_at_loss = config.train.stop_at_loss

    def after_step(self, step: int, loss: float, accelerator) -> bool:
        """Record a finished step; True when the run should end here (a signal, the caller's stop, the loss target)."""
        self.step = step
        reached = self.stop_at_loss > 0 and loss <= self.stop_at_loss
        if not self.stop.agreed(accelerator, reached):
            return False
        self.reached_loss = self.stop.reason is None  # no signal or caller: the loss target (on some process)
        return True

    @property
    def stopped(self) -> bool:
        """Ended early by a signal or the caller (not by reaching train.stop_at_loss)."""
        return self.stop.reason is not None and not self.reached_loss

    def save(self, step: int) -> None:
        """A complete checkpoint of `step`, unless one exists already."""
        model, optimizer, scheduler, keep, position = self.saving
        if not is_complete(checkpoint_dir(self.run_dir, step)):
            save_checkpoint(self.run_dir, step, model, optimizer, scheduler, keep, position)

    def closing(self, progress) -> None:
        """Close `progress` when the run ends, failed runs included, so an error starts on a line of its own."""
        self.progress = progress

    def __exit__(self, kind, error, tb) -> None:
        if self.progress is not None:
            self.progress.close()
        try:
            if isinstance(error, Exception) and not isinstance(error, LoratuneError):
                self._on_failure(error)
        finally:
            self.lock.release()
            self.stop.__exit__(kind, error, tb)

    def _on_failure(self, error: Exception) -> None:
        if self.saving is not None:
            # The scheduler counts the optimizer steps taken, even when the failure came after an optimizer step but
            # before the loop reported it (in a callback, a metrics write): the weights belong to that step.
            self.step = getattr(self.saving[2], "last_epoch", self.step)
        where = f"at step {self.step + 1}" if self.saving is not None else "before the first step"
        if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) met more than tensors
            raise LoratuneError(
                "refused to load a pickle weights file (.bin/.pt) that holds Python objects besides tensors: loading "
                f"it could run code ({str(error).splitlines()[-1][:120]}); use a model saved as safetensors"
            ) from None
        if is_disk_full(error):
            then = f"continue with: {self.resume_hint()}" if self.resumable() else "start again"
            raise LoratuneError(
                f"disk full after step {self.step} while writing in {self.run_dir} ({reason(error)}); nothing "
                f"half-written was kept; free some space, then {then}"
            ) from error
        saved = self._rescue()
        if is_out_of_memory(error):
            smaller = max(1, self.micro_batch // 2)
            again = (
                f"continue with a smaller micro-batch: {self.resume_hint('--train.micro_batch', str(smaller))}"
                if self.resumable()
                else f"start again with a smaller micro-batch: --train.micro_batch {smaller}"
            )
            raise LoratuneError(
                f"out of memory {where} with train.micro_batch {self.micro_batch}; {saved}; {again} "
                "(the batch size stays the same)"
            ) from error
        after = f"; after fixing the cause: {self.resume_hint()}" if self.resumable() else ""
        print(f"loratune: training failed {where}: {saved}{after}", file=sys.stderr)

    def resumable(self) -> bool:
        return self.run_dir is not None and self.run_dir.is_dir() and latest_checkpoint(self.run_dir) is not None

    def resume_hint(self, *extra: str) -> str:
        return resume_command(self.home or self.run_dir.parent.parent, self.name, *extra)

    def _rescue(self) -> str:
        """Save the last finished step if that is new work; say what was saved (or why not)."""
        if self.saving is None or self.run_dir is None:
            return "nothing was trained yet"
        if self.step == 0:
            return "no step had finished, so there was nothing to save"
        if is_complete(checkpoint_dir(self.run_dir, self.step)):
            return f"checkpoint-{self.step:06d} holds all finished steps"
        try:
            self.save(self.step)
        except Exception as e:  # noqa: BLE001 - the original failure matters more; say the rescue did not work
            return f"saving checkpoint-{self.step:06d} failed too ({type(e).__name__}: {e})"
        return f"saved the {self.step} finished steps as checkpoint-{self.step:06d}"


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
