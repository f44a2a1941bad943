"""release_freed_memory hands freed C-heap pages back to the system (glibc), and is inert on other devices."""

import ctypes.util
import os

import pytest
import torch

from loratune.training.allocator import release_freed_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or not ctypes.util.find_library("c"), reason="Linux only")
def test_freed_heap_pages_go_back_to_the_system():
    blocks = [torch.ones(16_000) for _ in range(4_000)]  # 64 kB each: heap memory, under glibc's mmap threshold
    keep = blocks[-1]  # the last block pins the heap's top, so free() alone cannot shrink it
    del blocks
    before = resident_bytes()
    release_freed_memory(torch.device("cpu"))
    assert before - resident_bytes() > 100_000_000  # most of the ~256 MB freed comes back
    assert keep.sum().item() == 16_000


def test_other_devices_are_left_alone():
    release_freed_memory(torch.device("meta"))  # no trim, no error
