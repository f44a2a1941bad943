"""release_freed_memory hands freed C-heap pages back to the system (glibc), and is inert on other devices;
each_pass does it before every training pass, within_passes after every few layers of a forward pass."""

import ctypes.util
import os

import pytest
import torch

from loratune.training.allocator import each_pass, layer_stack, release_freed_memory, within_passes


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def free_heap_blocks() -> torch.Tensor:
    """Free ~256 MB of 64 kB tensors (heap memory, under glibc's mmap threshold); returns the last one, kept alive
    so that it pins the heap's top and free() alone cannot shrink the heap."""
    blocks = [torch.ones(16_000) for _ in range(4_000)]
    return blocks[-1]


def freed_bytes_returned(device) -> int:
    """Free ~256 MB of heap blocks, release on `device`; how much RSS came back."""
    keep = free_heap_blocks()
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
    at_start = []  # resident bytes as each pass begins, after each_pass's release
    for i in each_pass(range(2), torch.device("cpu")):
        at_start.append(resident_bytes())
        if i == 0:  # the first pass frees ~256 MB of heap blocks, as a training pass frees its activations
            keep = free_heap_blocks()
            freed_at = resident_bytes()
    assert len(at_start) == 2
    assert freed_at - at_start[1] > 100_000_000
    assert keep.sum().item() == 16_000


class Churn(torch.nn.Module):
    """A layer that, like a decoder layer, frees much more heap memory than it keeps."""

    def forward(self, x):
        self.kept = free_heap_blocks()  # ~256 MB of 64 kB blocks freed; the last one stays, pinning the heap's top
        return x + self.kept[0]


class Stack(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.embed = torch.nn.ModuleList([torch.nn.Identity()])  # a one-module list: not the stack
        self.layers = torch.nn.ModuleList([Churn() for _ in range(n)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_layer_stack_is_the_decoder_layers(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    stack = layer_stack(model)
    assert len(stack) == model.config.num_hidden_layers
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in stack)
    assert layer_stack(torch.nn.Linear(2, 2)) == []


@linux_glibc
def test_within_passes_hands_back_what_each_layer_freed():
    def resident_after_forward(hooked: bool) -> int:
        model = Stack(4)
        if hooked:
            assert within_passes(model, torch.device("cpu"), every=2) == 2  # layers 2 and 4
        release_freed_memory(torch.device("cpu"))
        before = resident_bytes()
        model(torch.zeros(1 << 18))  # a layer output of 1 MB: large enough to release after
        return resident_bytes() - before

    assert resident_after_forward(hooked=True) < resident_after_forward(hooked=False) - 100_000_000
    assert within_passes(Stack(4), torch.device("meta")) == 0  # off the CPU: nothing registered


@linux_glibc
def test_a_small_forward_is_left_alone():
    """A generated token's forward (a tiny layer output) does not pay a release per layer."""
    model = Stack(2)
    within_passes(model, torch.device("cpu"), every=1)
    release_freed_memory(torch.device("cpu"))
    before = resident_bytes()
    model(torch.zeros(1))
    assert resident_bytes() - before > 100_000_000
