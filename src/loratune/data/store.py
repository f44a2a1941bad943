"""Tokenized samples as flat numpy arrays, cached on disk and memory-mapped; `Sample`s are made one at a time.

A store is one dataset's tokens: `ids.npy` (uint32, every token once), `labels.npy` (int32, only for samples whose
labels differ from their inputs: instruction samples) and the sample table, one `rows.<field>.npy` per field, one entry
per sample: its span of `ids`, whether BOS goes first (raw-text windows overlap in `ids` and get BOS on the fly, so
nothing is copied), where its labels start (-1: the labels are the inputs), its trained-token counts for the reports,
its length before the cutoff acted (the data check's histogram) and its KTO label (`desirable`: 1, 0, -1 for none).
`dropped.npy` holds the lengths before the cutoff of the records the cutoff dropped. Plain numpy
(`np.load(mmap_mode='r')`) rather than Arrow: flat arrays need no schema, and a sample is two slices. Every array is
written to disk in blocks as it grows (`StoreWriter`), so a writer holds a few blocks, never the dataset; a reader
memory-maps them all.

The cache lives in `<home>/datasets/.cache/<key>/`, the key a hash of the files' bytes, the tokenizer, the templates
and the options that shape samples. A store is written into a temporary folder beside it and renamed into place
once complete, so a killed writer leaves no cache that could be read.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from loratune.data.samples import IGNORE, Sample
from loratune.workspace import pid_alive

ROW_FIELDS = ("start", "end", "bos", "label_start", "trained", "eos", "only_eos", "full", "desirable")
ROW_TYPES = (np.int64, np.int64, bool, np.int64, np.int32, bool, bool, np.int32, np.int8)
NO_LABEL = -1  # `desirable` of a sample that is not a KTO record's
TMP_PREFIX = ".tmp-"


class Store:
    """One dataset's tokens and sample table (arrays in memory or memory-mapped from a cache folder)."""

    def __init__(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        rows: dict[str, np.ndarray],
        bos_id: int,
        digest: str,
        dropped: np.ndarray | None = None,
    ):
        self.ids, self.labels, self.rows, self.bos_id, self.digest = ids, labels, rows, bos_id, digest
        self.dropped = np.zeros(0, dtype=np.int32) if dropped is None else dropped

    def __len__(self) -> int:
        return len(self.rows["start"])

    def sample(self, i: int) -> Sample:
        start, end = int(self.rows["start"][i]), int(self.rows["end"][i])
        ids = self.ids[start:end].tolist()
        if self.rows["bos"][i]:
            ids.insert(0, self.bos_id)
        at = int(self.rows["label_start"][i])
        labels = ids if at < 0 else self.labels[at : at + len(ids)].tolist()
        desirable = int(self.rows["desirable"][i])
        # raw text: one list for ids and labels, as every token is trained and nothing mutates it
        return Sample(ids, labels, None if desirable == NO_LABEL else bool(desirable))

    @classmethod
    def load(cls, folder: Path) -> Store:
        meta = json.loads((folder / "meta.json").read_text())
        rows = {name: _load(folder, f"rows.{name}") for name in ROW_FIELDS}
        ids, labels, dropped = (_load(folder, name) for name in ("ids", "labels", "dropped"))
        return cls(ids, labels, rows, meta["bos_id"], meta["digest"], dropped)


def _load(folder: Path, name: str) -> np.ndarray:
    return np.load(folder / f"{name}.npy", mmap_mode="r")


