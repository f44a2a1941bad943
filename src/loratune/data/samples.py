"""What every data reader shares: the sample type, the report of what a reader produced, reading text files (whole or
block by block), and the BOS rules.

The readers (raw_text, instructions) build on this module; the dispatcher (build) picks a reader. Nothing here
imports either, so the layers stay one-way.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loratune.errors import LoratuneError

IGNORE = -100  # label of a token that carries no loss
READ_BYTES = 1 << 22  # files are decoded in blocks of this many bytes (read_blocks)


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    desirable: bool | None = None  # a KTO record's label (data.shapes.kto_side); None for every other record


@dataclass
class DataReport:
    kind: str
    path: str
    records: int = 0
    samples: int = 0
    too_long: int = 0
    truncated: int = 0
    nothing_to_train: int = 0
    too_short: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    shapes: dict[str, int] = field(default_factory=dict)
    """Records per shape (alpaca, chat, sharegpt, completion, text, preference, kto) and raw text files ('raw text')."""
    files: dict[str, int] = field(default_factory=dict)
    """Files read per suffix ('.jsonl': 2)."""
    file_shapes: list[str] = field(default_factory=list)
    """One line per file read: its name and records per shape."""
    skipped: list[str] = field(default_factory=list)
    """What a folder holds that was not read, and why."""
    weight: float = 1.0
    """data.mix: this dataset's weight."""
    parts: list[DataReport] = field(default_factory=list)
    """One report per dataset when data.path is a list."""
    cached: bool = False
    """The samples came from the tokenized-data cache (datasets/.cache/), not from tokenizing again."""

    def summary(self) -> str:
        if self.parts:
            each = "; ".join(f"[{n}] {p.summary()}" for n, p in enumerate(self.parts, 1))
            cached = " (cached)" if self.cached else ""
            return f"{len(self.parts)} datasets, {self.samples} samples, {self.tokens} tokens in all{cached}: {each}"
        parts = [
            f"{self.kind} data {self.path}: {self.records} records -> {self.samples} samples",
            f"{self.tokens} tokens ({self.trained_tokens} trained)" + (" (cached)" if self.cached else ""),
        ]
        if self.weight != 1.0:
            parts.append(f"weight {self.weight:g}")
        if self.shapes:
            parts.append("shapes: " + ", ".join(f"{shape} {count}" for shape, count in self.shapes.items()))
        if sum(self.files.values()) > 1 or self.skipped:
            parts.append("files: " + ", ".join(f"{count} {suffix}" for suffix, count in self.files.items()))
        if self.skipped:
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            parts.append(f"skipped {len(self.skipped)}: {', '.join(self.skipped[:3])}{more}")
        if self.too_long:
            parts.append(f"{self.too_long} dropped as longer than the cutoff (data.too_long: truncate keeps them)")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to the cutoff")
        if self.nothing_to_train:
            parts.append(f"{self.nothing_to_train} dropped with nothing to train")
        if self.too_short:
            parts.append(f"{self.too_short} raw-text blocks dropped as shorter than data.min_chunk")
        return ", ".join(parts)


def read_text(file: Path) -> str:
    """UTF-8 text (a BOM is skipped, CRLF becomes LF); other encodings are refused with the line at fault."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LoratuneError(f"{file}: line {line} is not UTF-8 text; re-save the file as UTF-8") from None
    return text.replace("\r\n", "\n")


def read_blocks(file: Path) -> Iterator[str]:
    """The file's text in blocks (UTF-8, a BOM skipped, CRLF as LF); other encodings are refused as read_text does."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    held = ""  # a CR at a block's end may start a CRLF
    with open(file, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            try:
                text = held + decoder.decode(data, final=not data)
            except UnicodeDecodeError:
                read_text(file)  # raises the error naming the line
                raise
            held = ""
            if data and text.endswith("\r"):
                text, held = text[:-1], "\r"
            yield text.replace("\r\n", "\n")
            if not data:
                return


def adds_bos(tokenizer) -> bool:
    """Does this tokenizer put BOS in front of a text by default (LLaMA-1/2 style)? Then each chunk gets one."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def wants_bos(tokenizer, add_bos: str) -> bool:
    """data.add_bos: 'auto' follows the tokenizer's own default, 'always' / 'never' override it."""
    if add_bos == "never":
        return False
    if add_bos == "always":
        if tokenizer.bos_token_id is None:
            raise LoratuneError("data.add_bos is 'always' but this tokenizer has no BOS token; use 'auto' or 'never'")
        return True
    return adds_bos(tokenizer)
