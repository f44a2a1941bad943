"""generate and chat through the prompt contract, on a tiny LLaMA that learned four answers in the alpaca format.

It answers them only when prompted in that format (the issue's "Açá, açá! Portugal" bug was generate wrapping an
alpaca adapter's prompt in the model's chat template) and stops at the EOS it learned."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import make_tiny_llama
from loratune import train
from loratune.config import GenerateSpec
from loratune.generator import Generator

RECORDS = [
    {"instruction": "What is the capital of France?", "output": "Arr, matey! Paris."},
    {"instruction": "Translate this sentence.", "output": "One two three four."},
    {"instruction": "Name a fox.", "output": "The quick brown fox."},
    {"instruction": "Count to three.", "output": "One two three, matey!"},
]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    model = make_tiny_llama(root / "model")
    data = root / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    story = root / "story.txt"
    story.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    home = root / "home"
    train(
        model=str(model),
        name="pirate",
        home=home,
        show_progress=False,
        data={"path": str(data), "format": "alpaca"},
        train={"max_steps": 30, "lr": 1e-2, "batch_size": 4, "micro_batch": 4, "warmup_ratio": 0, "save_every": 0},
        adapter={"rank": 8, "alpha": 16, "dropout": 0.0},
    )
    train(model=str(model), name="story", home=home, show_progress=False, data={"path": str(story)},
          train={"max_steps": 1}, adapter={"rank": 4, "alpha": 8})  # fmt: skip
    return home


def _cli(home, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loratune.cli", "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _error_line(home, capsys, *args) -> str:
    """The real CLI (its parser and error printing) in this process: one error line, exit status 1."""
    from loratune.cli import main

    capsys.readouterr()
    assert main(["--home", str(home), *args]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("loratune: error")]
    assert "Traceback" not in err
    return line


def test_a_format_adapter_answers_in_its_format_by_default_and_stops_at_eos(learned):
    generator = Generator(lora="pirate", home=learned)
    assert generator.contract.kind == "format" and generator.contract.format_name == "alpaca"
    prompts = [r["instruction"] for r in RECORDS]
    spec = GenerateSpec(max_new_tokens=24)
    answers = generator.complete_all(prompts, spec)
    assert answers == [r["output"] for r in RECORDS]  # whole answers, nothing after them: EOS stopped generation
    # the old behaviour (the model's chat template around an alpaca-trained adapter) does not give them
    wrapped = generator.complete_all(prompts, GenerateSpec(max_new_tokens=24, chat=True))
    assert sum(a == r["output"] for a, r in zip(wrapped, RECORDS, strict=True)) < len(RECORDS)


def test_generate_cli_sampling_options_are_seeded_and_match_the_library(learned):
    options = ["--temperature", "1.5", "--top-k", "20", "--top-p", "0.95", "--repetition-penalty", "1.3"]
    args = ["generate", "--lora", "pirate", "--prompt", "Name a fox.", "--max-new-tokens", "12", *options]
    result = _cli(learned, *args, "--seed", "7")
    assert result.returncode == 0, result.stderr
    spec = GenerateSpec(max_new_tokens=12, temperature=1.5, top_k=20, top_p=0.95, repetition_penalty=1.3, seed=7)
    generator = Generator(lora="pirate", home=learned)
    sampled = generator.complete("Name a fox.", spec)
    assert result.stdout.strip() == sampled == generator.complete("Name a fox.", spec)  # the seed repeats it
    assert generator.complete("Name a fox.", GenerateSpec()) == "The quick brown fox."  # greedy: the learned answer


def test_generate_and_chat_refuse_mismatches_in_one_line(learned, capsys):
    line = _error_line(learned, capsys, "generate", "--lora", "story", "--prompt", "The", "--system", "Be brief.")
    assert "raw text" in line
    line = _error_line(learned, capsys, "chat", "--lora", "story")
    assert "raw text" in line and "loratune generate" in line


def test_chat_cli_keeps_the_history_resets_and_ends_at_eof(learned):
    turns = ["What is the capital of France?", "Count to three.", "/reset", "Count to three."]
    result = _cli(learned, "chat", "--lora", "pirate", "--max-new-tokens", "24", stdin="\n".join(turns) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("chat with pirate (format alpaca)")
    # What the library answers for the same conversations: the second turn sees the first, the fourth does not.
    generator = Generator(lora="pirate", home=learned)
    spec = GenerateSpec(max_new_tokens=24)

    def answer(history):
        return "".join(generator.stream(generator.chat_ids(history, spec), spec)).strip()

    one = answer([{"role": "user", "content": turns[0]}])
    history = [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": one}]
    two = answer([*history, {"role": "user", "content": turns[1]}])
    fresh = answer([{"role": "user", "content": turns[3]}])
    assert one == "Arr, matey! Paris." and fresh == "One two three, matey!"
    body = result.stdout.split("\n", 1)[1]
    assert body == f"> {one}\n> {two}\n> (history cleared)\n> {fresh}\n> \n"


def test_generate_finds_a_moved_base_as_merge_does_through_loratune_yaml(tmp_path, capsys):
    """Issue 16.4: peft recorded a base folder that has since moved; the run's loratune.yaml names 'tiny', a model in
    models/. generate (the library, the CLI) and merge/export resolve the same base through the one resolver."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loratune.adapters.catalog import adapter_path, base_model_path, recorded_bases
    from loratune.cli import main
    from loratune.config import RunConfig, save_yaml
    from loratune.workspace import Workspace

    home = tmp_path / "home"
    ws = Workspace.resolve(home)
    make_tiny_llama(ws.models / "tiny")
    elsewhere = shutil.copytree(ws.models / "tiny", tmp_path / "old-place" / "tiny")
    base = AutoModelForCausalLM.from_pretrained(elsewhere)
    adapter = ws.lora_dir("moved")
    get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    config = RunConfig(name="moved")
    config.model.source, config.data.path = "tiny", str(tmp_path / "story.txt")  # a raw-text run
    save_yaml(config, adapter / "loratune.yaml")
    shutil.rmtree(elsewhere)  # the folder peft recorded is gone

    assert recorded_bases(adapter) == [str(elsewhere), "tiny"]
    found = base_model_path(adapter_path("moved", ws), ws)  # what merge and export use
    assert found == ws.models / "tiny"
    generator = Generator(lora="moved", home=home)
    assert generator.contract.kind == "raw"
    assert generator.model.get_base_model().config._name_or_path == str(found)
    assert Generator(lora=str(adapter), home=home).lora_path == adapter  # a folder path finds the same adapter
    capsys.readouterr()
    assert main(["--home", str(home), "generate", "--lora", "moved", "--prompt", "The", "--max-new-tokens", "2"]) == 0

    (adapter / "loratune.yaml").unlink()  # nothing left that names a base on this machine: one line, not a traceback
    line = _error_line(home, capsys, "generate", "--lora", "moved", "--prompt", "The")
    assert "its base model" in line and "is not on this machine" in line and "--model" in line
