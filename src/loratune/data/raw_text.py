"""Raw text (.txt / .md files, folders of them, `text` records) -> overlapping chunks of `cutoff` tokens, all trained.

Each document is split at `hard_cut` (no chunk crosses it); each section is tokenized once and cut into windows of
`cutoff` tokens that start every `cutoff - overlap` tokens; EOS ends the last section of each document; windows
shorter than `min_chunk` are dropped. With `newline_cut` N, a window's start moves just past a newline found within its
first N characters, and its end back to just after a newline found within its last N characters (text-generation-webui's
"prefer newline cut"), so chunks begin and end on whole lines.

Files are read and tokenized streaming: blocks of text are cut into pieces, the pieces' ids go straight into a flat
uint32 stream (data.store), and windows are spans of that stream, never copies. A large corpus is tokenized by a pool
of worker processes (one per core), pieces in order, so the ids are the same as with one process.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from loratune.config import DataSpec
from loratune.data import pool
from loratune.data.samples import DataReport, read_blocks, wants_bos
from loratune.data.store import SampleSet, StoreWriter
from loratune.errors import LoratuneError

PIECE_CHARS = 1 << 16  # long text is tokenized in pieces of about this many characters (see _piece_end)
PIECES_PER_CALL = 16
PARALLEL_BYTES = 8 << 20  # below this much raw text, tokenize in this process (a pool costs more than it saves)

TEXT_SUFFIXES = (".txt", ".md")


def build(path: Path, tokenizer, spec: DataSpec) -> tuple[SampleSet, DataReport]:
    """A .txt / .md file, or a folder of them (read recursively, in sorted order); not cached (see data.build)."""
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if path.is_dir()
        else [path]
    )
    if not files:
        raise LoratuneError(f"{path}: folder has no .txt or .md files")
    report = DataReport(kind="raw text", path=str(path))
    writer = StoreWriter(None, tokenizer.bos_token_id, tokenizer.eos_token_id)
    with TextTokenizer(tokenizer, spec, report, writer, workers_for(files)) as texts:
        for file in files:
            texts.add_file(file, allow_empty=path.is_dir())
    return SampleSet([(writer.finish({}), None)]), report


def workers_for(files: list[Path]) -> int:
    """Tokenizer processes for these files: one per core for a large corpus, else none (1); see data.pool."""
    if pool.WORKERS_ENV in os.environ:
        return pool.processes()
    size = sum(f.stat().st_size for f in files)
    return pool.processes() if size >= PARALLEL_BYTES else 1


class _Section:
    def __init__(self):
        self.pending = ""  # text not yet cut into pieces
        self.offset = 0  # characters of the section before `pending`
        self.has_text = False
        self.first: int | None = None  # its first token's place in the stream
        self.tokens = 0
        self.text: list[str] | None = None  # newline_cut: the section's text and each token's first character
        self.starts: list[np.ndarray] = []


class TextTokenizer:
    """Documents in, windows out (into a StoreWriter); pieces are tokenized in order, by a pool when `workers` > 1."""

    def __init__(self, tokenizer, spec: DataSpec, report: DataReport, writer: StoreWriter, workers: int = 1):
        self.tokenizer, self.spec, self.report, self.writer = tokenizer, spec, report, writer
        self.bos = wants_bos(tokenizer, spec.add_bos)
        self.eos = tokenizer.eos_token_id if spec.add_eos and tokenizer.eos_token_id is not None else None
        self.length = spec.cutoff - int(self.bos)
        self.eos_id = tokenizer.eos_token_id
        self.eos_at: list[np.ndarray] = []  # stream positions of EOS tokens, per section
        self.queue: deque = deque()  # ("tokens", section, result) and ("end", section, last) in stream order
        self.workers = workers
        self.pool = None
        self.batch: list[tuple[str, int]] = []
        self.batch_section: _Section | None = None

    def __enter__(self) -> TextTokenizer:
        return self

    def flush(self) -> None:
        """Everything added so far is in the writer."""
        self._submit()
        self._drain(0)

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.flush()
        if self.pool is not None:
            pool.stop(self.pool, failed=kind is not None)

    # ------------------------------------------------------------ documents and sections
    def add_file(self, file: Path, allow_empty: bool) -> None:
        """A .txt / .md file is one document; an empty one is refused unless `allow_empty` (one of a folder's)."""
        if not self.add_document(read_blocks(file)) and not allow_empty:
            raise LoratuneError(f"{file}: file is empty")

    def add_document(self, blocks: Iterable[str]) -> bool:
        """A document given as blocks of text; returns whether it held any text besides whitespace."""
        if self.spec.overlap >= self.length:  # only raw text has windows: instruction data may set any overlap
            raise LoratuneError(
                f"data.overlap ({self.spec.overlap}) must be smaller than data.cutoff ({self.spec.cutoff}) for raw text"
            )
        hard, keep = self.spec.hard_cut, max(len(self.spec.hard_cut) - 1, 0)
        buffer, section, last, any_text = "", self._new_section(), None, False
        for block in blocks:
            any_text = any_text or bool(block.strip())
            buffer += block
            if hard:
                *done, buffer = buffer.split(hard)
                for text in done:
                    self._feed(section, text)
                    last = self._end_section(section, last)
                    section = self._new_section()
            safe = len(buffer) - keep if hard else len(buffer)
            if safe > 0:
                self._feed(section, buffer[:safe])
                buffer = buffer[safe:]
        self._feed(section, buffer)
        last = self._end_section(section, last)
        if last is not None:
            self.queue.append(("end", last, True))
            self._drain(self._limit())
        return any_text

    def _new_section(self) -> _Section:
        section = _Section()
        section.has_text = not self.spec.hard_cut  # without hard cuts the document is one section, whatever it holds
        return section

    def _feed(self, section: _Section, text: str) -> None:
        section.pending += text
        section.has_text = section.has_text or bool(text.strip())
        if section.has_text:  # a section of whitespace alone is dropped, so it is not tokenized until text shows
            self._cut_pieces(section, final=False)

    def _end_section(self, section: _Section, last: _Section | None) -> _Section | None:
        """Tokenize the rest of `section`; the section before it is then not its document's last (no EOS)."""
        if not section.has_text:
            return last
        self._cut_pieces(section, final=True)
        self.report.records += 1
        if last is not None:
            self.queue.append(("end", last, False))
            self._drain(self._limit())
        return section

    def _cut_pieces(self, section: _Section, final: bool) -> None:
        """Pieces end just before a space that starts a word, so they tokenize as the whole section does; a piece is
        cut only once more than PIECE_CHARS follow its start (or the section is complete), so the cuts are the same
        whatever the block sizes."""
        text, pos = section.pending, 0
        while len(text) - pos > PIECE_CHARS or (final and pos < len(text)):
            end = _piece_end(text, pos)
            self._add_piece(section, text[pos:end], section.offset + pos)
            pos = end
        section.pending, section.offset = text[pos:], section.offset + pos
        if final:
            self._submit()

    def _add_piece(self, section: _Section, piece: str, offset: int) -> None:
        if self.batch_section is not section:
            self._submit()
            self.batch_section = section
        self.batch.append((piece, offset))
        if self.spec.newline_cut:
            section.text = section.text if section.text is not None else []
            section.text.append(piece)
        if len(self.batch) >= PIECES_PER_CALL:
            self._submit()

    # ------------------------------------------------------------ tokenizing, in order
    def _submit(self) -> None:
        if not self.batch:
            return
        pieces, offsets = [p for p, _ in self.batch], [o for _, o in self.batch]
        want = bool(self.spec.newline_cut)
        if self.workers > 1:
            if self.pool is None:
                self.pool = pool.start(self.tokenizer, self.workers)
            result = self.pool.apply_async(_encode, (pieces, offsets, want))
        else:
            result = _Done(_encode_with(self.tokenizer, pieces, offsets, want))
        self.queue.append(("tokens", self.batch_section, result))
        self.batch, self.batch_section = [], None
        self._drain(self._limit())

    def _limit(self) -> int:
        return 2 * self.workers + 2 if self.workers > 1 else 0

    def _drain(self, keep: int) -> None:
        """Take finished work off the front of the queue, in order, until at most `keep` items are waiting."""
        while len(self.queue) > keep:
            kind, section, value = self.queue.popleft()
            if kind == "tokens":
                for ids, starts in value.get():
                    self._write(section, ids, starts)
            else:
                self._windows(section, last=value)

    def _write(self, section: _Section, ids: np.ndarray, starts: np.ndarray | None) -> None:
        at = self.writer.add_tokens(ids)
        if section.first is None:
            section.first = at
        section.tokens += len(ids)
        if self.eos_id is not None:
            found = np.flatnonzero(ids == self.eos_id)
            if len(found):
                self.eos_at.append(found + at)
        if starts is not None:
            section.starts.append(starts)

    def _windows(self, section: _Section, last: bool) -> None:
        if last and self.eos is not None:
            self._write(section, np.array([self.eos], dtype=np.uint32), None)
            if self.spec.newline_cut:
                section.starts.append(np.array([len("".join(section.text or []))]))
        n = section.tokens
        starts, ends = window_bounds(n, self.length, self.spec.overlap)  # arrays: a 100 MB section has 1M windows
        if self.spec.newline_cut and n:
            spans = list(zip(starts.tolist(), ends.tolist(), strict=True))
            text = "".join(section.text or [])
            char_starts = np.concatenate(section.starts).tolist()
            if last and self.eos is not None:
                char_starts = char_starts[:n]
            snapped = [snap_to_newlines(text, char_starts, s, e, self.spec.newline_cut) for s, e in spans]
            starts = np.array([s for s, _ in snapped], dtype=np.int64)
            ends = np.array([e for _, e in snapped], dtype=np.int64)
        keep = ends - starts >= self.spec.min_chunk
        self.report.too_short += int((~keep).sum())
        first = section.first if section.first is not None else self.writer.count
        eos_at = np.concatenate(self.eos_at) if self.eos_at else np.zeros(0, dtype=np.int64)
        self.eos_at = [eos_at[eos_at >= first]] if len(eos_at) else []
        self.writer.add_windows(starts[keep] + first, ends[keep] + first, self.bos, eos_at)


class _Done:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def _encode(pieces: list[str], offsets: list[int], want_starts: bool):
    return _encode_with(pool.worker_state(), pieces, offsets, want_starts)


def _encode_with(tokenizer, pieces: list[str], offsets: list[int], want_starts: bool):
    """Each piece's ids (uint32) and, when wanted, each token's first character in its section."""
    encoded = tokenizer(pieces, add_special_tokens=False, return_offsets_mapping=want_starts)
    out = []
    for n, ids in enumerate(encoded["input_ids"]):
        starts = None
        if want_starts:
            starts = np.array([offsets[n] + a for a, _ in encoded["offset_mapping"][n]], dtype=np.int64)
        out.append((np.array(ids, dtype=np.uint32), starts))
    return out


def _piece_end(text: str, pos: int) -> int:
    """Where the piece starting at `pos` ends: at most PIECE_CHARS on, before a space between two words if there
    is one in the piece's second half, else exactly there (text without spaces has no better place)."""
    end = pos + PIECE_CHARS
    if end >= len(text):
        return len(text)
    low, at = pos + PIECE_CHARS // 2, end
    while (at := text.rfind(" ", low, at)) > low:
        if not text[at - 1].isspace() and not text[at + 1].isspace():
            return at
    return end


def window_bounds(n: int, length: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """chunk_spans as two arrays (starts, ends)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    step = length - overlap
    count = 1 + max(0, -(-(n - length) // step))
    starts = np.arange(count, dtype=np.int64) * step
    return starts, np.minimum(starts + length, n)


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
