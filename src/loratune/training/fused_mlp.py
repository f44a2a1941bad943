"""SwiGLU MLPs that keep two activations for the backward pass instead of three.

A LLaMA-style MLP computes `down(silu(gate(x)) * up(x))`. Autograd keeps three (tokens x intermediate) tensors per
layer for it: silu's input, silu's output and up's output (the frozen linears keep nothing: their weights need no
gradient). With an intermediate size 2.7-5.4 times the hidden size these are the largest activations of a layer: 547
of the ~960 MB a packed pass of 989 tokens keeps on SmolLM2-135M. `SiluMul` keeps only gate's and up's outputs and
recomputes silu in the backward pass (one element-wise kernel): a third less for the MLPs (-182 MB there).

`fuse_swiglu(model)` switches every MLP of a known class to it; outputs and gradients are the same to the last bit
(the backward pass runs the kernels autograd runs, on a recomputed silu).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from loratune.models.families import SWIGLU_MLPS


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, keeping gate and up (not silu's output too) for the backward pass."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        # Each gradient is written into the one tensor it returns (silu_backward in place on grad * up): a fresh
        # (tokens x intermediate) tensor per kernel made this backward 1.5-2.8x slower (bench, 30 layers' tensors).
        grad_up = F.silu(gate).mul_(grad) if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_gate = torch.mul(grad, up)
            torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        return grad_gate, grad_up


def swiglu_forward(self, x):
    return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def is_silu(act) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"


def fuse_swiglu(model) -> int:
    """Switch the SwiGLU MLPs of `model` to `SiluMul`; returns how many were switched."""
    switched = 0
    for module in model.modules():
        if type(module).__name__ in SWIGLU_MLPS and is_silu(getattr(module, "act_fn", None)):
            # act_fn checked per module: a checkpoint of a listed class may use another activation
            module.forward = types.MethodType(swiglu_forward, module)
            switched += 1
    return switched
