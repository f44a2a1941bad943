"""The real `loratune` command in a subprocess: exit codes, one-line errors, train -> generate."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import sum_records

RECORDS = sum_records(range(5), range(4), "Arr! It be {}.")
DATA_FILE = "sums.jsonl"


def loratune(*args, home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "loratune.cli", "--home", str(home), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("loratune: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_missing_dataset_is_one_line(tiny_model, home):
    result = loratune("train", "--model", tiny_model, "--data", "nope.jsonl", "--name", "x", home=home)
    assert_one_line_error(result, "dataset not found", "nope.jsonl")
    assert not (home / "loras" / "x").exists(), "nothing may be written on bad input"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--train.lrr", "1e-4"], ["unknown option 'train.lrr'", "did you mean 'lr'"]),
        (["--train.lr", "fast"], ["train.lr", "a number"]),
        (["--train.scheduler", "zigzag"], ["train.scheduler", "linear"]),
        (["--data.cutoff", "4"], ["data.cutoff"]),
        (["stray"], ["unknown argument 'stray'"]),
    ],
)
def test_bad_option_is_one_line(tiny_model, data_file, home, args, fragments):
    result = loratune("train", "--model", tiny_model, "--data", data_file, "--name", "x", *args, home=home)
    assert_one_line_error(result, *fragments)


def test_unknown_command_is_one_line(home):
    assert_one_line_error(loratune("fly", home=home), "invalid choice")


def test_hub_model_offline_is_one_line(data_file, home):
    result = loratune("train", "--model", "some-org/some-model", "--data", data_file, "--name", "x", home=home)
    assert_one_line_error(result, "could not download model 'some-org/some-model'")


def test_hub_model_without_connection_is_one_line(data_file, home):
    """No HF_HUB_OFFLINE: the hub really is asked, and the failed connection becomes one line."""
    result = loratune(
        "train", "--model", "some-org/some-model", "--data", data_file, home=home, env={"HF_HUB_OFFLINE": "0"}
    )
    assert_one_line_error(result, "could not download model 'some-org/some-model' from the Hugging Face hub")
    assert not (home / "models" / "some-org_some-model").exists()


def test_missing_gguf_file_is_one_line(data_file, home, tmp_path):
    result = loratune("train", "--model", tmp_path / "missing.gguf", "--data", data_file, home=home)
    assert_one_line_error(result, "GGUF file not found")


def test_train_from_yaml_with_overrides_then_generate(tiny_model, data_file, home, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "sums",
                "model": {"source": str(tiny_model)},
                "data": {"path": str(data_file), "cutoff": 128},
                "adapter": {"rank": 4, "alpha": 8},
                "train": {"max_steps": 4, "batch_size": 4, "micro_batch": 2, "save_every": 2, "lr": 1e-3},
            }
        )
    )
    result = loratune("train", "--config", config, "--train.lr", "2e-3", "--adapter.dropout=0", home=home)
    assert result.returncode == 0, result.stderr
    assert "done: 4 steps" in result.stdout
    assert "train:" in result.stderr and "loss=" in result.stderr and "tok_s=" in result.stderr  # the progress bar
    run = home / "loras" / "sums"
    saved = yaml.safe_load((run / "loratune.yaml").read_text())
    assert saved["train"]["lr"] == 2e-3 and saved["adapter"]["dropout"] == 0 and saved["adapter"]["rank"] == 4
    assert saved["train"]["epochs"] == 3.0  # untouched options keep their defaults
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "retention_kl" in r] == [4]  # the retention probe, on by default, at the end
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}  # the default

    for lora in ("sums", "sums/checkpoint-000002"):
        gen = loratune("generate", "--lora", lora, "--prompt", "What is 2 plus 2?", "--max-new-tokens", "5", home=home)
        assert gen.returncode == 0, gen.stderr
        assert gen.stdout.strip(), "no text generated"
    compare = loratune(
        "generate", "--lora", "sums", "--compare", "--prompt", "What is 1 plus 1?", "--max-new-tokens", "4", home=home
    )
    assert compare.returncode == 0, compare.stderr
    assert "base" in compare.stdout and "+ sums" in compare.stdout


def test_train_on_raw_text_folder(tiny_model, home, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"story{i}.txt").write_text("The quick brown fox jumps over the lazy dog. " * 30)
    result = loratune(
        "train",
        "--model",
        tiny_model,
        "--data",
        corpus,
        "--name",
        "story",
        "--train.max_steps",
        "2",
        "--data.cutoff",
        "64",
        "--data.overlap",
        "16",
        "--train.batch_size",
        "4",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    assert "raw text data" in result.stdout
    assert (home / "loras" / "story" / "adapter_model.safetensors").is_file()


def test_generate_with_unknown_lora_is_one_line(tiny_model, home):
    result = loratune("generate", "--model", tiny_model, "--lora", "ghost", "--prompt", "hi", home=home)
    assert_one_line_error(result, "no adapter at 'ghost'")


def test_resume_picks_up_the_saved_config(tiny_model, data_file, home):
    first = loratune(
        "train",
        "--model",
        tiny_model,
        "--data",
        data_file,
        "--name",
        "r",
        "--train.max_steps",
        "4",
        "--train.save_every",
        "2",
        "--train.batch_size",
        "4",
        home=home,
    )
    assert first.returncode == 0, first.stderr
    # Pretend the run was stopped after checkpoint 2: drop the later history, resume by name only.
    metrics = home / "loras" / "r" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))
    shutil.rmtree(home / "loras" / "r" / "checkpoint-000004")  # the final step's checkpoint
    (home / "loras" / "r" / "finished.json").unlink()  # a stopped run has no record of having finished
    again = loratune("train", "--name", "r", "--resume", home=home)
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoint-000002" in again.stdout
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # and the retention probe's row at the end
