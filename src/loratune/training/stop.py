"""When a run ends early: SIGINT / SIGTERM (or an in-process caller's stop) after the current optimizer step, or
train.stop_at_loss once the loss reaches it.

The first signal only sets a flag: the loop finishes its step, writes a complete checkpoint and returns, so the
`loratune train` process exits 0 (the web UI stops jobs this way). A second signal aborts at once with
KeyboardInterrupt; that can only leave a temporary folder behind, because complete checkpoints are never written
in place (see checkpoint.py).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM)
StopSource = threading.Event | Callable[[], bool] | None


class StopRequest:
    """Use as a context manager around a run; `requested` turns true after a signal or when `external` says stop.

    Args:
        external: a `threading.Event` (set it to stop) or a function returning True to stop, for callers that run
            training in-process (signal handlers can only be installed in the main thread).
    """

    def __init__(self, external: StopSource = None):
        self.external = external
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt  # the second signal: abort now
        self.reason = signal.Signals(signum).name
        # os.write, not print: a handler that prints while the main thread is printing raises "reentrant call".
        os.write(
            2,
            f"\nloratune: {self.reason} received: stopping after this step and saving a checkpoint "
            "(press Ctrl-C again to abort at once)\n".encode(),
        )

    @property
    def requested(self) -> bool:
        if self.reason is None and self.external is not None:
            wanted = self.external.is_set() if isinstance(self.external, threading.Event) else self.external()
            if wanted:
                self.reason = "stop requested"
        return self.reason is not None

    def agreed(self, accelerator, also: bool = False) -> bool:
        """Stop (`requested`, or `also`) on any process means stop on all, so every rank ends after the same step."""
        wanted = self.requested or also
        if accelerator.num_processes == 1:
            return wanted
        flag = torch.tensor([1.0 if wanted else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


LOSS_TARGET = "train.stop_at_loss"  # the reason a run ends when its loss reached the target


def stop_reason(stop: StopRequest, accelerator, loss: float, stop_at_loss: float) -> str | None:
    """After a finished step: why the run ends here, or None to go on.

    The reason is the signal's name or the caller's stop, else LOSS_TARGET when `loss` reached train.stop_at_loss
    (0: no target). A stop on any process stops all, so every rank ends after the same step.
    """
    reached = stop_at_loss > 0 and loss <= stop_at_loss
    if not stop.agreed(accelerator, reached):
        return None
    return stop.reason or LOSS_TARGET  # no signal or caller here: the loss target (on some process)
