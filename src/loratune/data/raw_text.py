"""Raw text corpus (.txt file or folder) -> overlapping chunks of `cutoff` tokens, every token trained.

Each document is split at `hard_cut` (no chunk crosses it); each section is tokenized once and cut into windows of
`cutoff` tokens that start every `cutoff - overlap` tokens; EOS ends the last section of each document; windows
shorter than `min_chunk` are dropped.
"""

from __future__ import annotations

from pathlib import Path

from loratune.config import DataSpec
from loratune.data.build import DataReport, Sample, adds_bos, read_text
from loratune.errors import LoratuneError


def build(path: Path, tokenizer, spec: DataSpec) -> tuple[list[Sample], DataReport]:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise LoratuneError(f"{path}: folder has no .txt files")
    report = DataReport(kind="raw text", path=str(path))
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    eos = [tokenizer.eos_token_id] if spec.add_eos and tokenizer.eos_token_id is not None else []
    length = spec.cutoff - len(bos)
    if spec.overlap >= length:
        raise LoratuneError(
            f"data.overlap ({spec.overlap}) must be smaller than data.cutoff ({spec.cutoff}) for raw text"
        )
    samples = []
    for file in files:
        if not path.is_dir() and not read_text(file).strip():
            raise LoratuneError(f"{file}: file is empty")
        sections = (
            [s for s in read_text(file).split(spec.hard_cut) if s.strip()] if spec.hard_cut else [read_text(file)]
        )
        report.records += len(sections)
        for i, section in enumerate(sections):
            tokens = tokenizer(section, add_special_tokens=False)["input_ids"]
            if i == len(sections) - 1:
                tokens = tokens + eos
            for chunk in chunk_tokens(tokens, length, spec.overlap):
                if len(chunk) >= spec.min_chunk:
                    samples.append(Sample(bos + chunk, bos + chunk))
                else:
                    report.too_short += 1
    return samples, report


def chunk_tokens(tokens: list[int], length: int, overlap: int) -> list[list[int]]:
    """Windows of `length` tokens starting every `length - overlap` tokens; the last one may be shorter."""
    step = length - overlap
    chunks, start = [], 0
    while tokens:
        chunks.append(tokens[start : start + length])
        if start + length >= len(tokens):
            break
        start += step
    return chunks
