"""Every dataset shape and source (issue #18): tiny real files of each, through the data check and a short training.

Shapes: alpaca (with system), chat messages (text parts, tools), ShareGPT, prompt/completion, text records; files:
.jsonl/.json, .csv/.tsv, .parquet, .arrow, .txt/.md; a folder mixing them; several datasets with weights; a hub
dataset through a stand-in of the hub client's cache (no network). Bad input of each kind is one line naming the
file and the row, and nothing is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_tokenizer
from loratune import LoratuneError, train
from loratune.config import DataSpec
from loratune.data.build import build_samples, is_raw_text
from loratune.data.preview import check_data
from loratune.data.samples import IGNORE
from loratune.prompting import make_contract
from loratune.workspace import Workspace

FAST = {"train.max_steps": 1, "train.batch_size": 2, "train.micro_batch": 2, "adapter.rank": 4, "train.save_every": 0}
QA = [("What is the capital of France?", "Paris."), ("Translate this sentence.", "Arr, matey!")] * 2
ALPACA = [{"instruction": q, "output": a} for q, a in QA] + [
    {"system": "A pirate answers every question.", "instruction": "What is one two three?", "output": "four five"}
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "A pirate answers every question."},
            {"role": "user", "content": [{"type": "text", "text": q}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Arr, "}, {"type": "text", "text": a}]},
        ]
    }
    for q, a in QA
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "system", "value": "A pirate."},
            {"from": "human", "value": q},
            {"from": "gpt", "value": a},
        ]
    }
    for q, a in QA
]
COMPLETION = [{"prompt": f"Q: {q}\nA:", "completion": f" {a}"} for q, a in QA]
TEXT = [{"text": "The quick brown fox jumps over the lazy dog. " * 6}, {"text": "One two three four five six. " * 6}]
STORY = "A pirate answers every question. The quick brown fox jumps over the lazy dog.\n" * 8
# A ChatML-like template that shows the tools and each tool call (as tool-aware templates such as Qwen's do).
TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTools: ' }}{% for t in tools %}{{ t['function']['name'] + ' ' }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}{{ 'CALL ' + c['function']['name'] + ' ' + "
    "(c['function']['arguments'] | tojson) }}{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOL_CHAT = {
    "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "user", "content": "What is one plus two?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}],
        },
        {"role": "tool", "content": "three"},
        {"role": "assistant", "content": "Arr, three."},
    ],
}


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def csv_file(path, rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    lines = [delimiter.join(header)] + [delimiter.join(f'"{r[k]}"' for k in header) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def arrow_stream(path, records):
    table = pa.Table.from_pylist(records)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def check(path, tokenizer, home, **options):
    return check_data(
        DataSpec(path=path if isinstance(path, list) else str(path), **options), tokenizer, Workspace.resolve(home)
    )


def build(path, tokenizer, home, **options):
    return build_samples(
        DataSpec(path=path if isinstance(path, list) else str(path), **options), tokenizer, Workspace.resolve(home)
    )


def trained_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE])


def refused(tiny_model, home, data, **options) -> str:
    """Train on bad input: one line of error, and nothing in loras/."""
    with pytest.raises(LoratuneError) as info:
        train(model=str(tiny_model), data=data, name="x", home=home, show_progress=False, **{**FAST, **options})
    message = str(info.value)
    assert message and "\n" not in message
    loras = home / "loras"
    assert not loras.exists() or not any(loras.iterdir())
    return message


@pytest.fixture(scope="module")
def every_shape(tmp_path_factory):
    """A folder with a file of every shape and kind, plus two files that are not data."""
    root = tmp_path_factory.mktemp("shapes") / "mixed"
    jsonl(root / "alpaca.jsonl", ALPACA)
    (root / "chat.json").write_text(json.dumps(CHAT), encoding="utf-8")
    jsonl(root / "sharegpt.jsonl", SHAREGPT)
    jsonl(root / "completion.jsonl", COMPLETION)
    jsonl(root / "text.jsonl", TEXT)
    csv_file(root / "qa.csv", [{"instruction": q, "input": "", "output": a} for q, a in QA])
    csv_file(root / "qa.tsv", [{"prompt": f"Q: {q} A:", "completion": f" {a}"} for q, a in QA], delimiter="\t")
    # Arrow columns hold one type: text content here (the text parts are in chat.json).
    flat = [{"messages": [m | {"content": _text(m["content"])} for m in r["messages"]]} for r in CHAT]
    pq.write_table(pa.Table.from_pylist(flat), root / "chat.parquet")
    arrow_stream(root / "sharegpt.arrow", SHAREGPT)
    (root / "story.txt").write_text(STORY, encoding="utf-8")
    (root / "notes.md").write_text(STORY, encoding="utf-8")
    (root / "slides.pptx").write_bytes(b"PK\x03\x04")
    (root / ".cache").mkdir()
    (root / ".cache" / "old.jsonl").write_text("{}\n")
    return root


SHAPE_OF_FILE = [
    ("alpaca.jsonl", {"alpaca": 5}, "instruction"),
    ("chat.json", {"chat": 4}, "instruction"),
    ("sharegpt.jsonl", {"sharegpt": 4}, "instruction"),
    ("completion.jsonl", {"completion": 4}, "instruction"),
    ("text.jsonl", {"text": 2}, "raw text"),
    ("qa.csv", {"alpaca": 4}, "instruction"),
    ("qa.tsv", {"completion": 4}, "instruction"),
    ("chat.parquet", {"chat": 4}, "instruction"),
    ("sharegpt.arrow", {"sharegpt": 4}, "instruction"),
    ("story.txt", {"raw text": 1}, "raw text"),
    ("notes.md", {"raw text": 1}, "raw text"),
]


@pytest.mark.parametrize("name, shapes, kind", SHAPE_OF_FILE, ids=[c[0] for c in SHAPE_OF_FILE])
def test_each_file_shape_is_detected_and_checked(every_shape, tokenizer, home, name, shapes, kind):
    result = check(every_shape / name, tokenizer, home, overlap=16)
    assert not result.has_problems, result.warnings
    assert (result.shapes, result.kind) == (shapes, kind)
    assert result.samples > 0 and 0 < result.trained_tokens <= result.tokens
    if kind == "raw text":
        assert result.trained_tokens == result.tokens
    else:
        assert result.trained_tokens < result.tokens  # prompts are masked


def test_chat_text_parts_and_sharegpt_train_the_answers(every_shape, tokenizer, home):
    for name in ("chat.json", "chat.parquet", "sharegpt.jsonl", "sharegpt.arrow"):
        samples, _ = build(every_shape / name, tokenizer, home)
        assert [trained_text(tokenizer, s) for s in samples][:2] in (
            [f"Arr, {a}<|im_end|>\n" for _, a in QA[:2]],
            [f"{a}<|im_end|>\n" for _, a in QA[:2]],
        )
        assert "<|im_start|>system\nA pirate" in tokenizer.decode(samples[0].input_ids)


def test_prompt_completion_is_the_bare_prompt_then_the_completion(every_shape, tokenizer, home):
    samples, _ = build(every_shape / "completion.jsonl", tokenizer, home)
    assert tokenizer.decode(samples[0].input_ids) == "Q: What is the capital of France?\nA: Paris.<|im_end|>"
    assert trained_text(tokenizer, samples[0]) == " Paris.<|im_end|>"
    assert is_raw_text(every_shape / "completion.jsonl") is False
    assert is_raw_text(every_shape / "text.jsonl") is True  # its prompts are bare text: the 'raw' contract


def test_mixed_folder_reports_files_shapes_and_what_it_skipped(every_shape, tokenizer, home, tiny_model):
    result = check(every_shape, tokenizer, home, overlap=16)
    assert not result.has_problems, result.warnings
    assert result.kind == "mixed"
    assert result.files == {
        ".jsonl": 4,
        ".json": 1,
        ".csv": 1,
        ".tsv": 1,
        ".parquet": 1,
        ".arrow": 1,
        ".txt": 1,
        ".md": 1,
    }
    assert result.shapes == {"alpaca": 9, "chat": 8, "completion": 8, "raw text": 2, "sharegpt": 8, "text": 2}
    assert sorted(result.skipped) == [".cache/old.jsonl (hidden)", "slides.pptx (not a data file type)"]
    assert "alpaca.jsonl: alpaca 5" in result.file_shapes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "loratune.cli", "--home", str(home), "data", "check", str(every_shape)]
    out = subprocess.run(
        [*command, "--model", str(tiny_model), "--data.overlap", "16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "shapes: alpaca 9, chat 8" in out.stdout
    assert "files read: 4 .jsonl, 1 .json" in out.stdout and "    qa.tsv: completion 4" in out.stdout
    assert "skipped 2: " in out.stdout and "slides.pptx (not a data file type)" in out.stdout


def test_one_short_training_on_every_shape(every_shape, tiny_model, home, capsys):
    result = train(
        model=str(tiny_model), data=str(every_shape), name="shapes", home=home, **{**FAST, "data.overlap": 16}
    )
    assert (result.run_dir / "adapter_model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "mixed data" in out and "shapes: alpaca 9" in out and "skipped 2:" in out


def test_one_short_training_per_file_kind(every_shape, tiny_model, home):
    for name in ("chat.parquet", "sharegpt.arrow", "qa.tsv", "text.jsonl"):
        result = train(
            model=str(tiny_model),
            data=str(every_shape / name),
            name=name.replace(".", "-"),
            home=home,
            show_progress=False,
            **{**FAST, "data.overlap": 16},
        )
        assert (result.run_dir / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- options: system, columns, train_on, tools


def test_alpaca_system_trains_on_a_model_without_chat_template(tmp_path, home):
    plain = make_tokenizer(chat_template=None)
    samples, report = build(jsonl(tmp_path / "a.jsonl", ALPACA), plain, home)
    assert report.samples == 5
    text = plain.decode(samples[-1].input_ids)
    assert text.startswith("A pirate answers every question.\n\n### Instruction:\nWhat is one two three?")
    assert trained_text(plain, samples[-1]) == "four five<|im_end|>"


def test_columns_rename_the_data(tmp_path, tokenizer, home):
    path = csv_file(tmp_path / "q.csv", [{"question": q, "answer": a} for q, a in QA])
    with pytest.raises(LoratuneError, match=r"q.csv row 1: needs non-empty text 'instruction' and 'output'"):
        build(path, tokenizer, home)
    samples, report = build(path, tokenizer, home, columns={"instruction": "question", "output": "answer"})
    assert report.shapes == {"alpaca": 4} and trained_text(tokenizer, samples[0]) == "Paris.<|im_end|>\n"
    as_text = DataSpec(path=str(path), columns="{instruction: question, output: answer}")  # as typed on a command line
    assert as_text.columns == {"instruction": "question", "output": "answer"}


def test_columns_onto_text_make_raw_text_records(tmp_path, tokenizer, home):
    body = jsonl(tmp_path / "b.jsonl", [{"body": r["text"]} for r in TEXT])
    assert is_raw_text(body) is False  # 'body' alone is an alpaca record without its keys
    assert is_raw_text(body, {"text": "body"}) is True
    samples, report = build(body, tokenizer, home, columns={"text": "body"})
    plain, _ = build(jsonl(tmp_path / "t.jsonl", TEXT), tokenizer, home)
    assert (report.kind, report.shapes) == ("raw text", {"text": 2})
    assert [s.input_ids for s in samples] == [s.input_ids for s in plain]
    spec = DataSpec(path=str(body), columns={"text": "body"})
    assert make_contract(spec, tokenizer, Workspace.resolve(home)).kind == "raw"  # prompts are bare text
    assert make_contract(DataSpec(path=str(body)), tokenizer, Workspace.resolve(home)).kind != "raw"


def test_train_on_last_assistant(tmp_path, tokenizer, home):
    chat = {
        "messages": [
            m for q, a in QA[:2] for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
        ]
    }
    path = jsonl(tmp_path / "c.jsonl", [chat])
    (every,), _ = build(path, tokenizer, home)
    (last,), _ = build(path, tokenizer, home, train_on="last_assistant")
    assert every.input_ids == last.input_ids
    assert trained_text(tokenizer, every) == "Paris.<|im_end|>\nArr, matey!<|im_end|>\n"
    assert trained_text(tokenizer, last) == "Arr, matey!<|im_end|>\n"


def test_tools_render_through_a_template_that_supports_them(tmp_path, tokenizer, home):
    template = tmp_path / "tools.jinja"
    template.write_text(TOOL_TEMPLATE, encoding="utf-8")
    path = jsonl(tmp_path / "tools.jsonl", [TOOL_CHAT])
    (sample,), _ = build(path, tokenizer, home, chat_template=str(template))
    text = tokenizer.decode(sample.input_ids)
    assert text.startswith("<|im_start|>system\nTools: add <|im_end|>")
    assert trained_text(tokenizer, sample) == 'CALL add {"a": 1, "b": 2}<|im_end|>\nArr, three.<|im_end|>\n'
    assert "<|im_start|>tool\nthree<|im_end|>" in text  # the tool's answer is context, never trained
    # The tiny model's own ChatML template ignores tools and tool calls: one clear line, not an empty answer.
    with pytest.raises(LoratuneError, match=r"tools.jsonl record 1: the chat template does not render tool 'add'"):
        build(path, tokenizer, home)


# ---------------------------------------------------------------- several datasets, weights


def test_several_datasets_with_weights_are_reported_each(every_shape, tokenizer, home):
    paths = [str(every_shape / "alpaca.jsonl"), str(every_shape / "qa.csv"), str(every_shape / "story.txt")]
    samples, report = build(paths, tokenizer, home, mix=[2, 0.5, 1], overlap=16)
    sizes = [p.samples for p in report.parts]
    assert sizes[:2] == [10, 2] and len(samples) == sum(sizes)
    assert [p.weight for p in report.parts] == [2.0, 0.5, 1.0]
    assert report.summary().startswith(f"3 datasets, {len(samples)} samples")
    again, _ = build(paths, tokenizer, home, mix=[2, 0.5, 1], overlap=16)
    assert again == samples  # the seeded share is the same every run
    result = check(paths, tokenizer, home, mix=[2, 0.5, 1], overlap=16)
    assert result.kind == "mixed" and len(result.datasets) == 3 and "weight 0.5" in result.datasets[1]
    with pytest.raises(LoratuneError, match=r"data.mix has 2 weights for 3 dataset"):
        DataSpec(path=paths, mix=[1, 2])
    assert DataSpec(path="[a.jsonl, b.csv]").path == ["a.jsonl", "b.csv"]


def test_one_short_training_on_several_datasets_and_a_hub_dataset(every_shape, tiny_model, home):
    paths = [str(every_shape / "alpaca.jsonl"), str(every_shape / "story.txt")]
    result = train(model=str(tiny_model), data=paths, home=home, show_progress=False, **{**FAST, "data.mix": [1, 0.5]})
    assert result.run_dir.name == "alpaca" and (result.run_dir / "adapter_model.safetensors").is_file()
    hub_standin(home)
    result = train(model=str(tiny_model), data="hf:org/tiny", home=home, show_progress=False, **FAST)
    assert result.run_dir.name == "tiny" and (result.run_dir / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- hub datasets


def hub_standin(home, repo="org/tiny", commit="0123456789abcdef0123456789abcdef01234567", card=""):
    """The hub client's cache of a dataset repo, as snapshot_download leaves it (the network is never used)."""
    folder = home / "datasets" / "hub" / f"datasets--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (snapshot / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ALPACA), snapshot / "data" / "train-00000-of-00001.parquet")
    jsonl(snapshot / "data" / "test-00000-of-00001.jsonl", SHAREGPT)
    (snapshot / "README.md").write_text(card or "# a dataset card, not training text\n", encoding="utf-8")
    return snapshot


