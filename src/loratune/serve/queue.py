"""The line in front of the running batch: requests join the batch in arrival order, and a full line says so at once.

Used under the batcher's lock. A request that finds a free place in the batch is never refused; beyond those places
at most --max-queue requests wait.
"""

from __future__ import annotations

import math
from collections import deque


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} requests are already waiting for the model (--max-queue); retry later")
        self.retry_after = retry_after


class WaitingLine:
    def __init__(self, max_waiting: int, max_batch: int):
        self.max_waiting, self.max_batch = max_waiting, max_batch
        self.items: deque = deque()
        self._mean_request = 1.0  # seconds from joining the batch to leaving it, a running mean: for Retry-After

    def add(self, item, free_places: int) -> None:
        """Join the end of the line; QueueFull when more than --max-queue would wait beyond the free places."""
        waiting = len(self.items) - free_places
        if waiting >= self.max_waiting:
            raise QueueFull(max(0, waiting), self.retry_after())
        self.items.append(item)

    def take(self, places: int) -> list:
        return [self.items.popleft() for _ in range(min(places, len(self.items)))]

    def drop(self, keep) -> list:
        """Remove and return the items for which `keep(item)` is false (requests cancelled while waiting)."""
        gone = [x for x in self.items if not keep(x)]
        if gone:
            self.items = deque(x for x in self.items if keep(x))
        return gone

    def request_took(self, seconds: float) -> None:
        self._mean_request = 0.8 * self._mean_request + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until the line has likely moved on: the batches ahead times a recent request's time."""
        batches = math.ceil((len(self.items) + 1) / self.max_batch)
        return max(1, min(3600, math.ceil(self._mean_request * batches)))

    def __len__(self) -> int:
        return len(self.items)
