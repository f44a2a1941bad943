"""Pick the reader for a dataset path and report what it produced."""

from __future__ import annotations

from pathlib import Path

from loratune.config import DataSpec
from loratune.data import instructions, raw_text

# Re-exported: training/, prompting and the tests import the shared names from here.
from loratune.data.samples import IGNORE, DataReport, Sample, adds_bos, read_text, wants_bos
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

__all__ = [
    "IGNORE",
    "DataReport",
    "Sample",
    "adds_bos",
    "build_samples",
    "find_data",
    "is_raw_text",
    "read_samples",
    "read_text",
    "wants_bos",
]


def build_samples(spec: DataSpec, tokenizer, ws: Workspace) -> tuple[list[Sample], DataReport]:
    """Read `spec.path` (raw .txt file/folder, or .json/.jsonl records) into training samples."""
    samples, report = read_samples(spec, tokenizer, ws)
    if not samples:
        raise LoratuneError(f"{report.path}: no usable samples ({report.summary()})")
    return samples, report


def read_samples(spec: DataSpec, tokenizer, ws: Workspace) -> tuple[list[Sample], DataReport]:
    """Like build_samples, but an empty result is returned, not refused (the data check reports it)."""
    path = find_data(spec.path, ws)
    if is_raw_text(path):
        samples, report = raw_text.build(path, tokenizer, spec)
    elif path.suffix.lower() in (".json", ".jsonl"):
        samples, report = instructions.build(path, tokenizer, spec, ws)
    else:
        raise LoratuneError(f"{path}: unsupported data file type; use .txt (or a folder of them), .json or .jsonl")
    report.samples = len(samples)
    report.tokens = sum(len(s.input_ids) for s in samples)
    report.trained_tokens = sum(sum(1 for x in s.labels if x != IGNORE) for s in samples)
    return samples, report


def is_raw_text(path: Path) -> bool:
    """A .txt file or a folder (of .txt files) is a raw text corpus; anything else is instruction records."""
    return path.is_dir() or path.suffix.lower() == ".txt"


def find_data(given: str, ws: Workspace) -> Path:
    """A path as given, else a name inside datasets/."""
    if not given:
        raise LoratuneError("no dataset given: pass --data <file or folder> (or set data.path in the config)")
    path = Path(given).expanduser()
    if not path.exists() and not path.is_absolute() and (ws.datasets / given).exists():
        path = ws.datasets / given
    if not path.exists():
        raise LoratuneError(f"dataset not found: {given}")
    return path
