"""Pick the reader for each dataset and file, and report what each produced."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import numpy as np

from loratune.config import DataSpec, to_dict
from loratune.data import hub, instructions, raw_text, store
from loratune.data.blocks import InstructionBlocks
from loratune.data.chat_templates import resolve_chat_template
from loratune.data.files import RECORD_UNIT, FileList, first_record, kind_of, list_files, read_records

# Re-exported: training/, prompting and the tests import the shared names from here.
from loratune.data.samples import IGNORE, DataReport, Sample, adds_bos, read_text, wants_bos
from loratune.data.shapes import rename_columns, shape_of, text_of
from loratune.data.store import SampleSet, StoreWriter
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

__all__ = [
    "IGNORE",
    "DataReport",
    "Sample",
    "SampleSet",
    "adds_bos",
    "build_samples",
    "find_data",
    "is_raw_text",
    "read_samples",
    "read_text",
    "resolved_path",
    "run_name",
    "wants_bos",
]


def build_samples(spec: DataSpec, tokenizer, ws: Workspace) -> tuple[SampleSet, DataReport]:
    """Read `spec.path` (files, folders, hub datasets, or a list of them) into training samples."""
    samples, report = read_samples(spec, tokenizer, ws)
    if not samples:
        raise LoratuneError(f"{report.path}: no usable samples ({report.summary()})")
    return samples, report


def read_samples(spec: DataSpec, tokenizer, ws: Workspace) -> tuple[SampleSet, DataReport]:
    """Like build_samples, but an empty result is returned, not refused (the data check reports it)."""
    given = spec.path if isinstance(spec.path, list) else [spec.path]
    samples, parts = SampleSet([]), []
    for number, (name, weight) in enumerate(zip(given, spec.mix or [1.0] * len(given), strict=True), 1):
        part_samples, part = read_dataset(name, spec, tokenizer, ws)
        if weight != 1.0:
            part.weight = weight
            part_samples = weighted(part_samples, weight, number)
            part.samples = len(part_samples)
            _count_tokens(part, part_samples)
        samples += part_samples
        parts.append(part)
    if len(parts) == 1:
        return samples, parts[0]
    kinds = {p.kind for p in parts}
    report = DataReport(kind=kinds.pop() if len(kinds) == 1 else "mixed", path=", ".join(p.path for p in parts))
    report.parts = parts
    for counter in COUNTERS:
        setattr(report, counter, sum(getattr(p, counter) for p in parts))
    for part in parts:
        for total, counts in ((report.shapes, part.shapes), (report.files, part.files)):
            for key, count in counts.items():
                total[key] = total.get(key, 0) + count
        report.skipped += part.skipped
    report.samples = len(samples)
    report.cached = all(p.cached for p in parts)
    _count_tokens(report, samples)
    return samples, report


COUNTERS = ("records", "too_long", "truncated", "nothing_to_train", "too_short")


def read_dataset(given: str, spec: DataSpec, tokenizer, ws: Workspace) -> tuple[SampleSet, DataReport]:
    """One dataset: a file, a folder (each file by its own reader), or a hub snapshot (its subset and split).

    Its samples come from the cache when the same bytes were read before with the same tokenizer, templates and
    options (see data.store); otherwise they are built, and cached for the next run, resume or data check.
    """
    path = find_data(given, ws, spec.revision)
    name = f"{hub.PREFIX}{hub.repo_of(path)}" if hub.is_snapshot(path) else str(path)
    if hub.is_snapshot(path):
        listing = FileList(hub.select_files(path, spec.subset, spec.split))
        name += f" (split {spec.split}{f', subset {spec.subset}' if spec.subset else ''})"
    else:
        listing = list_files(path)
    cache_root = ws.datasets / CACHE_FOLDER
    key = cache_key(name, path, listing.files, spec, tokenizer, ws)
    hit = store.cached(cache_root, key)
    if hit is not None:
        found, meta = hit
        report = DataReport(**meta["report"])
        report.cached = True
        return SampleSet([(found, None)]), report
    report = DataReport(kind="", path=name)
    report.skipped = [f"{f.relative_to(path)} ({why})" for f, why in listing.skipped]
    with store.CacheWrite(cache_root, key) as folder:
        writer = StoreWriter(folder, tokenizer.bos_token_id, tokenizer.eos_token_id)
        try:
            plain = True
            text_files = [f for f in listing.files if kind_of(f) == "text"]
            with raw_text.TextTokenizer(tokenizer, spec, report, writer, raw_text.workers_for(text_files)) as texts:
                for file in listing.files:
                    shapes_seen = read_file(file, spec, tokenizer, ws, report, texts, alone=not path.is_dir())
                    plain = plain and set(shapes_seen) <= PLAIN_SHAPES
                    suffix = file.suffix.lower()
                    report.files[suffix] = report.files.get(suffix, 0) + 1
                    shown = file.relative_to(path) if path.is_dir() else file.name
                    report.file_shapes.append(f"{shown}: {_counts(shapes_seen)}")
                    for shape, count in shapes_seen.items():
                        report.shapes[shape] = report.shapes.get(shape, 0) + count
            has_raw = any(s in report.shapes for s in PLAIN_SHAPES)
            report.kind = "raw text" if plain else "mixed" if has_raw else "instruction"
            samples = SampleSet([(writer.finish({}), None)])
        finally:
            writer.close()
        report.samples = len(samples)
        _count_tokens(report, samples)
        _save_report(folder, report)  # last, inside the temporary folder: the rename then makes it a cache
    return samples, report


CACHE_FOLDER = ".cache"
# Change when the way samples are built changes, so old caches are not read. v2: a file mixing `text` records with
# instruction records keeps its order (v1 put its text after its instruction samples). v3: the sample table is one
# .npy per field (written in blocks, memory-mapped) with each sample's length before the cutoff, and dropped.npy (for
# the data check's histogram, from the one build); the samples and their fingerprint are those of v2. v4: the sample
# table holds each sample's KTO label (`desirable`), and a prompt/completion chat's prompt turns are never trained.
CACHE_VERSION = b"loratune samples v4"
NOT_SHAPING = ("path", "eval_path", "eval_split", "mix")  # data options that never change a dataset's own samples


def cache_key(name: str, path: Path, files: list[Path], spec: DataSpec, tokenizer, ws: Workspace) -> str:
    """A hash of everything a dataset's samples depend on: the files' bytes (hashed, not their size and time), the
    tokenizer, the format or chat template in use, and the data options."""
    digest = hashlib.sha256(CACHE_VERSION)
    digest.update(name.encode())
    for file in files:
        shown = file.relative_to(path) if path.is_dir() else file.name
        digest.update(f"{shown}\0{store.file_digest(file)}\0".encode())
    options = {k: v for k, v in to_dict(spec).items() if k not in NOT_SHAPING}
    digest.update(json.dumps(options, sort_keys=True).encode())
    digest.update(store.tokenizer_digest(tokenizer).encode())
    fmt = "alpaca" if spec.format in ("auto", "chat") else spec.format  # the format file 'auto' falls back to
    for read in (
        lambda: instructions.load_format(fmt, ws),
        lambda: resolve_chat_template(spec.chat_template, tokenizer),
    ):
        try:
            value = read()
        except LoratuneError as e:  # the builder raises it too, if the data needs this template
            value = str(e)
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def _save_report(folder: Path, report: DataReport) -> None:
    """The dataset's report beside its store, so a cached run reports what the first one did."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["report"] = {k: v for k, v in dataclasses.asdict(report).items() if k not in ("parts", "cached")}
    (folder / "meta.json").write_text(json.dumps(meta))


