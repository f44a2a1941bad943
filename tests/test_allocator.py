"""release_freed_memory hands freed C-heap pages back to the system (glibc), and is inert on other devices."""

import ctypes.util
import os

import pytest
import torch

from loratune.training.allocator import release_freed_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def freed_bytes_returned(device) -> int:
    """Free ~256 MB of 64 kB tensors behind a pinned heap top, release on `device`; how much RSS came back."""
    blocks = [torch.ones(16_000) for _ in range(4_000)]  # 64 kB each: heap memory, under glibc's mmap threshold
    keep = blocks[-1]  # the last block pins the heap's top, so free() alone cannot shrink it
    del blocks
    before = resident_bytes()
    release_freed_memory(device)
    returned = before - resident_bytes()
    assert keep.sum().item() == 16_000
    return returned


linux_glibc = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm") or not ctypes.util.find_library("c"), reason="Linux only"
)


@linux_glibc
def test_freed_heap_pages_go_back_to_the_system():
    assert freed_bytes_returned(torch.device("cpu")) > 100_000_000  # most of the ~256 MB freed comes back


@linux_glibc
def test_other_devices_are_left_alone():
    assert freed_bytes_returned(torch.device("meta")) < 10_000_000  # no trim: the freed pages stay resident
