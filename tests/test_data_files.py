"""Record files are read one record at a time (data/files.py): JSON Lines and CSV / TSV line by line, block by block,
so memory does not grow with the file. The records (and so the samples) are those of the same data as one JSON array,
which is still parsed whole; every error still names the file and the line or row.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from loratune import LoratuneError
from loratune.config import DataSpec
from loratune.data import blocks, pool
from loratune.data import samples as data_samples
from loratune.data.build import build_samples
from loratune.data.files import read_records
from loratune.workspace import Workspace

# Text that crosses small blocks anywhere: multi-byte characters, a line separator inside a value, CSV quoting.
RECORDS = [
    {"instruction": "Qu'est-ce que la capitale de la France ?", "output": "Paris, évidemment."},
    {"instruction": "A newline\nand a\u2028line separator.", "output": 'Arr, "matey" \U0001f3f4\u200d\u2620'},
    {"instruction": "Count, in commas: one, two", "output": "three,\tfour"},
] * 4


def _jsonl(path, records, newline="\n"):
    path.write_bytes(("\ufeff" + "".join(json.dumps(r) + newline + newline for r in records)).encode("utf-8"))
    return path


def _csv(path, records, delimiter=","):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]), delimiter=delimiter, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(records)
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    return path


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(data_samples, "READ_BYTES", 7)  # blocks end inside characters, lines and CRLFs


def test_every_record_file_gives_the_records_and_samples_of_one_json_array(tmp_path, tokenizer, home, small_blocks):
    array = tmp_path / "a.json"
    array.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    files = [
        array,
        _jsonl(tmp_path / "lines.jsonl", RECORDS),
        _jsonl(tmp_path / "crlf.jsonl", RECORDS, newline="\r\n"),
        _jsonl(tmp_path / "lines.json", RECORDS),  # JSON Lines saved as .json
        _csv(tmp_path / "rows.csv", RECORDS),
        _csv(tmp_path / "rows.tsv", RECORDS, delimiter="\t"),
    ]
    for file in files:
        assert list(read_records(file)) == RECORDS, file.name
    built = [build_samples(DataSpec(path=str(f)), tokenizer, Workspace.resolve(home)) for f in files]
    for samples, report in built[1:]:
        assert samples == built[0][0] and len(samples) == len(RECORDS)
        assert (report.tokens, report.trained_tokens) == (built[0][1].tokens, built[0][1].trained_tokens)


def test_records_arrive_before_a_later_fault_is_read(tmp_path, small_blocks):
    lines = tmp_path / "d.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:3]) + "\n{oops\n", encoding="utf-8")
    records = read_records(lines)
    assert [next(records) for _ in range(3)] == RECORDS[:3]  # a whole-file reader would have refused already
    with pytest.raises(LoratuneError, match=r"d.jsonl: invalid JSON on line 5, column 2"):
        next(records)
    rows = _csv(tmp_path / "d.csv", RECORDS[:3])
    rows.write_text(rows.read_text(encoding="utf-8") + '"a","b","c"\r\n', encoding="utf-8")
    records = read_records(rows)
    assert [next(records) for _ in range(3)] == RECORDS[:3]
    # Row 2 spans three lines (a newline and a line separator inside its quotes), so row 4 is on line 7.
    with pytest.raises(LoratuneError, match=r"d.csv row 4 \(line 7\): 3 fields, the header has 2"):
        next(records)


BAD = [
    ("not an object", '{"a": 1}\n\n[1, 2]\n', r"d.jsonl record 2: expected an object with keys, got list"),
    ("deep", '{"a": 1}\n' + "[" * 100_000 + "\n", r"d.jsonl: line 2 is JSON nested too deeply to be a record"),
    ("not UTF-8", '{"a": 1}\n{"b": "\xe9"}\n', r"d.jsonl: line 2 is not UTF-8 text"),
    ("blank", "\n \n", r"d.jsonl: file is empty"),
]


@pytest.mark.parametrize("case, text, expected", BAD, ids=[c[0] for c in BAD])
def test_a_bad_line_is_named(tmp_path, small_blocks, case, text, expected):
    path = tmp_path / "d.jsonl"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(LoratuneError, match=expected):
        list(read_records(path))


def test_a_bad_row_is_refused_by_training_in_one_line_naming_it(tmp_path, tokenizer, home, small_blocks):
    good = "".join(json.dumps(r) + "\n" for r in RECORDS)
    path = tmp_path / "d.jsonl"
    path.write_text(good + json.dumps({"text": 5}) + "\n", encoding="utf-8")
    with pytest.raises(LoratuneError) as info:
        build_samples(DataSpec(path=str(path)), tokenizer, Workspace.resolve(home))
    assert f"d.jsonl record {len(RECORDS) + 1}: 'text' must be text" in str(info.value)
    assert "\n" not in str(info.value)
    cache = Workspace.resolve(home).datasets / ".cache"
    assert not cache.exists() or not any(cache.iterdir())  # nothing is written


def _build_with(workers, path, tokenizer, home, monkeypatch, **options):
    monkeypatch.setenv(pool.WORKERS_ENV, str(workers))
    home.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(home / "datasets" / ".cache", ignore_errors=True)  # tokenize again, not read the cache
    return build_samples(DataSpec(path=str(path), **options), tokenizer, Workspace.resolve(home))


def test_blocks_built_by_the_pool_are_those_of_one_process(tmp_path, tokenizer, home, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK", 3)  # many blocks in flight at once
    text = {"text": "The quick brown fox jumps over the lazy dog. " * 4}
    records = RECORDS[:5] + [text] + RECORDS * 2  # a text record between blocks: the file's order is kept
    path = _jsonl(tmp_path / "d.jsonl", records)
    options = {"cutoff": 40, "overlap": 8, "too_long": "truncate"}
    one, report_one = _build_with(1, path, tokenizer, home, monkeypatch, **options)
    pooled, report_pooled = _build_with(2, path, tokenizer, home, monkeypatch, **options)
    assert len(one) > len(RECORDS) and pooled == one and report_pooled == report_one
    assert report_one.shapes == {"alpaca": len(records) - 1, "text": 1}
    assert report_one.truncated > 0  # counted by the workers
    assert one.fingerprint() == pooled.fingerprint()


def test_the_pool_reports_the_first_bad_record_of_the_file(tmp_path, tokenizer, home, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK", 3)
    bad = RECORDS[:7] + [{"instruction": "Hi", "output": 5}] + RECORDS
    lines = "".join(json.dumps(r) + "\n" for r in bad) + "{oops\n"  # and a broken line after it
    path = tmp_path / "d.jsonl"
    path.write_text(lines, encoding="utf-8")
    for workers in (1, 2):
        with pytest.raises(LoratuneError, match=r"d.jsonl record 8: 'output' must be text, got int"):
            _build_with(workers, path, tokenizer, home, monkeypatch)
        assert not any((home / "datasets" / ".cache").iterdir())  # nothing is written