PLAIN_SHAPES = {"raw text", "text"}  # trained on every token, no prompt


def read_file(
    file: Path, spec: DataSpec, tokenizer, ws: Workspace, report: DataReport, texts: raw_text.TextTokenizer, alone: bool
) -> dict[str, int]:
    """Write a file's samples (through `texts` and its writer); return its records per shape (a .txt / .md file is
    one 'raw text' document)."""
    kind = kind_of(file)
    if kind == "text":
        texts.add_file(file, allow_empty=not alone)
        return {"raw text": 1}
    unit = RECORD_UNIT[kind]
    seen, count = {}, 0
    through_format = instructions.uses_format_file(spec.format)
    # Records stream from the file into the store: memory holds a few blocks of instruction records, never the file.
    with InstructionBlocks(file, unit, tokenizer, spec, ws, report, texts) as blocks:
        for number, record in enumerate(read_records(file), 1):
            record = rename_columns(record, spec.columns)
            shape = shape_of(record)
            seen[shape] = seen.get(shape, 0) + 1
            if shape == "text" and not through_format:
                text = text_of(record, f"{file} {unit} {number}")
                blocks.flush()  # the instruction records before it go first: samples keep the file's order
                texts.add_document([text])
            else:
                blocks.add(number, record)
                count += 1
    report.records += count  # raw text counts its blocks between hard cuts
    return seen


