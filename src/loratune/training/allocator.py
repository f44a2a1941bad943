"""Hand the C heap's freed memory back to the system between training passes (glibc on the CPU only).

glibc keeps the pages of freed tensors for reuse, so a training process's resident memory stays at the high-water
mark of its most fragmented pass; `malloc_trim(0)` returns every free page, at the cost of faulting them in again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable, Iterator
from functools import cache
from typing import TypeVar

T = TypeVar("T")


@cache
def _glibc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to trim
        return None


def release_freed_memory(device) -> None:
    """Return the freed C-heap pages to the system when training on the CPU with glibc; otherwise do nothing."""
    trim = _glibc_trim() if getattr(device, "type", device) == "cpu" else None
    if trim is not None:
        trim(0)


def each_pass(passes: Iterable[T], device) -> Iterator[T]:
    """The training passes of a step one by one, the previous pass's freed memory handed back before each.

    Per pass, not per step: on raw text (4 passes a step) trimming once a step left the peak RSS at 3.08 / 3.10 GB
    against 2.64 / 2.62 GB per pass (2026-12-04, interleaved), for no speed back."""
    for p in passes:
        release_freed_memory(device)
        yield p
