"""Datasets -> token ids + labels (-100 where no loss is taken)."""

from loratune.data.batching import collate
from loratune.data.build import DataReport, Sample, build_samples

__all__ = ["DataReport", "Sample", "build_samples", "collate"]