def weighted(samples: SampleSet, weight: float, number: int) -> SampleSet:
    """data.mix: each sample `int(weight)` times, plus a seeded share of them for the fraction (the same every run)."""
    whole, fraction = divmod(weight, 1.0)
    picked = random.Random(f"data.mix {number}").sample(range(len(samples)), round(fraction * len(samples)))
    rows = [np.arange(len(samples))] * int(whole) + [np.array(sorted(picked), dtype=np.int64)]
    return SampleSet([]).__add__(samples.select(np.concatenate(rows)))


def _count_tokens(report: DataReport, samples: SampleSet) -> None:
    report.tokens = int(samples.column("length").sum())
    report.trained_tokens = int(samples.column("trained").sum())


def _counts(seen: dict[str, int]) -> str:
    return ", ".join(f"{shape} {count}" for shape, count in seen.items()) or "nothing"


def is_raw_text(path: Path | list[Path], columns: dict[str, str] | None = None) -> bool:
    """Is every file of the data raw text (.txt / .md, `text` records, after `columns` renames a file's columns, as
    data.columns does)? Then prompts are bare text."""
    paths = path if isinstance(path, list) else [path]
    for one in paths:
        if one.is_dir():
            files = [f for f in one.rglob("*") if f.is_file() and kind_of(f) and not f.name.startswith(".")]
            if hub.is_snapshot(one):
                files = [f for f in files if f.suffix.lower() != ".md"]
        else:
            files = [one]
        for file in files:
            if kind_of(file) != "text":
                record = first_record(file) if kind_of(file) else None
                if record is None or shape_of(rename_columns(record, columns or {})) != "text":
                    return False
    return True


def resolved_path(spec: DataSpec, ws: Workspace) -> str | list[str]:
    """data.path as it is saved in a run's loratune.yaml: absolute local paths (a hub dataset: its snapshot), so a
    resume from another folder, or offline, reads the same data."""
    found = find_data(spec.path, ws, spec.revision)
    return [str(p.resolve()) for p in found] if isinstance(found, list) else str(found.resolve())


def run_name(path: str | list[str]) -> str:
    """The adapter's default name: after its (first) dataset; a hub dataset by its name, not its snapshot's commit."""
    first = Path(path[0] if isinstance(path, list) else path)
    if hub.is_snapshot(first):
        return hub.repo_of(first).split("/")[-1]
    return first.stem


def find_data(given: str | list[str], ws: Workspace, revision: str = "") -> Path | list[Path]:
    """A path as given, else a name inside datasets/, else a hub dataset at `revision` (downloaded once); a list
    gives a list."""
    if isinstance(given, list):
        return [find_data(one, ws, revision) for one in given]
    if not given:
        raise LoratuneError("no dataset given: pass --data <file or folder> (or set data.path in the config)")
    repo_id = hub.hub_id(given, ws)
    if repo_id is not None:
        return hub.download(repo_id, ws, revision)
    path = Path(given).expanduser()
    if not path.exists() and not path.is_absolute() and (ws.datasets / given).exists():
        path = ws.datasets / given
    if not path.exists():
        raise LoratuneError(f"dataset not found: {given}")
    return path
