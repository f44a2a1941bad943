"""The training loop, its checkpoints and its progress reporting."""

from loratune.train.loop import train

__all__ = ["train"]
