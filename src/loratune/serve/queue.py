"""A fair line in front of the model: requests get their turn in arrival order, and a full line says so at once.

A plain lock is not fair (a thread that releases it can take it straight back), so with 16 clients the unlucky one
waited 4x longer than the others. Here each request takes a ticket and waits until its ticket is at the head.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager

from loratune.serve.limits import ClientGone, TimedOut

POLL_SECONDS = 0.25  # how often a waiting request checks whether its client left or its time is up


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} requests are already waiting for the model (--max-queue); retry later")
        self.retry_after = retry_after


class FairQueue:
    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._line: deque[object] = deque()  # the head holds the model
        self._mean_turn = 1.0  # seconds, a running mean of recent turns: the basis of Retry-After

    @contextmanager
    def turn(self, client_gone: Callable[[], bool] | None = None, deadline: float | None = None):
        """Wait for this request's turn, then hold the model until the block ends.

        Raises QueueFull at once when the line is full, ClientGone / TimedOut while waiting.
        """
        ticket = object()
        with self._cond:
            waiting = max(0, len(self._line) - 1)
            if self._line and waiting >= self.max_waiting:
                raise QueueFull(waiting, self.retry_after())
            self._line.append(ticket)
            try:
                while self._line[0] is not ticket:
                    self._cond.wait(POLL_SECONDS)
                    if client_gone is not None and client_gone():
                        raise ClientGone()
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimedOut("the request waited for the model longer than --request-timeout")
            except BaseException:
                self._line.remove(ticket)
                self._cond.notify_all()
                raise
        started = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._line.popleft()
                self._mean_turn = 0.8 * self._mean_turn + 0.2 * (time.monotonic() - started)
                self._cond.notify_all()

    def retry_after(self) -> int:
        """Seconds until the line has likely moved on: its length times a recent turn."""
        return max(1, min(3600, math.ceil(self._mean_turn * max(1, len(self._line)))))
