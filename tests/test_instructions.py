"""Instruction records -> prompt/response samples, loss on the response only; formats; errors; collate."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tokenizer
from loratune.config import DataSpec
from loratune.data.batching import collate
from loratune.data.build import IGNORE, Sample, build_samples
from loratune.data.chats import alpaca_to_messages, chat_segments
from loratune.data.files import read_records
from loratune.data.instructions import (
    format_segments,
    load_format,
    make_renderer,
    tokenize_segments,
)
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

FRANCE = {"instruction": "What is the capital of France?", "output": "Paris."}
PIRATE = {"instruction": "Translate this sentence.", "input": "The quick brown fox.", "output": "Arr, matey!"}
CHAT = {
    "messages": [
        {"role": "system", "content": "A pirate answers every question."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Translate this sentence."},
        {"role": "assistant", "content": "Arr, matey!"},
    ]
}


@pytest.fixture(scope="module")
def plain_tokenizer():
    """The same tiny tokenizer without a chat template."""
    return make_tokenizer(chat_template=None)


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _build(path, tokenizer, home, **kw):
    return build_samples(DataSpec(path=str(path), **kw), tokenizer, Workspace.resolve(home))


def _trained_runs(tokenizer, sample: Sample) -> list[str]:
    """Decoded text of each maximal run of trained tokens."""
    runs, current = [], []
    for tok, label in zip(sample.input_ids, sample.labels, strict=True):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == tok, "a trained label must equal its input id"
            current.append(tok)
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def _untrained_text(tokenizer, sample: Sample) -> str:
    pairs = zip(sample.input_ids, sample.labels, strict=True)
    return tokenizer.decode([t for t, label in pairs if label == IGNORE])


# ---------------------------------------------------------------- alpaca through the chat template


def test_alpaca_with_chat_template_masks_the_prompt(tmp_path, tokenizer, home):
    samples, report = _build(_jsonl(tmp_path / "d.jsonl", [FRANCE]), tokenizer, home)
    assert report.kind == "instruction" and report.records == 1 and report.samples == 1
    (s,) = samples
    messages = [
        {"role": "user", "content": FRANCE["instruction"]},
        {"role": "assistant", "content": "Paris."},
    ]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert s.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    k = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert s.labels[:k] == [IGNORE] * k  # every prompt token untrained
    assert s.labels[k:] == s.input_ids[k:]  # every response token trained
    trained = tokenizer.decode(s.labels[k:])
    assert trained in ("Paris.<|im_end|>", "Paris.<|im_end|>\n")
    assert tokenizer.eos_token_id in s.labels[k:]
    assert report.trained_tokens == len(s.input_ids) - k
    assert report.tokens == len(s.input_ids)


def test_alpaca_input_is_appended_to_the_user_turn(tmp_path, tokenizer, home):
    (s,), _ = _build(_jsonl(tmp_path / "d.jsonl", [PIRATE]), tokenizer, home)
    assert _trained_runs(tokenizer, s) == ["Arr, matey!<|im_end|>\n"]
    assert _untrained_text(tokenizer, s) == (
        "<|im_start|>user\nTranslate this sentence.\n\nThe quick brown fox.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_alpaca_system_and_blank_input():
    record = {"instruction": "Hi", "input": "   ", "output": "Arr", "system": "Be a pirate."}
    assert alpaca_to_messages(record, "r") == [
        {"role": "system", "content": "Be a pirate."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Arr"},
    ]


def test_messages_multi_turn_trains_every_assistant_turn(tmp_path, tokenizer, home):
    (s,), _ = _build(_jsonl(tmp_path / "chat.jsonl", [CHAT]), tokenizer, home)
    assert tokenizer.decode(s.input_ids) == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert _trained_runs(tokenizer, s) == ["Paris.<|im_end|>\n", "Arr, matey!<|im_end|>\n"]
    untrained = _untrained_text(tokenizer, s)
    assert "A pirate answers every question." in untrained
    assert "What is the capital of France?" in untrained
    assert "Translate this sentence." in untrained
    assert "Paris" not in untrained and "matey" not in untrained
    assert [label for label in s.labels if label == tokenizer.eos_token_id] == [tokenizer.eos_token_id] * 2


def test_chat_segments_progressive_rendering(tokenizer):
    segments = chat_segments(CHAT["messages"], tokenizer, "r")
    assert [trained for _, trained in segments] == [False, True, False, True]
    assert segments[1][0] == "Paris.<|im_end|>\n"
    assert segments[3][0] == "Arr, matey!<|im_end|>\n"
    assert segments[2][0] == "<|im_start|>user\nTranslate this sentence.<|im_end|>\n<|im_start|>assistant\n"
    assert "".join(text for text, _ in segments) == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)


def test_json_array_and_jsonl_give_identical_samples(tmp_path, tokenizer, home):
    records = [FRANCE, PIRATE, CHAT]
    array = tmp_path / "d.json"
    array.write_text(json.dumps(records, indent=2), encoding="utf-8")
    lines = _jsonl(tmp_path / "d.jsonl", records)
    from_array, report_a = _build(array, tokenizer, home)
    from_lines, report_l = _build(lines, tokenizer, home)
    assert len(from_array) == 3
    assert from_array == from_lines
    assert (report_a.tokens, report_a.trained_tokens) == (report_l.tokens, report_l.trained_tokens)


def test_read_records_variants(tmp_path):
    single = tmp_path / "one.json"
    single.write_text(json.dumps(FRANCE), encoding="utf-8")
    assert list(read_records(single)) == [FRANCE]
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(("\ufeff" + json.dumps(FRANCE) + "\r\n\r\n" + json.dumps(PIRATE) + "\r\n").encode("utf-8"))
    assert list(read_records(crlf)) == [FRANCE, PIRATE]
    array_in_jsonl = tmp_path / "arr.jsonl"
    array_in_jsonl.write_text(json.dumps([FRANCE, PIRATE]), encoding="utf-8")
    assert list(read_records(array_in_jsonl)) == [FRANCE, PIRATE]


def test_no_eos_added_when_disabled_with_format_file(tmp_path, plain_tokenizer, home):
    (s,), _ = _build(_jsonl(tmp_path / "d.jsonl", [FRANCE]), plain_tokenizer, home, format="alpaca", add_eos=False)
    assert _trained_runs(plain_tokenizer, s) == ["Paris."]
    assert plain_tokenizer.eos_token_id not in s.input_ids


# ---------------------------------------------------------------- format files


def test_alpaca_format_without_chat_template(tmp_path, plain_tokenizer, home):
    path = _jsonl(tmp_path / "d.jsonl", [FRANCE, PIRATE])
    samples, _ = _build(path, plain_tokenizer, home, format="alpaca")
    france, pirate = samples
    assert _trained_runs(plain_tokenizer, france) == ["Paris.<|im_end|>"]
    assert _trained_runs(plain_tokenizer, pirate) == ["Arr, matey!<|im_end|>"]
    prompt = _untrained_text(plain_tokenizer, france)
    assert prompt.endswith("### Instruction:\nWhat is the capital of France?\n\n### Response:\n")
    assert prompt.startswith("Below is an instruction that describes a task.")
    assert "### Input:\nThe quick brown fox.\n\n### Response:\n" in _untrained_text(plain_tokenizer, pirate)
    # the trained part starts exactly at the output value
    first = next(i for i, label in enumerate(france.labels) if label != IGNORE)
    assert plain_tokenizer.decode(france.input_ids[:first]) == prompt
    assert plain_tokenizer.decode(france.input_ids[first:]).startswith("Paris.")
    # format 'auto' without a chat template falls back to the same alpaca format
    auto, _ = _build(path, plain_tokenizer, home)
    assert auto == samples


def test_format_segments_split_at_last_placeholder():
    templates = {"question,answer": "Q: %question%\nA: %answer%"}
    segments = format_segments({"question": "Why?", "answer": "Because."}, templates, "r")
    assert segments == [("Q: Why?\nA: ", False), ("Because.", True)]


def test_custom_format_by_path(tmp_path, plain_tokenizer, home):
    fmt = tmp_path / "qa.json"
    fmt.write_text(json.dumps({"question,answer": "Q: %question%\nA: %answer%"}), encoding="utf-8")
    data = _jsonl(tmp_path / "d.jsonl", [{"question": "What is the capital of France?", "answer": "Paris."}])
    (s,), _ = _build(data, plain_tokenizer, home, format=str(fmt))
    assert plain_tokenizer.decode(s.input_ids) == "Q: What is the capital of France?\nA: Paris.<|im_end|>"
    assert _trained_runs(plain_tokenizer, s) == ["Paris.<|im_end|>"]


def test_custom_format_by_name_in_workspace(tmp_path, tokenizer, home):
    (home / "formats").mkdir(parents=True)
    (home / "formats" / "qa-format.json").write_text(
        json.dumps({"question,answer": "Q: %question%\nA: %answer%"}), encoding="utf-8"
    )
    data = _jsonl(tmp_path / "d.jsonl", [{"question": "What is the capital of France?", "answer": "Paris."}])
    by_name, _ = _build(data, tokenizer, home, format="qa")
    by_file_name, _ = _build(data, tokenizer, home, format="qa-format.json")
    assert by_name == by_file_name
    # a format name wins over the model's chat template
    assert tokenizer.decode(by_name[0].input_ids) == "Q: What is the capital of France?\nA: Paris.<|im_end|>"
    assert _trained_runs(tokenizer, by_name[0]) == ["Paris.<|im_end|>"]


def test_workspace_format_shadows_shipped_one(home):
    (home / "formats").mkdir(parents=True)
    mine = {"instruction,output": "I: %instruction% O: %output%"}
    (home / "formats" / "alpaca-format.json").write_text(json.dumps(mine), encoding="utf-8")
    assert load_format("alpaca", Workspace.resolve(home)) == mine


def test_shipped_formats(home):
    ws = Workspace.resolve(home)
    plain = {"instruction,output", "instruction,input,output"}
    for name, keys in (
        ("alpaca", plain | {"instruction,output,system", "instruction,input,output,system"}),
        ("vicuna", plain),
    ):
        templates = load_format(name, ws)
        assert set(templates) == keys
        assert all(t.rstrip().endswith("%output%") for t in templates.values())


def test_format_not_found_or_escaping(home):
    ws = Workspace.resolve(home)
    (home / "formats").mkdir(parents=True)
    with pytest.raises(LoratuneError, match="format 'nosuch' not found"):
        load_format("nosuch", ws)
    with pytest.raises(LoratuneError, match="points outside"):
        load_format("../escape", ws)


def test_bad_format_files(tmp_path, home):
    ws = Workspace.resolve(home)
    broken = tmp_path / "broken.json"
    broken.write_text('{"a,b": "x"\n"c": 1}', encoding="utf-8")
    with pytest.raises(LoratuneError, match="line 2, column 1"):
        load_format(str(broken), ws)
    not_map = tmp_path / "list.json"
    not_map.write_text('["x"]', encoding="utf-8")
    with pytest.raises(LoratuneError, match="maps key sets to templates"):
        load_format(str(not_map), ws)


def test_first_response_word_is_trained_after_a_space(tmp_path, plain_tokenizer, home):
    data = _jsonl(tmp_path / "d.jsonl", [{"instruction": "Translate this sentence.", "output": "the lazy dog."}])
    (s,), _ = _build(data, plain_tokenizer, home, format="vicuna")
    (trained,) = _trained_runs(plain_tokenizer, s)
    assert "the lazy dog." in trained


# ---------------------------------------------------------------- errors


def test_record_matching_no_format_lists_its_keys(tmp_path, plain_tokenizer, home):
    data = _jsonl(tmp_path / "d.jsonl", [FRANCE, {"question": "Why?", "answer": "Because."}])
    with pytest.raises(LoratuneError) as info:
        _build(data, plain_tokenizer, home, format="alpaca")
    message = str(info.value)
    assert "record 2" in message
    assert "answer,question" in message
    assert "instruction,output" in message  # the key sets the format knows


def test_placeholder_without_key(tmp_path, plain_tokenizer, home):
    fmt = tmp_path / "f.json"
    fmt.write_text(json.dumps({"question,answer": "Q: %question% (%topic%)\nA: %answer%"}), encoding="utf-8")
    data = _jsonl(tmp_path / "d.jsonl", [{"question": "Why?", "answer": "Because."}])
    with pytest.raises(LoratuneError, match=r"%topic% has no key 'topic'"):
        _build(data, plain_tokenizer, home, format=str(fmt))


def test_template_without_placeholder():
    with pytest.raises(LoratuneError, match="no %key% placeholder"):
        format_segments({"a": "x"}, {"a": "plain text"}, "r")


def test_malformed_jsonl_names_the_line(tmp_path, tokenizer, home):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(FRANCE) + "\n" + '{"instruction": "x", "output": }\n', encoding="utf-8")
    with pytest.raises(LoratuneError, match="line 2") as info:
        _build(data, tokenizer, home)
    assert "d.jsonl" in str(info.value)


def test_json_array_syntax_error_names_line_and_column(tmp_path, tokenizer, home):
    data = tmp_path / "d.json"
    data.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n',
        encoding="utf-8",
    )
    with pytest.raises(LoratuneError, match="line 3, column 23"):
        _build(data, tokenizer, home)


def test_record_missing_output_names_the_record(tmp_path, tokenizer, home):
    data = _jsonl(tmp_path / "d.jsonl", [FRANCE, FRANCE, {"instruction": "No answer here"}])
    with pytest.raises(LoratuneError) as info:
        _build(data, tokenizer, home)
    message = str(info.value)
    assert "record 3" in message
    assert "'output'" in message
    assert "it has: instruction" in message


def test_non_object_record(tmp_path, tokenizer, home):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([FRANCE, ["not", "an", "object"]]), encoding="utf-8")
    with pytest.raises(LoratuneError, match="record 2: expected an object with keys, got list"):
        _build(data, tokenizer, home)
    scalar = tmp_path / "s.json"
    scalar.write_text("42", encoding="utf-8")
    with pytest.raises(LoratuneError, match="expected a JSON array"):
        _build(scalar, tokenizer, home)


def test_empty_instruction_file(tmp_path, tokenizer, home):
    data = tmp_path / "d.jsonl"
    data.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(LoratuneError, match="file is empty"):
        _build(data, tokenizer, home)


def test_chat_needs_a_template(tmp_path, plain_tokenizer, home):
    ws = Workspace.resolve(home)
    with pytest.raises(LoratuneError, match="needs a chat template and this model has none; set data.chat_template"):
        make_renderer("chat", plain_tokenizer, ws)
    render = make_renderer("auto", plain_tokenizer, ws)
    with pytest.raises(LoratuneError, match="'messages' needs a chat template and this model has none; set data.chat"):
        render(CHAT, "r")


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user"}], "message 1 needs text 'role' and 'content'"),
        ([{"role": "user", "content": "hi"}], "no 'assistant' message"),
    ],
)
def test_bad_messages(tmp_path, tokenizer, home, messages, fragment):
    data = _jsonl(tmp_path / "d.jsonl", [{"messages": messages}])
    with pytest.raises(LoratuneError, match=fragment):
        _build(data, tokenizer, home)


# ---------------------------------------------------------------- cutoff


def test_samples_longer_than_cutoff_are_dropped_and_counted(tmp_path, tokenizer, home):
    long = {
        "instruction": "Translate this sentence. " * 8,
        "output": "One two three four five six seven eight.",
    }
    data = _jsonl(tmp_path / "d.jsonl", [FRANCE, long, PIRATE])
    everything, _ = _build(data, tokenizer, home, cutoff=10_000)
    lengths = [len(s.input_ids) for s in everything]
    assert lengths[1] > max(lengths[0], lengths[2])
    cutoff = max(lengths[0], lengths[2])
    kept, report = _build(data, tokenizer, home, cutoff=cutoff)
    assert report.too_long == 1
    assert report.records == 3 and report.samples == 2
    assert kept == [everything[0], everything[2]]
    assert "1 dropped as longer than the cutoff" in report.summary()
    # a cutoff below the second short sample's length drops it as well
    _, tighter = _build(data, tokenizer, home, cutoff=min(lengths[0], lengths[2]))
    assert tighter.too_long == 2


def test_everything_too_long_is_an_error(tmp_path, tokenizer, home):
    data = _jsonl(tmp_path / "d.jsonl", [FRANCE])
    with pytest.raises(LoratuneError, match="no usable samples.*1 dropped as longer than the cutoff"):
        _build(data, tokenizer, home, cutoff=5)


# ---------------------------------------------------------------- tokenize_segments / collate


def test_tokenize_segments_labels_follow_segments(plain_tokenizer):
    s = tokenize_segments([("Q: Why?\n", False), ("Paris.", True)], plain_tokenizer)
    assert s.input_ids == plain_tokenizer("Q: Why?\nParis.", add_special_tokens=False)["input_ids"]
    assert _trained_runs(plain_tokenizer, s) == ["Paris."]
    assert _untrained_text(plain_tokenizer, s) == "Q: Why?\n"


def test_collate_pads_right(tokenizer):
    pad = tokenizer.pad_token_id
    samples = [
        Sample([5, 6, 7], [IGNORE, 6, 7]),
        Sample([8, 9, 10, 11, 12], [IGNORE, IGNORE, 10, 11, 12]),
        Sample([4], [4]),
    ]
    batch = collate(samples, pad)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7, pad, pad], [8, 9, 10, 11, 12], [4, pad, pad, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE, 6, 7, IGNORE, IGNORE],
        [IGNORE, IGNORE, 10, 11, 12],
        [4, IGNORE, IGNORE, IGNORE, IGNORE],
    ]


def test_collate_real_samples(tmp_path, tokenizer, home):
    samples, _ = _build(_jsonl(tmp_path / "d.jsonl", [FRANCE, PIRATE, CHAT]), tokenizer, home)
    batch = collate(samples, tokenizer.pad_token_id)
    width = max(len(s.input_ids) for s in samples)
    assert batch["input_ids"].shape == (3, width)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        assert batch["attention_mask"][row].sum().item() == n
        assert batch["input_ids"][row, :n].tolist() == s.input_ids
        assert batch["labels"][row, :n].tolist() == s.labels
        assert (batch["labels"][row, n:] == IGNORE).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