def test_hub_dataset_is_read_from_its_download_by_split(tokenizer, home):
    snapshot = hub_standin(home)
    train_part = check("hf:org/tiny", tokenizer, home)
    assert not train_part.has_problems, train_part.warnings
    assert (train_part.shapes, train_part.path) == ({"alpaca": 5}, "hf:org/tiny (split train)")
    test_part = check("org/tiny", tokenizer, home, split="test")  # a bare id that is no local path
    assert test_part.shapes == {"sharegpt": 4}
    with pytest.raises(LoratuneError, match="hub dataset 'org/tiny': no split 'dev'"):
        build("hf:org/tiny", tokenizer, home, split="dev")
    # A run saves the snapshot folder as data.path: read again, it is the same split of the same files.
    assert build(str(snapshot), tokenizer, home)[1].shapes == {"alpaca": 5}


def test_hub_dataset_card_configs_choose_the_subset(tokenizer, home):
    card = (
        "---\nconfigs:\n- config_name: pirate\n  data_files:\n  - split: train\n    path: data/test-*.jsonl\n"
        "- config_name: plain\n  default: true\n  data_files: data/train-*.parquet\n---\n# card\n"
    )
    hub_standin(home, card=card)
    assert check("hf:org/tiny", tokenizer, home).shapes == {"alpaca": 5}
    assert check("hf:org/tiny", tokenizer, home, subset="pirate").shapes == {"sharegpt": 4}
    with pytest.raises(LoratuneError, match="no subset 'navy'; it has: pirate, plain"):
        build("hf:org/tiny", tokenizer, home, subset="navy")


