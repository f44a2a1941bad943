"""Raw text (.txt / .md files, folders of them, `text` records) -> overlapping chunks of `cutoff` tokens, all trained.

Each document is split at `hard_cut` (no chunk crosses it); each section is tokenized once and cut into windows of
`cutoff` tokens that start every `cutoff - overlap` tokens; EOS ends the last section of each document; windows
shorter than `min_chunk` are dropped. With `newline_cut` N, a window's start moves just past a newline found within its
first N characters, and its end back to just after a newline found within its last N characters (text-generation-webui's
"prefer newline cut"), so chunks begin and end on whole lines.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from pathlib import Path

from loratune.config import DataSpec
from loratune.data.samples import DataReport, Sample, read_text, wants_bos
from loratune.errors import LoratuneError

PIECE_CHARS = 1 << 16  # long text is tokenized in pieces of about this many characters (see tokenize_text)
PIECES_PER_CALL = 16


TEXT_SUFFIXES = (".txt", ".md")


def build(path: Path, tokenizer, spec: DataSpec) -> tuple[list[Sample], DataReport]:
    """A .txt / .md file, or a folder of them (read recursively, in sorted order)."""
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if path.is_dir()
        else [path]
    )
    if not files:
        raise LoratuneError(f"{path}: folder has no .txt or .md files")
    report = DataReport(kind="raw text", path=str(path))
    return build_files(files, tokenizer, spec, report, allow_empty=path.is_dir()), report


def build_files(files: list[Path], tokenizer, spec: DataSpec, report: DataReport, allow_empty: bool) -> list[Sample]:
    """Each file is a document; an empty one is refused unless it is one of a folder's (`allow_empty`)."""
    samples = []
    for file in files:
        text = read_text(file)
        if not allow_empty and (not text or text.isspace()):
            raise LoratuneError(f"{file}: file is empty")
        samples += chunk_documents([text], tokenizer, spec, report)
        del text
    return samples


def chunk_documents(documents: list[str], tokenizer, spec: DataSpec, report: DataReport) -> list[Sample]:
    """Windows of every document (a .txt file, a `text` record); consumes the list, so each text is freed once cut."""
    bos = [tokenizer.bos_token_id] if wants_bos(tokenizer, spec.add_bos) else []
    eos = [tokenizer.eos_token_id] if spec.add_eos and tokenizer.eos_token_id is not None else []
    length = spec.cutoff - len(bos)
    if spec.overlap >= length:
        raise LoratuneError(
            f"data.overlap ({spec.overlap}) must be smaller than data.cutoff ({spec.cutoff}) for raw text"
        )
    samples = []
    for d in range(len(documents)):
        text, documents[d] = documents[d], ""
        sections = [s for s in text.split(spec.hard_cut) if s.strip()] if spec.hard_cut else [text]
        del text  # a section is its own copy; the whole document need not stay in memory beside it
        report.records += len(sections)
        for i in range(len(sections)):
            section = sections[i]
            sections[i] = ""  # freed once tokenized
            tokens, starts = tokenize_text(section, tokenizer, spec.newline_cut > 0)
            if i == len(sections) - 1:
                tokens += eos
                if starts is not None:
                    starts.extend([len(section)] * len(eos))
            for start, end in chunk_spans(len(tokens), length, spec.overlap):
                if spec.newline_cut:
                    start, end = snap_to_newlines(section, starts, start, end, spec.newline_cut)
                chunk = tokens[start:end]
                if len(chunk) >= spec.min_chunk:
                    ids = bos + chunk
                    samples.append(Sample(ids, ids))  # one list: every token is trained, and nothing mutates it
                else:
                    report.too_short += 1
    return samples


def tokenize_text(text: str, tokenizer, offsets: bool) -> tuple[list[int], array | None]:
    """Token ids of `text` (and each token's first character when `offsets`), tokenized in pieces.

    One tokenizer call on a 200 MB line holds tens of GB of encodings; pieces of PIECE_CHARS, PIECES_PER_CALL at a
    time, keep that bounded (and run faster). Pieces end just before a space that starts a word, so they tokenize as
    the whole text does. For long text the ids are shared int objects (one per vocabulary entry), so the
    overlapping windows cut from them cost a pointer per token.
    """
    if len(text) <= PIECE_CHARS:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
        starts = array("q", (a for a, _ in encoded["offset_mapping"])) if offsets else None
        return list(encoded["input_ids"]), starts
    shared = list(range(len(tokenizer)))
    ids: list[int] = []
    starts = array("q") if offsets else None
    pos = 0
    while pos < len(text):
        bounds = []
        while pos < len(text) and len(bounds) < PIECES_PER_CALL:
            end = _piece_end(text, pos)
            bounds.append((pos, end))
            pos = end
        encoded = tokenizer([text[a:b] for a, b in bounds], add_special_tokens=False, return_offsets_mapping=offsets)
        for n, (first, _) in enumerate(bounds):
            ids += [shared[t] if t < len(shared) else t for t in encoded["input_ids"][n]]
            if starts is not None:
                starts.extend(first + a for a, _ in encoded["offset_mapping"][n])
    return ids, starts


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
