"""Dataset files: which files a path holds, and reading each kind into records (dicts) or raw text.

Kinds by suffix: .jsonl / .json (records), .csv / .tsv and .parquet / .arrow (rows as records), .txt / .md (raw text).
A folder is read recursively; what it holds besides (hidden files, other types) is skipped and reported. Records are
read one at a time (a JSON array excepted), so a large file is never held whole. Every error names the file and the
record or row at fault.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

from loratune.data.samples import read_blocks, read_text
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


def read_records(file: Path) -> Iterator[dict]:
    """The records of a .json / .jsonl / .csv / .tsv / .parquet / .arrow file, each an object of column -> value, one
    at a time: JSON Lines and CSV / TSV are read line by line, Parquet by row group, Arrow by batch, so memory does not
    grow with the file (a JSON array is parsed whole). An error is raised when its record is reached."""
    kind = kind_of(file)
    readers = {"json": read_json, "csv": read_csv, "parquet": read_parquet, "arrow": read_arrow}
    empty = True
    for record in readers[kind](file):
        empty = False
        yield record
    if empty:
        raise LoratuneError(f"{file}: file is empty")


def first_record(file: Path) -> dict | None:
    """The first record of a records file (None: none, or unreadable)."""
    try:
        return next(read_records(file), None)
    except (LoratuneError, ValueError, OSError, IndexError, RecursionError):
        return None  # the build that follows names the fault


def _lines(path: Path, csv_rules: bool = False) -> Iterator[str]:
    """The lines of read_text(path), read block by block: split at each LF (JSON Lines), or where
    str.splitlines(keepends=True) splits them (`csv_rules`: the lines the csv module reads, ends kept)."""
    held: list[str] = []  # the start of a line that goes on in the next block
    for block in read_blocks(path):
        lines = block.splitlines(keepends=True) if csv_rules else block.split("\n")
        rest = lines.pop() if lines and (not csv_rules or not lines[-1].endswith(LINE_ENDS)) else ""
        if lines:
            lines[0] = "".join(held) + lines[0]
            held = []
            yield from lines
        if rest:
            held.append(rest)
    if held:
        yield "".join(held)


LINE_ENDS = ("\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")  # str.splitlines's


# ---------------------------------------------------------------- JSON


def read_json(path: Path) -> Iterator[dict]:
    """JSON Lines (one object per line, read line by line), or a JSON array of objects (parsed whole); errors name
    file, line and column."""
    lines = ((number, line) for number, line in enumerate(_lines(path), 1) if line.strip())
    head = list(islice(lines, 2))  # the first two lines with text tell JSON Lines from one JSON document
    if not head:
        raise LoratuneError(f"{path}: file is empty")
    first = head[0][1]
    if first.lstrip().startswith("[") or (path.suffix.lower() == ".json" and not _looks_like_jsonl(first, head)):
        lines.close()
        yield from _json_document(path)
        return
    for count, (number, line) in enumerate(chain(head, lines), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoratuneError(f"{path}: invalid JSON on line {number}, column {e.colno}: {e.msg}") from None
        except RecursionError:
            raise LoratuneError(f"{path}: line {number} is JSON nested too deeply to be a record") from None
        yield _object(record, path, count)


def _json_document(path: Path) -> Iterator[dict]:
    """A file that is one JSON value: an array of records (or a single record)."""
    try:
        records = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise LoratuneError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise LoratuneError(f"{path}: JSON nested too deeply to be records") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise LoratuneError(f"{path}: expected a JSON array of records (objects)")
    for number, record in enumerate(records, 1):
        yield _object(record, path, number)


def _object(record, path: Path, number: int) -> dict:
    if not isinstance(record, dict):
        raise LoratuneError(f"{path} record {number}: expected an object with keys, got {type(record).__name__}")
    return record


def _looks_like_jsonl(first: str, head: list) -> bool:
    """JSON Lines saved as .json: the first line alone is a whole object and more lines follow."""
    try:
        return isinstance(json.loads(first), dict) and len(head) > 1
    except (json.JSONDecodeError, RecursionError):
        return False


# ---------------------------------------------------------------- CSV / TSV


def read_csv(path: Path) -> Iterator[dict]:
    """A header row, then one record per row (every value is text; an empty cell is an empty string)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(_lines(path, csv_rules=True), delimiter=delimiter, strict=True)
    header, count = None, 0
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
                    f"{path} row {count + 1} (line {reader.line_num}): {len(row)} fields, the header has "
                    f"{len(header)} ({', '.join(header)}); quote fields that hold a {_name(delimiter)}"
                )
            count += 1
            yield dict(zip(header, row, strict=True))
    except csv.Error as e:
        raise LoratuneError(f"{path} row {count + 1} (line {reader.line_num}): not valid CSV ({e})") from None


def _name(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else "comma"


# ---------------------------------------------------------------- Parquet / Arrow


def read_parquet(path: Path) -> Iterator[dict]:
    """Every row group in turn, so a damaged one is named with the rows it holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise LoratuneError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    done = 0
    for group in range(reader.num_row_groups):
        rows = reader.metadata.row_group(group).num_rows
        try:
            records = reader.read_row_group(group).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise LoratuneError(
                f"{path} rows {done + 1}-{done + rows} (row group {group + 1}): cannot be read "
                f"({_first_line(e)}); re-export the file"
            ) from None
        done += len(records)
        yield from records


def read_arrow(path: Path) -> Iterator[dict]:
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
    done = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise LoratuneError(
                f"{path}: the rows after row {done} cannot be read ({_first_line(e)}); re-export the file"
            ) from None
        done += batch.num_rows
        yield from batch.to_pylist()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
