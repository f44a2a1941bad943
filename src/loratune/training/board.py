"""TensorBoard logging (train.report_to: tensorboard): every metrics row as scalars; a no-op when off."""

from __future__ import annotations

from pathlib import Path

from loratune.errors import LoratuneError


class Board:
    def __init__(self, folder: Path | None):
        self.writer = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LoratuneError(
                "train.report_to tensorboard needs tensorboard: pip install 'loratune[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        skip = {"step"} if "loss" in row else {"step", "epoch"}  # the training rows carry the epoch already
        for key, value in row.items():
            if key not in skip and isinstance(value, (int, float)):
                self.writer.add_scalar(_tag(key), value, global_step=row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tag(key: str) -> str:
    """'eval_loss' -> 'eval/loss', 'retention_kl' -> 'retention/kl', 'loss' -> 'train/loss': TensorBoard groups
    charts by the part before '/'."""
    for group in ("eval", "retention"):
        if key.startswith(group + "_"):
            return key.replace("_", "/", 1)
    return f"train/{key}"