def test_hub_dataset_offline_and_not_downloaded_is_one_line_naming_it(tiny_model, home):
    message = refused(tiny_model, home, "hf:someone/not-here")
    assert "could not download dataset 'someone/not-here'" in message and "HF_HUB_OFFLINE" in message


# ---------------------------------------------------------------- bad input: one line naming the file and the row


def _bad_parquet(path):
    pq.write_table(pa.Table.from_pylist([{"instruction": "Hi", "output": 7}, {"instruction": "Ho", "output": 8}]), path)
    return path


BAD = [
    (
        "missing column",
        lambda p: csv_file(p / "d.csv", [{"instruction": "Hi", "answer": "Arr"}]),
        "d.csv row 1: needs non-empty text 'instruction' and 'output'",
    ),
    ("wrong type", lambda p: _bad_parquet(p / "d.parquet"), "d.parquet row 1: 'output' must be text, got int"),
    (
        "CSV row with an extra field",
        lambda p: _write(p / "d.csv", 'instruction,output\n"Hi","Arr"\n"Hi","Arr",x\n'),
        "d.csv row 2 (line 3): 3 fields, the header has 2 (instruction, output)",
    ),
    (
        "CSV with an unclosed quote",
        lambda p: _write(p / "d.tsv", 'instruction\toutput\n"Hi\tArr\n'),
        "d.tsv row 1 (line 2): not valid CSV",
    ),
    ("cut Parquet file", lambda p: _cut(_bad_parquet(p / "d.parquet")), "d.parquet: not a readable Parquet file"),
    ("not an Arrow file", lambda p: _write(p / "d.arrow", "not arrow"), "d.arrow: not a readable Arrow file"),
    (
        "text of the wrong type",
        lambda p: jsonl(p / "d.jsonl", [{"text": "fine"}, {"text": 5}]),
        "d.jsonl record 2: 'text' must be text",
    ),
    (
        "ShareGPT unknown speaker",
        lambda p: jsonl(p / "d.jsonl", [{"conversations": [{"from": "parrot", "value": "x"}]}]),
        "d.jsonl record 1: conversation turn 1 is from 'parrot'",
    ),
    (
        "image part",
        lambda p: jsonl(p / "d.jsonl", [{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}]),
        "d.jsonl record 1: message 1 content part 1 is 'image_url'; only text parts",
    ),
    (
        "bad tool arguments",
        lambda p: jsonl(
            p / "d.jsonl",
            [
                {
                    "messages": [
                        TOOL_CHAT["messages"][0],
                        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
                    ]
                }
            ],
        ),
        "d.jsonl record 1: message 2 tool call arguments are not JSON",
    ),
]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("case, make, expected", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_naming_the_file_and_row(tiny_model, home, tmp_path, case, make, expected):
    assert expected in refused(tiny_model, home, str(make(tmp_path)))
