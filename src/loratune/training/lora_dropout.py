"""LoRA dropout that draws one mask per input tensor and keeps it as one byte per element.

peft gives every LoRA module its own `nn.Dropout`. With LoRA on q, k, v (or gate and up) the modules of one layer read
the same input tensor, so each step draws a fresh mask for every one of them, and CPU dropout keeps a float32 copy of
each mask for the backward pass: drawing the masks was ~6 % of a packed step on the bench (`bench/profile_step.py`).

`SharedDropout` replaces them all with one module: a module called with the same tensor as the call before it (same
object, unchanged since) gets the same dropped-out tensor back, so q, k and v see one mask, and the backward pass keeps
the mask as bool. Each module still sees standard dropout (every element kept with probability 1 - p, scaled by
1 / (1 - p)); what changes is that modules reading the same input share the mask, as they share the input.
"""

from __future__ import annotations

import weakref

import torch


class _MaskedScale(torch.autograd.Function):
    """x * mask / (1 - p), keeping the bool mask (not a float copy) for the backward pass."""

    @staticmethod
    def forward(ctx, x, mask, scale: float):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.where(mask, x, 0.0).mul_(scale)  # where, not x * mask: a float x bool multiply is ~3x slower

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, 0.0).mul_(ctx.scale), None, None


class SharedDropout(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self._last: tuple | None = None  # (weak reference to the input, its version, the output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            self._last = None
            return x
        if self._last is not None:
            ref, version, out = self._last
            if ref() is x and x._version == version:
                return out
        mask = torch.rand(x.shape, device=x.device) >= self.p  # kept with probability 1 - p (float32 uniforms in any
        # dtype: a bf16 uniform is too coarse for p); on the CPU faster than bernoulli_
        out = _MaskedScale.apply(x, mask, 1 / (1 - self.p))
        self._last = (weakref.ref(x), x._version, out)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, one mask per input tensor"


def share_lora_dropout(model, p: float) -> None:
    """Give every LoRA module of `model` (a PeftModel) one SharedDropout of probability `p` (no-op for p = 0)."""
    if p <= 0:
        return
    shared = SharedDropout(p)
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name in list(dropouts.keys()):
                dropouts[name] = shared
