"""A records file's instruction records -> samples in the store, a block of records at a time, in the file's order.

A file of fewer than BLOCK records is built in this process; a larger one by a pool of processes (one per core,
data.pool), its blocks written in the order they were read, so the store, its fingerprint and the report are those of
one process. At most a few blocks are in flight: memory does not grow with the file.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from loratune.config import DataSpec
from loratune.data import instructions, pool
from loratune.data.samples import DataReport
from loratune.workspace import Workspace

# Records per block (a format's key-set error lists the records of one block). Small enough that the last blocks of
# a file keep every worker busy: at 10,000, a 30,000-record file was 3 blocks on 2 workers, 1.46x one core.
BLOCK = 1_000
COUNTERS = ("too_long", "truncated", "nothing_to_train")  # what instructions.build counts in the report


class InstructionBlocks:
    """`with InstructionBlocks(...) as blocks:` add (number, record) pairs; on leaving, every sample is written."""

    def __init__(self, file: Path, unit: str, tokenizer, spec: DataSpec, ws: Workspace, report: DataReport, texts):
        self.file, self.unit, self.tokenizer, self.spec, self.ws, self.report = file, unit, tokenizer, spec, ws, report
        self.texts = texts  # the raw-text tokenizer: the text read before a block is in the store before its samples
        self.block: list[tuple[int, dict]] = []
        self.queue: deque = deque()  # blocks in the pool, oldest first
        self.workers = pool.processes()
        self.running = None

    def __enter__(self) -> InstructionBlocks:
        return self

    def add(self, number: int, record: dict) -> None:
        self.block.append((number, record))
        if len(self.block) >= BLOCK:
            self._submit(pooled=self.workers > 1)

    def flush(self) -> None:
        """Every record added so far is in the store."""
        self._submit(pooled=self.running is not None)
        self._drain(0)

    def __exit__(self, kind, value, tb) -> None:
        try:
            if kind is None:
                self.flush()
            else:  # a fault read after blocks went to the pool: theirs come first, as one process meets them
                self._drain(0)
        finally:
            if self.running is not None:
                pool.stop(self.running, failed=kind is not None or bool(self.queue))

    def _submit(self, pooled: bool) -> None:
        block, self.block = self.block, []
        if not block:
            return
        if not pooled:
            built = instructions.build(block, self.file, self.unit, self.tokenizer, self.spec, self.ws, self.report)
            self._write(built)
            return
        if self.running is None:
            self.running = pool.start((self.tokenizer, self.spec, self.ws), self.workers)
        self.queue.append(self.running.apply_async(_build, (block, self.file, self.unit)))
        self._drain(self.workers + 1)

    def _drain(self, keep: int) -> None:
        while len(self.queue) > keep:
            self._write(*self.queue[0].get())  # a block's error is raised here, in block order
            self.queue.popleft()

    def _write(self, built: instructions.Built, counts: tuple[int, ...] | None = None) -> None:
        self.texts.flush()
        self.texts.writer.add_samples(built.samples, built.full, built.dropped)
        if counts is not None:  # a worker's counts (built here, they are in the report already)
            for name, count in zip(COUNTERS, counts, strict=True):
                setattr(self.report, name, getattr(self.report, name) + count)


def _build(block: list[tuple[int, dict]], file: Path, unit: str):
    """In a worker: a block's samples (and their lengths) and what it counted."""
    tokenizer, spec, ws = pool.worker_state()
    report = DataReport(kind="", path="")
    built = instructions.build(block, file, unit, tokenizer, spec, ws, report)
    return built, tuple(getattr(report, name) for name in COUNTERS)
