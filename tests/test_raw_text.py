"""Raw text corpora -> overlapping token windows: exact chunk boundaries, hard cuts, EOS, file handling."""

from __future__ import annotations

import pytest

from loratune.config import DataSpec
from loratune.data import raw_text
from loratune.data.build import build_samples, read_text
from loratune.data.raw_text import chunk_tokens
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

ALPHA_LETTERS = set("alph")
OMICRON_LETTERS = set("omicrn")


def _spec(path, **kw) -> DataSpec:
    kw.setdefault("cutoff", 16)
    kw.setdefault("overlap", 4)
    kw.setdefault("min_chunk", 1)
    return DataSpec(path=str(path), **kw)


def _letters(tokenizer, ids) -> set[str]:
    return {c for c in tokenizer.decode(ids, skip_special_tokens=True) if c.isalpha()}


# ---------------------------------------------------------------- chunk_tokens


def test_chunk_tokens_with_overlap_exact():
    assert chunk_tokens(list(range(10)), 4, 1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]


def test_chunk_tokens_without_overlap():
    assert chunk_tokens(list(range(10)), 4, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_tokens(list(range(8)), 4, 0) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_chunk_tokens_last_window_shorter():
    assert chunk_tokens(list(range(11)), 4, 2) == [
        [0, 1, 2, 3],
        [2, 3, 4, 5],
        [4, 5, 6, 7],
        [6, 7, 8, 9],
        [8, 9, 10],
    ]


def test_chunk_tokens_short_and_empty():
    assert chunk_tokens([7, 8], 4, 1) == [[7, 8]]
    assert chunk_tokens([1, 2, 3, 4], 4, 3) == [[1, 2, 3, 4]]
    assert chunk_tokens([], 4, 1) == []


@pytest.mark.parametrize("n", [1, 5, 9, 16, 17, 31, 64])
@pytest.mark.parametrize(("length", "overlap"), [(1, 0), (4, 0), (4, 1), (4, 3), (8, 2), (16, 15), (16, 8)])
def test_chunk_tokens_properties(n, length, overlap):
    tokens = list(range(n))
    chunks = chunk_tokens(tokens, length, overlap)
    assert chunks, "a non-empty list gives at least one chunk"
    assert chunks[0][0] == 0 and chunks[-1][-1] == n - 1  # covers both ends
    assert all(len(c) == length for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= length
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert len(set(a) & set(b)) == overlap  # exactly `overlap` tokens shared
        assert b[:overlap] == a[len(a) - overlap :]
        assert b[0] == a[0] + length - overlap  # windows start every length - overlap tokens
    # removing the overlaps gives back the original sequence
    rebuilt = chunks[0] + [t for c in chunks[1:] for t in c[overlap:]]
    assert rebuilt == tokens


# ---------------------------------------------------------------- raw_text.build


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_hard_cut_is_never_crossed(tmp_path, tokenizer):
    alpha = " ".join(["alpha"] * 30)
    omicron = " ".join(["omicron"] * 30)
    file = _write(tmp_path / "doc.txt", f"{alpha}\n\n\n{omicron}\n\n\n\n{alpha}")
    spec = _spec(file, cutoff=12, overlap=3)
    samples, report = raw_text.build(file, tokenizer, spec)
    assert report.records == 3
    assert len(samples) > 6
    kinds = []
    for s in samples:
        letters = _letters(tokenizer, s.input_ids)
        assert letters, "every chunk carries text"
        assert letters <= ALPHA_LETTERS or letters <= OMICRON_LETTERS, tokenizer.decode(s.input_ids)
        kinds.append("a" if letters <= ALPHA_LETTERS else "o")
    # sections keep their order: alpha chunks, then omicron chunks, then alpha chunks again
    changes = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert changes == ["a", "o", "a"]


def test_chunks_equal_per_section_windows(tmp_path, tokenizer):
    sections = [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "\nWhat is the capital of France? Paris. " * 2,
    ]
    file = _write(tmp_path / "doc.txt", "\n\n\n".join(sections))
    spec = _spec(file, cutoff=10, overlap=2)
    samples, _ = raw_text.build(file, tokenizer, spec)
    expected = []
    for i, section in enumerate(sections):
        ids = tokenizer(section, add_special_tokens=False)["input_ids"]
        if i == len(sections) - 1:
            ids = ids + [tokenizer.eos_token_id]
        expected += chunk_tokens(ids, 10, 2)
    assert [s.input_ids for s in samples] == expected


def test_custom_hard_cut_and_no_hard_cut(tmp_path, tokenizer):
    file = _write(tmp_path / "doc.txt", "alpha alpha ### omicron omicron")
    cut, _ = raw_text.build(file, tokenizer, _spec(file, cutoff=64, overlap=0, hard_cut="###"))
    assert len(cut) == 2
    assert tokenizer.decode(cut[0].input_ids) == "alpha alpha "
    assert tokenizer.decode(cut[1].input_ids) == " omicron omicron<|im_end|>"
    whole, report = raw_text.build(file, tokenizer, _spec(file, cutoff=64, overlap=0, hard_cut=""))
    assert report.records == 1
    assert [s.input_ids for s in whole] == [
        tokenizer("alpha alpha ### omicron omicron", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ]


def test_eos_only_at_end_of_each_document(tmp_path, tokenizer):
    eos = tokenizer.eos_token_id
    folder = tmp_path / "corpus"
    _write(folder / "a.txt", "The quick brown fox jumps over the lazy dog. " * 4 + "\n\n\n" + "Arr, matey! " * 5)
    _write(folder / "b.txt", "One two three four five six seven eight nine ten. " * 3)
    spec = _spec(folder, cutoff=12, overlap=3)
    samples, _ = raw_text.build(folder, tokenizer, spec)
    per_file = [raw_text.build(folder / n, tokenizer, spec)[0] for n in ("a.txt", "b.txt")]
    assert [s.input_ids for s in samples] == [s.input_ids for f in per_file for s in f]
    for doc in per_file:
        assert doc[-1].input_ids[-1] == eos
        assert doc[-1].input_ids.count(eos) == 1
        assert all(eos not in s.input_ids for s in doc[:-1])
    assert sum(s.input_ids.count(eos) for s in samples) == 2


def test_no_eos_when_disabled(tmp_path, tokenizer):
    file = _write(tmp_path / "doc.txt", "The quick brown fox jumps over the lazy dog. " * 4 + "\n\n\nArr, matey!")
    samples, _ = raw_text.build(file, tokenizer, _spec(file, cutoff=12, overlap=3, add_eos=False))
    assert samples
    assert all(tokenizer.eos_token_id not in s.input_ids for s in samples)
    with_eos, _ = raw_text.build(file, tokenizer, _spec(file, cutoff=12, overlap=3, add_eos=True))
    assert with_eos[-1].input_ids[-1] == tokenizer.eos_token_id


def test_min_chunk_drops_short_chunks(tmp_path, tokenizer):
    text = "The quick brown fox jumps over the lazy dog. Arr, matey! Paris."
    file = _write(tmp_path / "doc.txt", text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    windows = chunk_tokens(ids, 10, 0)
    short = len(windows[-1])
    assert short < 10, "test text must leave a short last window"
    kept, _ = raw_text.build(file, tokenizer, _spec(file, cutoff=10, overlap=0, min_chunk=short))
    assert [s.input_ids for s in kept] == windows
    dropped, _ = raw_text.build(file, tokenizer, _spec(file, cutoff=10, overlap=0, min_chunk=short + 1))
    assert [s.input_ids for s in dropped] == windows[:-1]
    assert all(len(s.input_ids) >= short + 1 for s in dropped)


def test_labels_equal_input_ids(tmp_path, tokenizer):
    file = _write(tmp_path / "doc.txt", "A pirate answers every question. " * 10)
    samples, _ = raw_text.build(file, tokenizer, _spec(file, cutoff=16, overlap=4))
    assert len(samples) > 1
    for s in samples:
        assert s.labels == s.input_ids
        assert len(s.input_ids) <= 16
        assert -100 not in s.labels


def test_folder_read_in_sorted_order_including_subfolders(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    _write(folder / "z.txt", "zebra")
    _write(folder / "a.txt", "apple")
    _write(folder / "sub" / "m.txt", "mango")
    _write(folder / "sub" / "deeper" / "b.txt", "banana")
    _write(folder / "notes.md", "markdown is text too")
    _write(folder / "notes.docx", "not text")
    samples, report = raw_text.build(folder, tokenizer, _spec(folder, cutoff=64, overlap=0))
    texts = [tokenizer.decode(s.input_ids, skip_special_tokens=True) for s in samples]
    # a.txt, notes.md, sub/deeper/b.txt, sub/m.txt, z.txt
    assert texts == ["apple", "markdown is text too", "banana", "mango", "zebra"]
    assert report.records == 5


def test_folder_without_txt_files(tmp_path, tokenizer):
    folder = tmp_path / "empty"
    _write(folder / "x.docx", "hello")
    with pytest.raises(LoratuneError, match=r"no \.txt or \.md files"):
        raw_text.build(folder, tokenizer, _spec(folder))


def test_bom_and_crlf(tmp_path, tokenizer):
    file = tmp_path / "win.txt"
    file.write_bytes(b"\xef\xbb\xbfalpha alpha\r\nalpha\r\n\r\n\r\nomicron omicron\r\n")
    assert read_text(file) == "alpha alpha\nalpha\n\n\nomicron omicron\n"
    samples, report = raw_text.build(file, tokenizer, _spec(file, cutoff=64, overlap=0))
    assert report.records == 2  # the CRLF hard cut still splits
    texts = [tokenizer.decode(s.input_ids, skip_special_tokens=True) for s in samples]
    assert texts == ["alpha alpha\nalpha", "omicron omicron\n"]
    assert all("\ufeff" not in t and "\r" not in t for t in texts)


def test_non_utf8_names_the_line(tmp_path, tokenizer):
    file = tmp_path / "latin1.txt"
    file.write_bytes("first\nsecond\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(LoratuneError, match="line 3") as info:
        raw_text.build(file, tokenizer, _spec(file))
    assert "UTF-8" in str(info.value)
    assert "latin1.txt" in str(info.value)


# ---------------------------------------------------------------- through build_samples


def test_build_samples_on_txt_fills_report(tmp_path, tokenizer, home):
    file = _write(tmp_path / "doc.txt", "A pirate answers every question. " * 6)
    samples, report = build_samples(_spec(file, cutoff=16, overlap=4), tokenizer, Workspace.resolve(home))
    assert report.kind == "raw text"
    assert report.samples == len(samples) > 1
    assert report.tokens == sum(len(s.input_ids) for s in samples)
    assert report.trained_tokens == report.tokens  # every raw-text token is trained


def test_build_samples_empty_txt(tmp_path, tokenizer, home):
    file = _write(tmp_path / "empty.txt", "")
    with pytest.raises(LoratuneError, match="empty.txt: file is empty"):
        build_samples(_spec(file), tokenizer, Workspace.resolve(home))


def test_build_samples_whitespace_only_txt(tmp_path, tokenizer, home):
    file = _write(tmp_path / "blank.txt", "\n\n\n  \n")
    with pytest.raises(LoratuneError, match="blank.txt: file is empty"):
        build_samples(_spec(file), tokenizer, Workspace.resolve(home))


def test_build_samples_missing_path(tmp_path, tokenizer, home):
    with pytest.raises(LoratuneError, match="not found"):
        build_samples(_spec(tmp_path / "nope.txt"), tokenizer, Workspace.resolve(home))
    with pytest.raises(LoratuneError, match="no dataset given"):
        build_samples(DataSpec(path=""), tokenizer, Workspace.resolve(home))


def test_build_samples_finds_name_in_datasets(tokenizer, home):
    _write(home / "datasets" / "loratune-test-corpus.txt", "Arr, matey! " * 4)
    samples, report = build_samples(_spec("loratune-test-corpus.txt"), tokenizer, Workspace.resolve(home))
    assert report.path == str(home / "datasets" / "loratune-test-corpus.txt")
    assert tokenizer.decode(samples[0].input_ids).startswith("Arr, matey!")


def test_build_samples_unsupported_suffix(tmp_path, tokenizer, home):
    file = _write(tmp_path / "data.xml", "<a/>\n")
    with pytest.raises(LoratuneError, match="unsupported data file type"):
        build_samples(_spec(file), tokenizer, Workspace.resolve(home))


def test_overlap_not_smaller_than_cutoff_is_refused(tmp_path, tokenizer):
    f = _write(tmp_path / "a.txt", "alpha beta gamma " * 20)
    with pytest.raises(LoratuneError, match=r"data.overlap \(64\) must be smaller than data.cutoff \(64\)"):
        raw_text.build(f, tokenizer, DataSpec(cutoff=64, overlap=64))