class SampleSet(Sequence):
    """The samples of one or more stores, each part all of a store's samples or a selection (data.mix), in order."""

    def __init__(self, parts: list[tuple[Store, np.ndarray | None]], dropped: list[np.ndarray] | None = None):
        self.parts = [(s, sel) for s, sel in parts if (len(s) if sel is None else len(sel))]
        self._ends = np.cumsum([len(s) if sel is None else len(sel) for s, sel in self.parts]).tolist()
        # Each store's lengths of records the cutoff dropped, kept from every part (a store whose every record was
        # dropped has no samples, so no part, but its lengths still show in the data check).
        self.dropped = [s.dropped for s, _ in parts] if dropped is None else dropped

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = bisect.bisect_right(self._ends, i)
        store, sel = self.parts[part]
        row = i - (self._ends[part - 1] if part else 0)
        return store.sample(row if sel is None else int(sel[row]))

    def __eq__(self, other) -> bool:  # as lists of samples compare: sample by sample
        if not isinstance(other, SampleSet | list):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None

    def __add__(self, other: SampleSet) -> SampleSet:
        return SampleSet(self.parts + other.parts, self.dropped + other.dropped)

    def select(self, rows: np.ndarray) -> SampleSet:
        """The samples at `rows` (indices into this set, repeats allowed), in that order."""
        parts, rows = [], np.asarray(rows, dtype=np.int64)
        ends = np.asarray(self._ends)
        which = np.searchsorted(ends, rows, side="right")
        for part, (store, sel) in enumerate(self.parts):
            local = rows[which == part] - (self._ends[part - 1] if part else 0)
            parts.append((store, local if sel is None else sel[local]))
        if len(self.parts) > 1 and not np.all(np.diff(which) >= 0):
            raise ValueError("select keeps each part's order only for rows sorted by part")
        return SampleSet(parts, self.dropped)

    def column(self, name: str) -> np.ndarray:
        """One field of the sample table over the whole set ('trained', 'eos', 'only_eos', 'full': the length before
        the cutoff acted, 'desirable'), or 'length'."""
        columns = []
        for store, sel in self.parts:
            rows = store.rows
            if name == "length":
                value = rows["end"] - rows["start"] + rows["bos"].astype(np.int64)
            else:
                value = rows[name]
            columns.append(value if sel is None else value[sel])
        return np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)

    def dropped_lengths(self) -> np.ndarray:
        """The lengths before the cutoff of the records it dropped (once per dataset, whatever data.mix repeats)."""
        return np.concatenate(self.dropped) if self.dropped else np.zeros(0, dtype=np.int32)

    def fingerprint(self) -> str:
        """The samples and their order: each store's content digest and each selection's rows."""
        digest = hashlib.sha256()
        for store, sel in self.parts:
            digest.update(store.digest.encode())
            digest.update(b"all" if sel is None else np.ascontiguousarray(sel, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]


class StoreWriter:
    """Collects a dataset's tokens and samples; `finish` returns the Store (and writes it when given a folder).

    With a folder every array goes to disk in blocks of FLUSH_BYTES as it grows (a block per array is held, never the
    dataset); without one (a store built for a single use) the arrays stay in memory."""

    FLUSH_BYTES = 1 << 22  # bytes of one array held before they go to disk

    def __init__(self, folder: Path | None, bos_id: int | None, eos_id: int | None):
        self.folder, self.bos_id, self.eos_id = folder, bos_id, eos_id
        self.digest = hashlib.sha256()
        self._ids = _Column(folder, "ids", np.uint32, self.FLUSH_BYTES)
        self._labels = _Column(folder, "labels", np.int32, self.FLUSH_BYTES)
        self._dropped = _Column(folder, "dropped", np.int32, self.FLUSH_BYTES)
        self._rows = {
            name: _Column(folder, f"rows.{name}", kind, self.FLUSH_BYTES)
            for name, kind in zip(ROW_FIELDS, ROW_TYPES, strict=True)
        }

    @property
    def count(self) -> int:
        """Tokens written."""
        return self._ids.count

    def add_tokens(self, ids: np.ndarray) -> int:
        """Append tokens to the stream; returns where they start."""
        ids = np.ascontiguousarray(ids, dtype=np.uint32)
        self.digest.update(ids.tobytes())
        return self._ids.add(ids)

    def add_windows(self, starts: np.ndarray, ends: np.ndarray, bos: bool, eos_at: np.ndarray) -> None:
        """Raw-text windows over the stream: every token trained; `eos_at` are the stream positions holding EOS."""
        starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
        n = len(starts)
        has_eos = np.searchsorted(eos_at, starts) < np.searchsorted(eos_at, ends)
        if bos and self.bos_id == self.eos_id:
            has_eos[:] = True
        length = ends - starts + int(bos)
        eos_only = has_eos & (length == 1)
        self._add_rows(starts, ends, np.full(n, bos), np.full(n, -1), length, has_eos, eos_only, length,
                       np.full(n, NO_LABEL))  # fmt: skip

    def add_samples(self, samples: list[Sample], full: list[int] | None = None, dropped: list[int] = ()) -> None:
        """Instruction samples: their tokens, and their labels where those differ from the tokens.

        `full`: each sample's length before the cutoff acted (default: its length); `dropped`: the lengths before the
        cutoff of records the cutoff dropped. Both are only for the data check's histogram."""
        if len(dropped):
            self._dropped.add(dropped)
        if not samples:
            return
        starts, ends, label_starts, trained, eos, only_eos, desirable = [], [], [], [], [], [], []
        id_pieces, label_pieces = [], []
        at, label_at = self._ids.count, self._labels.count
        for s in samples:
            ids = np.asarray(s.input_ids, dtype=np.uint32)
            self.digest.update(ids.tobytes())  # each sample's tokens, then its labels: the digest of v2 stores
            id_pieces.append(ids)
            starts.append(at)
            at += len(ids)
            ends.append(at)
            kept = [x for x in s.labels if x != IGNORE]
            if list(s.labels) == list(s.input_ids):
                label_starts.append(-1)
            else:
                labels = np.asarray(s.labels, dtype=np.int32)
                self.digest.update(labels.tobytes())
                label_pieces.append(labels)
                label_starts.append(label_at)
                label_at += len(labels)
            trained.append(len(kept))
            eos.append(self.eos_id is not None and self.eos_id in kept)
            only_eos.append(kept == [self.eos_id])
            desirable.append(NO_LABEL if s.desirable is None else int(s.desirable))
        self._ids.add(np.concatenate(id_pieces))
        if label_pieces:
            self._labels.add(np.concatenate(label_pieces))
        n = len(samples)
        lengths = [e - s for s, e in zip(starts, ends, strict=True)] if full is None else full
        self._add_rows(starts, ends, np.zeros(n, bool), label_starts, trained, eos, only_eos, lengths, desirable)

    def _add_rows(self, *columns) -> None:
        for name, column in zip(ROW_FIELDS, columns, strict=True):
            self._rows[name].add(column)

    def finish(self, meta: dict) -> Store:
        ids, labels, dropped = (column.finish() for column in (self._ids, self._labels, self._dropped))
        rows = {name: column.finish() for name, column in self._rows.items()}
        for name in ("start", "end", "label_start", "bos"):
            _hash(self.digest, rows[name])
        if (rows["desirable"] != NO_LABEL).any():  # KTO labels; other stores keep the digests they had before them
            _hash(self.digest, rows["desirable"])
        digest = self.digest.hexdigest()[:32]
        if self.folder is None:
            return Store(ids, labels, rows, self.bos_id, digest, dropped)
        meta = dict(meta, bos_id=self.bos_id, digest=digest, tokens=self.count)
        (self.folder / "meta.json").write_text(json.dumps(meta))
        return Store.load(self.folder)

    def close(self) -> None:
        for column in (self._ids, self._labels, self._dropped, *self._rows.values()):
            column.close()


class _Column:
    """One array of a store as it grows: pieces are held until `flush_bytes` of them (or MAX_PIECES pieces) are
    pending, then written to `<name>.bin` in `folder`, or, without a folder, joined into one block in memory (a
    text record per window would otherwise leave a Python object per record)."""

    MAX_PIECES = 1024

    def __init__(self, folder: Path | None, name: str, dtype, flush_bytes: int):
        self.folder, self.name, self.dtype = folder, name, np.dtype(dtype)
        self.flush_items = max(1, flush_bytes // self.dtype.itemsize)
        self.count = 0  # values added
        self.pieces: list[np.ndarray] = []
        self.pending = 0
        self.blocks: list[np.ndarray] = []  # in memory: the joined pieces
        self.file = open(folder / f"{name}.bin", "wb") if folder is not None else None

    def add(self, values) -> int:
        """Append values; returns where they start."""
        at = self.count
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.pieces.append(values)
        self.pending += len(values)
        self.count += len(values)
        if self.pending >= self.flush_items or len(self.pieces) >= self.MAX_PIECES:
            self._flush()
        return at

    def _flush(self) -> None:
        if not self.pieces:
            return
        if self.file is not None:
            for piece in self.pieces:
                self.file.write(piece.data)
        else:
            self.blocks.append(np.concatenate(self.pieces))
        self.pieces, self.pending = [], 0

    def finish(self) -> np.ndarray:
        """The whole array: in memory, or memory-mapped from `<name>.npy`."""
        self._flush()
        if self.file is None:
            return np.concatenate(self.blocks) if self.blocks else np.zeros(0, dtype=self.dtype)
        self.file.close()
        _bin_to_npy(self.folder / f"{self.name}.bin", self.folder / f"{self.name}.npy", self.count, self.dtype)
        return _load(self.folder, self.name)

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()


def _hash(digest, values: np.ndarray, step: int = 1 << 22) -> None:
    """Add an array's bytes to `digest` a block at a time (a memory-mapped one is not read in whole)."""
    for at in range(0, len(values), step):
        digest.update(np.ascontiguousarray(values[at : at + step]).tobytes())


def _bin_to_npy(raw: Path, target: Path, count: int, dtype=np.uint32) -> None:
    """Give a raw stream of `dtype` values an .npy header, streaming (np.load then memory-maps it)."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, dtype=dtype))
    header["shape"] = (count,)
    with open(target, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(src, out, 1 << 24)
        out.flush()
        os.fsync(out.fileno())
    raw.unlink()


def cached(cache_root: Path, key: str) -> tuple[Store, dict] | None:
    """The store of `key` and its meta (the report), if a complete one exists."""
    folder = cache_root / key
    if not (folder / "meta.json").is_file():
        return None
    try:
        return Store.load(folder), json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError, KeyError):  # a damaged cache is rebuilt, never trusted
        return None


class CacheWrite:
    """`with CacheWrite(root, key) as folder:` write the store into `folder`; on success it becomes `root/key`."""

    def __init__(self, cache_root: Path, key: str):
        self.root, self.key = cache_root, key

    def __enter__(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_dead_writers(self.root)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=self.root))
        return self.tmp

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        target = self.root / self.key
        try:
            os.rename(self.tmp, target)
        except OSError:  # another run wrote the same key meanwhile: theirs is as good
            shutil.rmtree(self.tmp, ignore_errors=True)


def _remove_dead_writers(root: Path) -> None:
    """Temporary folders of writers that were killed (their process is gone)."""
    for folder in root.glob(f"{TMP_PREFIX}*"):
        pid = folder.name[len(TMP_PREFIX) :].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """What makes this tokenizer's ids: its whole definition (vocab, merges, normalizer, specials) and template."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    digest.update(repr(specials).encode())
    digest.update(repr(tokenizer("a")["input_ids"]).encode())  # the default BOS/EOS rule (data.add_bos auto)
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()
