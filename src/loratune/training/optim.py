"""The optimizer and the learning-rate schedule named by train.optimizer / train.scheduler.

The schedules are small functions of the step (names and shapes as in transformers), wrapped in one LambdaLR, so a
checkpoint's scheduler state is just the step and resume needs nothing else.
"""

from __future__ import annotations

import math

import torch

from loratune.config import TrainSpec
from loratune.errors import LoratuneError


def build_optimizer(params: list[torch.nn.Parameter], tc: TrainSpec) -> torch.optim.Optimizer:
    if tc.optimizer == "adamw_torch":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "adafactor":
        if not hasattr(torch.optim, "Adafactor"):
            raise LoratuneError("train.optimizer adafactor needs torch >= 2.5; upgrade torch or use adamw_torch")
        return torch.optim.Adafactor(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw_8bit":
        return _adamw_8bit(params, tc)
    raise LoratuneError(f"unknown train.optimizer '{tc.optimizer}'")


def _adamw_8bit(params, tc: TrainSpec) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW keeps optimizer state on a CUDA GPU; anywhere else say so in one line."""
    if not all(p.is_cuda for p in params):
        raise LoratuneError("train.optimizer adamw_8bit needs a CUDA GPU (bitsandbytes); use adamw_torch here")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise LoratuneError("train.optimizer adamw_8bit needs bitsandbytes: pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit(params, lr=tc.lr, weight_decay=tc.weight_decay)


def warmup_steps(tc: TrainSpec, total_steps: int) -> int:
    return tc.warmup_steps if tc.warmup_steps > 0 else int(total_steps * tc.warmup_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, tc: TrainSpec, total_steps: int):
    warmup = warmup_steps(tc, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, tc.scheduler, tc.lr_cycles, tc.lr_power)
    )


def lr_factor(step: int, warmup: int, total: int, kind: str, cycles: int = 3, power: float = 2.0) -> float:
    """The learning rate of optimizer step `step` (0-based) as a fraction of train.lr."""
    if kind == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "constant_with_warmup":
        return 1.0
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "cosine_with_restarts":
        return 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0)))
    if kind == "polynomial":
        return max(0.0, 1 - progress) ** power
    if kind == "inverse_sqrt":
        timescale = warmup or 10_000  # as transformers: without warmup the decay starts slowly
        return 1 / math.sqrt((step - warmup + timescale) / timescale)
    return max(0.0, 1 - progress)  # linear
