"""Datasets -> token ids + labels (-100 where no loss is taken)."""

from loratune.data.batching import collate
from loratune.data.build import build_samples
from loratune.data.samples import DataReport, Sample

__all__ = ["DataReport", "Sample", "build_samples", "collate"]
