"""Bad input gets one clear line (a LoratuneError naming the file/record/option), and nothing is written to loras/.

Unit tests of the readers (test_instructions.py, test_raw_text.py) check the parsing details; these go through
`train()` end to end, so they also prove that no run folder appears. Inputs that are only unusual (a BOM, CRLF,
JSON Lines saved as .json, a dataset smaller than a batch, a tokenizer without a pad token) must simply work.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from loratune import LoratuneError, train
from loratune.config import DataSpec
from loratune.data import build_samples
from loratune.data.build import IGNORE
from loratune.workspace import Workspace

GOOD = {"instruction": "What is 2 plus 2?", "output": "Arr! It be 4."}
FAST = {"train.max_steps": 1, "train.batch_size": 2, "train.micro_batch": 2, "adapter.rank": 4}


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def last_eos(ids: list[int], eos: int) -> int:
    return len(ids) - 1 - ids[::-1].index(eos)


def refused(tiny_model, home, data, **options) -> str:
    """Train on bad input: exactly one line of error, and nothing in loras/."""
    with pytest.raises(LoratuneError) as info:
        train(model=str(tiny_model), data=str(data), name="x", home=home, show_progress=False, **{**FAST, **options})
    message = str(info.value)
    assert message and "\n" not in message
    loras = home / "loras"
    assert not loras.exists() or not any(loras.iterdir()), f"written on bad input: {list(loras.iterdir())}"
    return message


# (case, file name, file bytes, options, the line must contain)
BAD_DATA = [
    ("empty file", "d.jsonl", b"", {}, "d.jsonl: file is empty"),
    ("blank lines only", "d.jsonl", b"\n  \n\r\n", {}, "d.jsonl: file is empty"),
    ("empty text file", "d.txt", b"", {}, "d.txt: file is empty"),
    ("non-UTF-8 on line 3", "d.jsonl", jsonl(GOOD, GOOD) + b'{"output": "caf\xe9"}\n', {}, "line 3 is not UTF-8"),
    ("non-UTF-8 text", "d.txt", b"fine\nLatin-1 \xe9t\xe9\n", {}, "d.txt: line 2 is not UTF-8 text"),
    (
        "malformed JSON array",
        "d.json",
        b'[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n',
        {},
        "d.json: invalid JSON at line 3, column 23: Expecting ',' delimiter",
    ),
    (
        "malformed JSON line",
        "d.jsonl",
        jsonl(GOOD) + b'{"instruction": "x", "output": }\n',
        {},
        "d.jsonl: invalid JSON on line 2, column 32",
    ),
    ("unclosed array", "d.json", b'[{"instruction": "a", "output": "b"},\n', {}, "d.json: invalid JSON at line 2"),
    ("a JSON number", "d.json", b"42", {}, "expected a JSON array of records"),
    ("array of strings", "d.json", b'["a", "b"]', {}, "record 1: expected an object with keys, got str"),
    (
        "missing key",
        "d.jsonl",
        jsonl(GOOD, {"instruction": "no answer"}),
        {},
        "record 2: needs non-empty text 'instruction' and 'output' (or a 'messages' list); it has: instruction",
    ),
    (
        "empty value",
        "d.jsonl",
        jsonl({"instruction": "Hi", "output": ""}),
        {},
        "d.jsonl record 1: 'output' is empty; give it text or remove the record",
    ),
    (
        "number instead of text",
        "d.jsonl",
        jsonl(GOOD, {"instruction": "x", "output": 42}),
        {},
        "record 2: 'output' must be text, got int '42'",
    ),
    (
        "list instead of text",
        "d.jsonl",
        jsonl({"instruction": ["a"], "output": "b"}),
        {},
        "'instruction' must be text, got list",
    ),
    (
        "key sets the format lacks",
        "d.jsonl",
        jsonl(*[{"question": "q", "answer": "a"}] * 3, *[{"prompt": "p", "completion": "c"}] * 2),
        {"data.format": "alpaca"},
        "records whose keys match no key set of format 'alpaca': answer,question (records 1, 2, 3); "
        "completion,prompt (records 4, 5); the format knows: instruction,output; instruction,input,output",
    ),
    ("every sample too long", "d.jsonl", jsonl(GOOD, GOOD), {"data.cutoff": 8}, "2 dropped as longer than the cutoff"),
    (
        "a huge single line",
        "d.jsonl",
        jsonl({"instruction": "Repeat.", "output": "arr " * 250_000}),
        {"data.cutoff": 256},
        "1 records -> 0 samples",
    ),
    (
        "raw text overlap >= cutoff",
        "d.txt",
        b"The quick brown fox. " * 50,
        {"data.cutoff": 64, "data.overlap": 64},
        "data.overlap (64) must be smaller than data.cutoff (64)",
    ),
    ("unsupported file type", "d.docx", b"PK\x03\x04", {}, "d.docx: unsupported data file type"),
    (
        "target modules not found",
        "d.jsonl",
        jsonl(GOOD, GOOD),
        {"adapter.targets": "query_key_value"},
        "target module(s) query_key_value not found in this llama; its linear modules are: q_proj",
    ),
]


@pytest.mark.parametrize("case, name, content, options, expected", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_one_line_and_writes_nothing(tiny_model, home, tmp_path, case, name, content, options, expected):
    data = tmp_path / name
    data.write_bytes(content)
    assert expected in refused(tiny_model, home, data, **options)


def test_template_placeholder_without_key(tiny_model, home, tmp_path):
    fmt = tmp_path / "qa-format.json"
    fmt.write_text(json.dumps({"question,answer": "Q: %question% (%topic%)\nA: %answer%"}))
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl({"question": "Why?", "answer": "Because."}))
    message = refused(tiny_model, home, data, **{"data.format": str(fmt)})
    assert "d.jsonl record 1: template placeholder %topic% has no key 'topic' in the record" in message


def test_folder_without_data_files(tiny_model, home, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.docx").write_text("not a data file")
    assert "corpus: folder has no data files (.jsonl, .json" in refused(tiny_model, home, tmp_path / "corpus")


BAD_OPTIONS = [
    ({"train.lr": 0}, "train.lr must be a number > 0"),
    ({"train.lr": -1e-4}, "train.lr must be a number > 0"),
    ({"adapter.rank": 0}, "adapter.rank must be > 0"),
    ({"adapter.alpha": -16}, "adapter.alpha must be > 0"),
    ({"train.batch_size": 0}, "train.batch_size must be a multiple of train.micro_batch"),
    ({"train.micro_batch": -2}, "train.micro_batch must be > 0"),
    ({"train.batch_size": 6, "train.micro_batch": 4}, "train.batch_size must be a multiple of train.micro_batch"),
    ({"train.epochs": -1, "train.max_steps": 5}, "train.epochs and train.max_steps must not be negative"),
    ({"train.max_steps": -5}, "train.epochs and train.max_steps must not be negative"),
    ({"train.save_every": -1}, "train.save_every must be >= 0"),
    ({"train.keep_checkpoints": -1}, "train.keep_checkpoints must be >= 0"),
    ({"train.stop_at_loss": -0.5}, "train.stop_at_loss must be >= 0"),
    ({"data.cutoff": 0}, "data.cutoff must be at least 8 tokens"),
    ({"adapter.dropout": 1.0}, "adapter.dropout must be in [0, 1)"),
    ({"data.too_long": "wrap"}, "option 'data.too_long' must be one of drop, truncate; got 'wrap'"),
    ({"train.resume": "maybe"}, "option 'train.resume' expects true or false or auto; got 'maybe'"),
]


@pytest.mark.parametrize(
    "options, expected", BAD_OPTIONS, ids=[next(iter(o)) + "=" + str(list(o.values())[-1]) for o, _ in BAD_OPTIONS]
)
def test_zero_or_negative_hyperparameters(tiny_model, home, tmp_path, options, expected):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    assert expected in refused(tiny_model, home, data, **options)


@pytest.mark.parametrize("name", ["../escape", "/tmp/absolute", "nul\0byte", "a/b", ".."])
def test_unsafe_lora_names(tiny_model, home, tmp_path, name):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    with pytest.raises(LoratuneError, match="invalid adapter name"):
        train(model=str(tiny_model), data=str(data), name=name, home=home, show_progress=False, **FAST)
    assert not (home / "loras").exists()
    assert not (tmp_path / "escape").exists() and not (home.parent / "escape").exists()


def test_lora_symlink_pointing_outside_loras(tiny_model, home, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (home / "loras").mkdir(parents=True)
    (home / "loras" / "link").symlink_to(outside)
    with pytest.raises(LoratuneError, match=r"'link' points outside .*loras"):
        train(model=str(tiny_model), data=str(data), name="link", home=home, show_progress=False, **FAST)
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------- unusual but fine: handled, never refused


def test_bom_and_crlf_read_like_clean_utf8(tokenizer, home, tmp_path):
    clean, messy = tmp_path / "clean.jsonl", tmp_path / "messy.jsonl"
    clean.write_bytes(jsonl(GOOD, {"instruction": "Line one\nline two", "output": "Aye."}))
    messy.write_bytes(b"\xef\xbb\xbf" + clean.read_bytes().replace(b"\n", b"\r\n"))
    ws = Workspace.resolve(home)
    assert (
        build_samples(DataSpec(path=str(messy)), tokenizer, ws)[0]
        == build_samples(DataSpec(path=str(clean)), tokenizer, ws)[0]
    )


def test_json_lines_saved_as_json_and_arrays_saved_as_jsonl(tokenizer, home, tmp_path):
    records = [GOOD, {"instruction": "Name a colour.", "output": "Red, matey."}]
    lines, array = tmp_path / "lines.json", tmp_path / "array.jsonl"
    lines.write_bytes(jsonl(*records))
    array.write_text(json.dumps(records, indent=2))
    ws = Workspace.resolve(home)
    a, report = build_samples(DataSpec(path=str(lines)), tokenizer, ws)
    b, _ = build_samples(DataSpec(path=str(array)), tokenizer, ws)
    assert report.records == 2 and a == b


def test_too_long_is_counted_and_dropped_or_truncated(tokenizer, home, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, {"instruction": "Tell a long tale.", "output": "Arr, " * 60}))
    ws = Workspace.resolve(home)
    kept, dropped = build_samples(DataSpec(path=str(data), cutoff=64), tokenizer, ws)
    assert len(kept) == 1 and dropped.too_long == 1
    assert "1 dropped as longer than the cutoff (data.too_long: truncate keeps them)" in dropped.summary()
    cut, truncated = build_samples(DataSpec(path=str(data), cutoff=64, too_long="truncate"), tokenizer, ws)
    assert len(cut) == 2 and truncated.truncated == 1 and max(len(s.input_ids) for s in cut) == 64
    assert "1 truncated to the cutoff" in truncated.summary()


def test_prompt_filling_the_cutoff_is_dropped_never_a_nan_loss(tiny_model, home, tmp_path):
    data = tmp_path / "d.jsonl"
    long_prompt = {"instruction": "Translate this sentence. " * 40, "output": "Arr."}
    data.write_bytes(jsonl(GOOD, long_prompt, GOOD, long_prompt))
    rows = []
    train(
        model=str(tiny_model),
        data=str(data),
        name="x",
        home=home,
        show_progress=False,
        on_step=rows.append,
        **{**FAST, "data.cutoff": 64, "data.too_long": "truncate", "train.max_steps": 2},
    )
    report = json.loads(json.dumps([r["loss"] for r in rows]))
    assert len(report) == 2 and all(0 < loss < 100 for loss in report)  # finite: no step of prompts only
    ws = Workspace.resolve(home)
    from transformers import AutoTokenizer

    samples, built = build_samples(
        DataSpec(path=str(data), cutoff=64, too_long="truncate"), AutoTokenizer.from_pretrained(tiny_model), ws
    )
    assert built.nothing_to_train == 2 and built.samples == 2
    assert "2 dropped with nothing to train" in built.summary()


def test_dataset_smaller_than_one_batch_trains(tiny_model, home, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    result = train(
        model=str(tiny_model),
        data=str(data),
        name="x",
        home=home,
        **{**FAST, "train.batch_size": 16, "train.micro_batch": 4, "train.max_steps": 0, "train.epochs": 1},
    )
    assert result.steps == 1 and 0 < result.final_loss < 100
    assert "note: 2 samples, fewer than train.batch_size 16: every step uses them all" in capsys.readouterr().out


def test_tokenizer_without_pad_token_still_trains_eos(tiny_model, home, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratune.models import load_base

    folder = tmp_path / "no-pad"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = None
    tok.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(folder)
    _, loaded = load_base(folder)
    assert loaded.pad_token_id == loaded.eos_token_id  # padding borrows EOS ...
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD))
    (sample,), _ = build_samples(DataSpec(path=str(data)), loaded, Workspace.resolve(home))
    end = last_eos(sample.input_ids, loaded.eos_token_id)
    assert sample.labels[end] == loaded.eos_token_id and end >= len(sample.input_ids) - 2  # ... EOS is still trained
    result = train(model=str(folder), data=str(data), name="x", home=home, show_progress=False, **FAST)
    assert 0 < result.final_loss < 100


def test_bos_never_doubled_and_eos_never_missing(tmp_path, home):
    """A LLaMA-2-style tokenizer (adds BOS itself) with a chat template that writes BOS too."""
    from tokenizers import processors

    from conftest import make_tokenizer

    tok = make_tokenizer("{{ bos_token }}" + make_tokenizer().chat_template)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.bos_token_id)]
    )
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    ws = Workspace.resolve(home)
    chat, alpaca = tmp_path / "chat.jsonl", tmp_path / "alpaca.jsonl"
    chat.write_bytes(jsonl(GOOD))
    alpaca.write_bytes(jsonl(GOOD))
    (templated,), _ = build_samples(DataSpec(path=str(chat)), tok, ws)
    tok.chat_template = None
    (formatted,), _ = build_samples(DataSpec(path=str(alpaca), format="alpaca"), tok, ws)
    story = tmp_path / "story.txt"
    story.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    chunks, _ = build_samples(DataSpec(path=str(story), cutoff=64, overlap=16), tok, ws)
    for sample in [templated, formatted, *chunks]:
        assert sample.input_ids[0] == tok.bos_token_id and sample.input_ids[1] != tok.bos_token_id
        assert sample.input_ids.count(tok.bos_token_id) == 1
    for sample in [templated, formatted]:
        end = last_eos(sample.input_ids, tok.eos_token_id)
        assert sample.labels[end] == tok.eos_token_id  # the response ends with EOS, and it is trained
        assert sample.input_ids[end - 1] != tok.eos_token_id  # once, not doubled
        assert tok.decode(sample.input_ids[end + 1 :]).strip() == ""  # only a template's newline may follow
        assert sample.labels[0] == IGNORE
    assert chunks[-1].input_ids[-1] == tok.eos_token_id  # raw text: EOS ends the document


# ---------------------------------------------------------------- disk full during a save, in a real subprocess


def _limit_file_size():  # runs in the child before exec: a 40 kB file-size limit, EFBIG instead of SIGXFSZ
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))


@pytest.mark.parametrize("how", ["tmpfs", "file-size limit"])
def test_disk_full_during_a_save_is_one_line_and_keeps_complete_checkpoints(tiny_model, tmp_path, how):
    from safetensors.torch import load_file

    home = tmp_path / "small-disk"
    home.mkdir()
    if how == "tmpfs":
        if (
            os.geteuid() != 0
            or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(home)]).returncode
        ):
            pytest.skip("mounting a small tmpfs needs root")
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(*[GOOD] * 8))
    rank = "4" if how == "tmpfs" else "64"  # the file-size limit is hit by the first checkpoint's adapter
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "loratune.cli",
                "--home",
                str(home),
                "train",
                "--model",
                str(tiny_model),
                "--data",
                str(data),
                "--name",
                "x",
                "--train.batch_size",
                "2",
                "--train.micro_batch",
                "2",
                "--train.max_steps",
                "40",
                "--train.save_every",
                "1",
                "--adapter.rank",
                rank,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            preexec_fn=_limit_file_size if how != "tmpfs" else None,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("loratune: error:")]
        assert "disk full after step" in line and "nothing half-written was kept" in line, line
        run = home / "loras" / "x"
        assert not list(run.glob(".*tmp*")), "a temporary folder was left behind"
        for checkpoint in run.glob("checkpoint-*"):
            assert (checkpoint / "COMPLETE").is_file()
            assert load_file(checkpoint / "adapter_model.safetensors")
        print(f"\n{how}: {line} ({len(list(run.glob('checkpoint-*')))} complete checkpoints kept)")
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(home)])


# ---------------------------------------------------------------- issue 22 (resume helper): numbers and names up front
# Each used to fail late (an OverflowError, a ValueError from torch, peft's NoMatchingPeftModule, a ZeroDivisionError
# at step 4) or to be accepted (weight decay inf trained non-finite weights). Now validate() refuses them first.

NUMBERS = [
    ({"train.epochs": "inf"}, "option 'train.epochs' must be a finite number; got inf"),
    ({"train.epochs": 1e308}, "train.epochs must be at most 1,000,000 (use train.max_steps)"),
    ({"train.seed": 2**70}, "train.seed must be a whole number from 0 to 4294967295"),
    ({"train.seed": -1}, "train.seed must be a whole number from 0 to 4294967295"),
    ({"adapter.targets": ""}, "adapter.targets is empty: use attention+mlp, attention, all-linear or module names"),
    ({"adapter.targets": ",,,"}, "adapter.targets is empty"),
    ({"train.lr_power": -3, "train.scheduler": "polynomial"}, "train.lr_power must be > 0"),
    ({"train.weight_decay": "inf"}, "option 'train.weight_decay' must be a finite number; got inf"),
    ({"train.weight_decay": 1e4}, "train.weight_decay 10000 x train.lr 0.0003 must be below 1"),
    ({"train.max_grad_norm": "nan"}, "option 'train.max_grad_norm' must be a finite number; got nan"),
    ({"train.stop_at_loss": "inf"}, "option 'train.stop_at_loss' must be a finite number; got inf"),
    ({"adapter.dropout": "-inf"}, "option 'adapter.dropout' must be a finite number; got -inf"),
]


@pytest.mark.parametrize(
    "options, expected", NUMBERS, ids=[f"{k}={v}" for o, _ in NUMBERS for k, v in [*o.items()][:1]]
)
def test_non_finite_or_out_of_range_numbers_are_refused_up_front(tiny_model, home, tmp_path, options, expected):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    assert expected in refused(tiny_model, home, data, **options)


@pytest.mark.parametrize("name", ["abc\n", "CON", "nul.txt", "com1", "Lpt9", "trailing."])
def test_names_a_filesystem_would_mangle_are_refused(tiny_model, home, tmp_path, name):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    with pytest.raises(LoratuneError, match="invalid adapter name") as info:
        train(model=str(tiny_model), data=str(data), name=name, home=home, show_progress=False, **FAST)
    assert "\n" not in str(info.value).replace(repr(name), "")  # one line (the name itself shown escaped)
    assert not (home / "loras").exists()


@pytest.mark.long
def test_numbers_and_names_through_the_cli_fail_in_one_line_before_anything_loads(home, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    cases = [
        (["--train.epochs", "1e308"], "train.epochs must be at most 1,000,000"),
        (["--train.seed", str(2**70)], "train.seed must be a whole number from 0 to 4294967295"),
        (["--name", "abc\n"], "invalid adapter name 'abc\\n'"),
    ]
    for args, expected in cases:
        result = subprocess.run(
            [sys.executable, "-m", "loratune.cli", "--home", str(home), "train", "--data", str(data), *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("loratune: error:")]
        assert expected in line
        assert not (home / "loras").exists() and not (home / "models").exists()  # refused before the model


def test_a_checkpoint_is_never_written_with_non_finite_weights(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loratune.training.checkpoint import save_checkpoint
    from loratune.training.sharding import adapter_weights

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=2, target_modules=["q_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    next(p for p in model.parameters() if p.requires_grad).data[0, 0] = float("inf")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(LoratuneError, match=r"not finite at step 3 .*no checkpoint was written"):
        save_checkpoint(run, 3, model, adapter_weights(model), optimizer.state_dict(), scheduler)
    assert list(run.iterdir()) == []
