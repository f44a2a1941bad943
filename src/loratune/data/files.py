"""Dataset files: which files a path holds, and reading each kind into records (dicts) or raw text.

Kinds by suffix: .jsonl / .json (records), .csv / .tsv and .parquet / .arrow (rows as records), .txt / .md (raw text).
A folder is read recursively; what it holds besides (hidden files, other types) is skipped and reported. Every error
names the file and the record or row at fault.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from loratune.data.samples import read_text
from loratune.errors import LoratuneError

KINDS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
    ".md": "text",
}
RECORD_UNIT = {"json": "record", "csv": "row", "parquet": "row", "arrow": "row"}
SUPPORTED = ", ".join(KINDS)


@dataclass
class FileList:
    files: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """(file, why) for what a folder holds that is not read."""


def kind_of(file: Path) -> str | None:
    return KINDS.get(file.suffix.lower())


def list_files(path: Path) -> FileList:
    """The data files of a file or folder (sorted, so a run sees them in the same order every time)."""
    if not path.is_dir():
        if kind_of(path) is None:
            raise LoratuneError(f"{path}: unsupported data file type; use {SUPPORTED} (or a folder of them)")
        return FileList([path])
    found = FileList([])
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            found.skipped.append((file, "hidden"))
        elif kind_of(file) is None:
            found.skipped.append((file, "not a data file type"))
        else:
            found.files.append(file)
    if not found.files:
        raise LoratuneError(f"{path}: folder has no data files ({SUPPORTED})")
    return found


def read_records(file: Path) -> list[dict]:
    """The records of a .json / .jsonl / .csv / .tsv / .parquet / .arrow file, each an object of column -> value."""
    kind = kind_of(file)
    readers = {"json": read_json, "csv": read_csv, "parquet": read_parquet, "arrow": read_arrow}
    records = readers[kind](file)
    if not records:
        raise LoratuneError(f"{file}: file is empty")
    return records


def first_record(file: Path) -> dict | None:
    """The first record of a records file, reading as little as the format allows (None: none, or unreadable)."""
    try:
        if file.suffix.lower() == ".jsonl":
            with file.open(encoding="utf-8-sig") as f:
                for line in f:
                    if line.strip():
                        record = json.loads(line)
                        return record if isinstance(record, dict) else None
            return None
        if kind_of(file) == "parquet":
            import pyarrow.parquet as pq

            reader = pq.ParquetFile(file)
            return reader.read_row_group(0).slice(0, 1).to_pylist()[0] if reader.num_row_groups else None
        records = read_records(file)
    except (LoratuneError, ValueError, OSError, IndexError, RecursionError):
        return None  # the build that follows names the fault
    return records[0]


# ---------------------------------------------------------------- JSON


def read_json(path: Path) -> list[dict]:
    """A JSON array of objects, or JSON Lines (one object per line); errors name file, line and column."""
    text = read_text(path)
    if not text.strip():
        raise LoratuneError(f"{path}: file is empty")
    if text.lstrip().startswith("[") or (path.suffix.lower() == ".json" and not _looks_like_jsonl(text)):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise LoratuneError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        except RecursionError:
            raise LoratuneError(f"{path}: JSON nested too deeply to be records") from None
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list):
            raise LoratuneError(f"{path}: expected a JSON array of records (objects)")
    else:
        records = []
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LoratuneError(f"{path}: invalid JSON on line {number}, column {e.colno}: {e.msg}") from None
                except RecursionError:
                    raise LoratuneError(f"{path}: line {number} is JSON nested too deeply to be a record") from None
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise LoratuneError(f"{path} record {number}: expected an object with keys, got {type(record).__name__}")
    return records


def _looks_like_jsonl(text: str) -> bool:
    """JSON Lines saved as .json: the first line alone is a whole object and more lines follow."""
    first, _, rest = text.strip().partition("\n")
    try:
        return isinstance(json.loads(first), dict) and bool(rest.strip())
    except (json.JSONDecodeError, RecursionError):
        return False


# ---------------------------------------------------------------- CSV / TSV


def read_csv(path: Path) -> list[dict]:
    """A header row, then one record per row (every value is text; an empty cell is an empty string)."""
    text = read_text(path)
    if not text.strip():
        raise LoratuneError(f"{path}: file is empty")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, strict=True)
    records, header = [], None
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if header is None:
                header = [cell.strip() for cell in row]
                if len(set(header)) < len(header) or not all(header):
                    raise LoratuneError(f"{path}: the header row needs distinct, non-empty column names: {row}")
                continue
            if len(row) != len(header):
                raise LoratuneError(
                    f"{path} row {len(records) + 1} (line {reader.line_num}): {len(row)} fields, the header has "
                    f"{len(header)} ({', '.join(header)}); quote fields that hold a {_name(delimiter)}"
                )
            records.append(dict(zip(header, row, strict=True)))
    except csv.Error as e:
        raise LoratuneError(f"{path} row {len(records) + 1} (line {reader.line_num}): not valid CSV ({e})") from None
    return records


def _name(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else "comma"


# ---------------------------------------------------------------- Parquet / Arrow


def read_parquet(path: Path) -> list[dict]:
    """Every row group in turn, so a damaged one is named with the rows it holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise LoratuneError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    records: list[dict] = []
    for group in range(reader.num_row_groups):
        rows = reader.metadata.row_group(group).num_rows
        try:
            records += reader.read_row_group(group).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise LoratuneError(
                f"{path} rows {len(records) + 1}-{len(records) + rows} (row group {group + 1}): cannot be read "
                f"({_first_line(e)}); re-export the file"
            ) from None
    return records


def read_arrow(path: Path) -> list[dict]:
    """An Arrow IPC file or stream (what `datasets` saves as .arrow), batch by batch."""
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source = pa.memory_map(str(path))
            batches = iter(pa.ipc.open_stream(source))
    except (pa.ArrowException, OSError) as e:
        raise LoratuneError(f"{path}: not a readable Arrow file ({_first_line(e)})") from None
    records: list[dict] = []
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return records
        except (pa.ArrowException, OSError) as e:
            raise LoratuneError(
                f"{path}: the rows after row {len(records)} cannot be read ({_first_line(e)}); re-export the file"
            ) from None
        records += batch.to_pylist()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
