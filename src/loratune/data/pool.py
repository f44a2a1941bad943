"""Tokenizing on every core: a pool of forked worker processes, used by raw text (pieces) and instruction records
(blocks of records). Callers take the results in the order they submitted the work, so what they write is what one
process writes.

Forked workers inherit the parent's tokenizer and options (`state`): nothing is pickled or imported again. The Rust
tokenizer's own threads stay off in them, as each worker is one core's worth already.
"""

from __future__ import annotations

import multiprocessing
import os

from loratune.workspace import TOKENIZE_WORKERS_ENV as WORKERS_ENV

_STATE = None  # set in the parent before a pool forks; each worker inherits it


def processes() -> int:
    """How many tokenizer processes to run: one per core this process may use, unless LORATUNE_TOKENIZE_WORKERS says."""
    if WORKERS_ENV in os.environ:
        return max(1, int(os.environ[WORKERS_ENV]))
    return len(os.sched_getaffinity(0))


def start(state, workers: int):
    """A multiprocessing pool of `workers` forked processes; in them, `worker_state()` returns `state`."""
    global _STATE
    _STATE = state
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return multiprocessing.get_context("fork").Pool(workers)
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def worker_state():
    return _STATE


def stop(workers, failed: bool) -> None:
    """End a pool: at once when the work failed, else after its queued work."""
    workers.terminate() if failed else workers.close()
    workers.join()
