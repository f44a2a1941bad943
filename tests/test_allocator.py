"""release_freed_memory hands freed C-heap pages back to the system (glibc), and is inert on other devices;
each_pass does it before every training pass."""

import ctypes.util
import os

import pytest
import torch

from loratune.training.allocator import each_pass, release_freed_memory


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


@linux_glibc
def test_each_pass_hands_back_what_the_pass_before_freed():
    keep, freed_at = [], 0
    for i in each_pass(range(2), torch.device("cpu")):
        if i == 0:  # the first pass frees ~256 MB of heap blocks, as a training pass frees its activations
            blocks = [torch.ones(16_000) for _ in range(4_000)]
            keep.append(blocks[-1])
            del blocks
            freed_at = resident_bytes()
        else:
            assert freed_at - resident_bytes() > 100_000_000
    assert len(keep) == 1
