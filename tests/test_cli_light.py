"""The light side of the command line, as a real subprocess: help, version, usage errors and the commands that only read
folders never import torch or transformers; --home before or after the command; shell completion scripts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

HEAVY = re.compile(r"\b(torch|transformers)\b")


def loratune(*args, importtime: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LORATUNE_HOME", None)
    return subprocess.run(
        [sys.executable, *flags, "-m", "loratune.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def heavy_imports(result: subprocess.CompletedProcess) -> list[str]:
    """The modules of torch or transformers that `python -X importtime` reports as imported."""
    rows = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert rows, "no -X importtime output"
    return [name for name in rows if HEAVY.search(name)]


LIGHT = [
    (["--help"], 0),
    (["--version"], 0),
    (["loras", "list"], 0),
    (["models", "list"], 0),
    (["models", "recommend", "--language", "xx"], 0),
    (["data", "check", "notes.docx"], 2),
    (["completion", "bash"], 0),
    (["loras", "list", "--help"], 0),
    (["train", "--help"], 0),
    ([], 1),  # usage errors from here on
    (["bogus"], 1),
    (["loras", "list", "--nope"], 1),
    (["train", "--nope"], 1),
    (["train", "--train.lr", "0"], 1),
    (["serve", "--threads", "0"], 1),
]


@pytest.mark.parametrize("args, code", LIGHT, ids=[" ".join(a) or "no arguments" for a, _ in LIGHT])
def test_light_commands_never_import_torch(tmp_path, args, code):
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    result = loratune("--home", tmp_path, *args, importtime=True, cwd=tmp_path)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert heavy_imports(result) == []


def test_version_prints_the_package_version(tmp_path):
    result = loratune("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"loratune {version('loratune')}\n"


def test_unknown_extension_is_a_problem_said_before_loading_a_model(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "notes.DOCX").write_text("not a data file")
    result = loratune("--home", tmp_path, "data", "check", "notes.DOCX")
    assert result.returncode == 2, result.stderr
    assert f"PROBLEM: {tmp_path / 'datasets' / 'notes.DOCX'}: unsupported data file type; use .jsonl" in result.stdout
    assert not (tmp_path / "models").exists(), "no model was converted or loaded for this"


def test_the_early_check_knows_the_suffixes_the_readers_take():
    from loratune.commands.data import DATA_SUFFIXES
    from loratune.data.files import KINDS

    assert DATA_SUFFIXES == tuple(KINDS)


@pytest.mark.parametrize(
    "args",
    [
        ["--home", "{a}", "models", "list"],
        ["models", "list", "--home", "{a}"],
        ["models", "--home", "{a}", "list"],
        ["--home", "{b}", "models", "list", "--home", "{a}"],  # the later one wins, as for any repeated option
    ],
)
def test_home_before_or_after_the_command(tmp_path, args):
    a, b = tmp_path / "a", tmp_path / "b"
    result = loratune(*(arg.format(a=a, b=b) for arg in args), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"no models in {a / 'models'} (add one with: loratune models download <hub id>)\n"


def test_home_after_the_command_is_the_same_for_loras_list(tmp_path):
    (tmp_path / "loras").mkdir()
    before = loratune("--home", tmp_path, "loras", "list", cwd="/")
    after = loratune("loras", "list", "--home", tmp_path, cwd="/")
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout


def bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of `words` (the word under the cursor), through the script's function."""
    program = (
        f'source "{script}"; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _loratune; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    result = subprocess.run(["bash", "-c", program, "bash", *words], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory) -> Path:
    result = loratune("completion", "bash")
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("completion") / "loratune.bash"
    path.write_text(result.stdout)
    return path


def test_bash_script_is_valid_and_completes_the_commands(bash_script):
    check = subprocess.run(["bash", "-n", str(bash_script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert bash_complete(bash_script, "loratune", "lo") == ["loras"]
    assert bash_complete(bash_script, "loratune", "--home", "/tmp", "loras", "ex") == ["export"]
    assert bash_complete(bash_script, "loratune", "loras", "export", "x", "--format", "") == [
        "gguf",
        "gguf-model",
        "ollama",
    ]
    assert bash_complete(bash_script, "loratune", "completion", "z") == ["zsh"]
    assert "--train.lr" in bash_complete(bash_script, "loratune", "train", "--train.l")
    assert bash_complete(bash_script, "loratune", "data", "check", "d.jsonl", "--data.eval_s") == ["--data.eval_split"]
    assert "--train.lr" not in bash_complete(bash_script, "loratune", "data", "check", "d.jsonl", "--")
    assert bash_complete(bash_script, "loratune", "models", "list", "--h") == ["--help", "--home"]


@pytest.mark.parametrize("shell, check", [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])])
def test_zsh_and_fish_scripts_parse(tmp_path, shell, check):
    result = loratune("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "loras" in result.stdout and "--train.lr" in result.stdout.replace("-l train.lr", "--train.lr")
    if shutil.which(check[0]) is None:
        pytest.skip(f"{shell} is not installed here")
    path = tmp_path / f"loratune.{shell}"
    path.write_text(result.stdout)
    parsed = subprocess.run([*check, str(path)], capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr
