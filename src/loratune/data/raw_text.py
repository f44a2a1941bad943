"""Raw text corpus (.txt file or folder) -> overlapping chunks of `cutoff` tokens, every token trained.

Each document is split at `hard_cut` (no chunk crosses it); each section is tokenized once and cut into windows of
`cutoff` tokens that start every `cutoff - overlap` tokens; EOS ends the last section of each document; windows
shorter than `min_chunk` are dropped. With `newline_cut` N, a window's start moves just past a newline found within its
first N characters, and its end back to just after a newline found within its last N characters (text-generation-webui's
"prefer newline cut"), so chunks begin and end on whole lines.
"""

from __future__ import annotations

from bisect import bisect_left
from pathlib import Path

from loratune.config import DataSpec
from loratune.data.build import DataReport, Sample, read_text, wants_bos
from loratune.errors import LoratuneError


def build(path: Path, tokenizer, spec: DataSpec) -> tuple[list[Sample], DataReport]:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise LoratuneError(f"{path}: folder has no .txt files")
    report = DataReport(kind="raw text", path=str(path))
    bos = [tokenizer.bos_token_id] if wants_bos(tokenizer, spec.add_bos) else []
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
            encoded = tokenizer(section, add_special_tokens=False, return_offsets_mapping=spec.newline_cut > 0)
            tokens = encoded["input_ids"]
            if i == len(sections) - 1:
                tokens = tokens + eos
            for start, end in chunk_spans(len(tokens), length, spec.overlap):
                if spec.newline_cut:
                    starts = [a for a, _ in encoded["offset_mapping"]] + [len(section)] * len(eos)
                    start, end = snap_to_newlines(section, starts, start, end, spec.newline_cut)
                chunk = tokens[start:end]
                if len(chunk) >= spec.min_chunk:
                    samples.append(Sample(bos + chunk, bos + chunk))
                else:
                    report.too_short += 1
    return samples, report


def chunk_tokens(tokens: list[int], length: int, overlap: int) -> list[list[int]]:
    """Windows of `length` tokens starting every `length - overlap` tokens; the last one may be shorter."""
    return [tokens[start:end] for start, end in chunk_spans(len(tokens), length, overlap)]


def chunk_spans(n: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) token indices of the windows chunk_tokens cuts from `n` tokens."""
    step = length - overlap
    spans, start = [], 0
    while n:
        spans.append((start, min(start + length, n)))
        if start + length >= n:
            break
        start += step
    return spans


def snap_to_newlines(text: str, starts: list[int], start: int, end: int, within: int) -> tuple[int, int]:
    """Move a window's inner edges to line starts when a newline lies within `within` characters of them.

    `starts` holds each token's first character in `text`. A section's own first and last tokens stay: they are
    natural edges already. The window never becomes empty.
    """
    first, last = starts[start], starts[end - 1] if end - 1 < len(starts) else len(text)
    if start > 0:
        newline = text.find("\n", first, first + within)
        if newline >= 0:
            start = min(max(start, bisect_left(starts, newline + 1)), end - 1)
    if end < len(starts):
        newline = text.rfind("\n", max(starts[start], last - within), last + 1)
        if newline >= 0:
            end = max(start + 1, min(end, bisect_left(starts, newline + 1)))
    return start, end
