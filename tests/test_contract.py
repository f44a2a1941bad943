"""The prompt contract: what generate sends equals the masked prompt of a training sample, token for token, for every
prompt kind; prompt.json travels with the run, its checkpoints and the merged model; mismatches are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_llama
from loratune import train
from loratune.config import DataSpec, GenerateSpec, from_dict, load_yaml
from loratune.data.build import IGNORE, build_samples
from loratune.errors import LoratuneError
from loratune.generator import Generator
from loratune.prompting import (
    CONTRACT_FILE,
    chat_text,
    load_contract,
    make_contract,
    render_chat,
    render_prompt,
)
from loratune.workspace import Workspace

RECORDS = [
    {"instruction": "What is the capital of France?", "output": "Arr, matey! Paris."},
    {"instruction": "Name a fox.", "input": "The quick brown fox", "output": "Arr, the quick brown fox."},
    {"instruction": "Count to three.", "output": "One two three, matey!"},
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "A pirate answers every question."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Arr, Paris."},
            {"role": "user", "content": "Translate this sentence."},
            {"role": "assistant", "content": "Arr, matey!"},
        ]
    },
    {"messages": [{"role": "user", "content": "One two three?"}, {"role": "assistant", "content": "four five six"}]},
]
STORY = "Once upon a time the quick brown fox jumps over the lazy dog. " * 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny LLaMA with a ChatML template, one without, and a 2-step adapter (checkpoint at step 1) of each kind."""
    root = tmp_path_factory.mktemp("contract")
    chat_model = make_tiny_llama(root / "chat-model")
    plain_model = make_tiny_llama(root / "plain-model", chat_template=None)
    records = root / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in CHATS), encoding="utf-8")
    story = root / "story.txt"
    story.write_text(STORY, encoding="utf-8")
    home = root / "home"
    made = {
        "chat": (chat_model, records, {}),
        "alpaca": (chat_model, records, {"format": "alpaca"}),
        "vicuna": (plain_model, records, {"format": "vicuna"}),  # "ASSISTANT: " ends with a space
        "chatml": (plain_model, chats, {"chat_template": "chatml"}),  # chat data on a model without a template
        "story": (chat_model, story, {}),
    }
    for name, (model, data, options) in made.items():
        train(
            model=str(model),
            name=name,
            home=home,
            show_progress=False,
            data={"path": str(data), **options},
            train={"max_steps": 2, "save_every": 1, "batch_size": 2, "micro_batch": 2},
            adapter={"rank": 4, "alpha": 8},
        )
    return home


def _samples(home: Path, name: str, tokenizer):
    spec = from_dict(DataSpec, load_yaml(home / "loras" / name / "loratune.yaml")["data"])
    samples, _ = build_samples(spec, tokenizer, Workspace.resolve(home))
    return samples


def _masked_prefix(sample) -> list[int]:
    first = next(i for i, label in enumerate(sample.labels) if label != IGNORE)
    return sample.input_ids[:first]


@pytest.mark.parametrize("name", ["chat", "alpaca", "vicuna"])
def test_generate_prompt_equals_the_masked_prompt_of_a_training_sample(runs, name):
    generator = Generator(lora=name, home=runs)
    samples = _samples(runs, name, generator.tokenizer)
    for record, sample in zip(RECORDS, samples, strict=True):
        if "input" in record:  # generate's single prompt is the instruction alone
            continue
        assert generator.prompt_ids(record["instruction"]) == _masked_prefix(sample)
    kind = {"chat": "chat", "alpaca": "format", "vicuna": "format"}[name]
    assert generator.contract.kind == kind


def test_chat_template_option_on_a_model_without_one(runs):
    generator = Generator(lora="chatml", home=runs)
    assert generator.contract.kind == "chat" and generator.contract.template_name == "chatml"
    assert not getattr(generator.tokenizer, "chat_template", None), "the base model really has no template"
    conversation = CHATS[0]["messages"]
    (sample, _) = _samples(runs, "chatml", generator.tokenizer)
    # the second assistant turn's prompt is the whole history: it is where the second masked span starts
    labels = sample.labels
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    second_span = next(i for prev, i in zip(trained, trained[1:], strict=False) if i != prev + 1)
    assert generator.chat_ids(conversation[:4]) == sample.input_ids[:second_span]
    assert generator.chat_ids(conversation[:2]) == _masked_prefix(sample)
    assert "<|im_start|>assistant\n" in generator.tokenizer.decode(generator.chat_ids(conversation[:2]))


def test_raw_text_prompt_is_the_bare_text_as_training_tokenized_it(runs):
    generator = Generator(lora="story", home=runs)
    assert generator.contract.kind == "raw" and generator.raw_text_lora
    (first, *_) = _samples(runs, "story", generator.tokenizer)
    ids = generator.prompt_ids("Once upon a time the quick brown fox")
    assert ids == first.input_ids[: len(ids)]


def test_chat_request_to_a_raw_text_adapter_is_refused_in_one_line(runs):
    generator = Generator(lora="story", home=runs)
    with pytest.raises(LoratuneError, match="trained on raw text") as failure:
        generator.chat_ids([{"role": "user", "content": "hi"}])
    assert "\n" not in str(failure.value)
    with pytest.raises(LoratuneError, match="no system prompt"):
        generator.prompt_ids("Once", GenerateSpec(system="Be brief."))


def test_chat_data_without_a_template_fails_in_one_line_naming_the_option(tmp_path):
    model = make_tiny_llama(tmp_path / "plain", chat_template=None)
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps(CHATS[1]) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "loratune.cli", "--home", str(tmp_path / "h"), "train", "--model", str(model)]
        + ["--data", str(data), "--train.max_steps", "1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("loratune: error")]
    assert "Traceback" not in result.stderr
    assert "needs a chat template" in line and "data.chat_template" in line and "chatml" in line


def test_prompt_json_is_in_the_run_and_every_checkpoint_with_tokenizer_files(runs):
    run = runs / "loras" / "alpaca"
    for folder in (run, run / "checkpoint-000001"):
        saved = json.loads((folder / CONTRACT_FILE).read_text(encoding="utf-8"))
        assert saved["kind"] == "format" and saved["format_name"] == "alpaca"
        assert "%instruction%" in saved["format"]["instruction,output"]
        assert saved["stop_token_ids"] == [saved["eos_token_id"]]
        for file in saved["tokenizer_files"]:
            assert (folder / file).is_file()
    assert load_contract(run / "checkpoint-000001") == load_contract(run)


def test_checkpoint_falls_back_to_the_run_and_old_adapters_derive_the_contract(runs, tmp_path):
    old = tmp_path / "home"
    shutil.copytree(runs / "loras" / "vicuna", old / "loras" / "vicuna")
    now = load_contract(old / "loras" / "vicuna")
    (old / "loras" / "vicuna" / "checkpoint-000001" / CONTRACT_FILE).unlink()
    assert load_contract(old / "loras" / "vicuna" / "checkpoint-000001") == now  # from the run folder
    (old / "loras" / "vicuna" / CONTRACT_FILE).unlink()  # an adapter trained before prompt.json existed
    generator = Generator(lora="vicuna", home=old)
    assert generator.contract == now  # derived from loratune.yaml: format vicuna, as it was trained
    assert generator.tokenizer.decode(generator.prompt_ids("Hi?")).rstrip(" ").endswith("USER: Hi?\n\nASSISTANT:")


@pytest.mark.parametrize("name", ["alpaca", "chatml", "chat"])
def test_plain_transformers_renders_the_same_prompt_from_the_saved_tokenizer(runs, name):
    from transformers import AutoTokenizer

    run = runs / "loras" / name
    contract = load_contract(run)
    saved = AutoTokenizer.from_pretrained(run)  # what a peft user loads beside the adapter
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == chat_text(contract, saved, messages)
    assert saved.eos_token == contract.eos_token
    if name == "alpaca":  # multi-turn too: the format's Jinja equivalent lays turns out as loratune does
        turns = messages + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}]
        assert saved.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == chat_text(
            contract, saved, turns
        )


def test_format_without_system_key_set_refuses_a_system_prompt(runs):
    generator = Generator(lora="vicuna", home=runs)
    with pytest.raises(LoratuneError, match="cannot take a system prompt"):
        generator.prompt_ids("Hi", GenerateSpec(system="You are a pirate."))
    # The shipped alpaca format has system key sets (a system prompt replaces its preamble), as training uses them.
    alpaca = Generator(lora="alpaca", home=runs)
    ids = alpaca.prompt_ids("Hi", GenerateSpec(system="You are a pirate."))
    assert alpaca.tokenizer.decode(ids).startswith("You are a pirate.\n\n### Instruction:\nHi\n\n### Response:")


def test_no_chat_sends_the_bare_text(runs):
    generator = Generator(lora="alpaca", home=runs)
    bare = generator.prompt_ids("What is 8 plus 7?", GenerateSpec(chat=False))
    assert generator.tokenizer.decode(bare) == "What is 8 plus 7?"


def test_contract_functions_serve_can_call(runs):
    """render_prompt / render_chat with the contract and the tokenizer alone (no Generator): what serve uses."""
    generator = Generator(lora="alpaca", home=runs)
    contract = load_contract(runs / "loras" / "alpaca")
    messages = [{"role": "user", "content": "Hi"}]
    assert render_chat(contract, generator.tokenizer, messages) == render_prompt(contract, generator.tokenizer, "Hi")
    assert render_prompt(contract, generator.tokenizer, "Hi") == generator.prompt_ids("Hi")


def test_make_contract_stops_at_the_end_of_turn_token(tokenizer, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(RECORDS[0]) + "\n", encoding="utf-8")
    contract = make_contract(DataSpec(path=str(data)), tokenizer, Workspace.resolve(tmp_path))
    assert contract.kind == "chat" and contract.stop == ["<|im_end|>"]
    assert contract.stop_token_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    llama3 = make_contract(DataSpec(path=str(data), chat_template="llama3"), tokenizer, Workspace.resolve(tmp_path))
    assert llama3.stop[0] == "<|eot_id|>"  # plain text on this tokenizer: a stop string, not an id


def test_merged_model_carries_the_contract_and_generates_like_base_plus_adapter(runs):
    from transformers import AutoTokenizer

    from loratune.adapters.merge import merge

    out = merge("vicuna", "vicuna-merged", runs)
    contract = load_contract(runs / "loras" / "vicuna")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == contract.chat_template and config["eos_token"] == contract.eos_token
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] in (
        contract.stop_token_ids,
        contract.stop_token_ids[0],
    )
    spec = GenerateSpec(max_new_tokens=12)
    prompts = ["What is the capital of France?", "Count to three."]
    adapter = Generator(lora="vicuna", home=runs)
    merged = Generator(model=str(out), home=runs)
    assert merged.contract == contract
    assert [merged.prompt_ids(p) for p in prompts] == [adapter.prompt_ids(p) for p in prompts]
    assert merged.complete_all(prompts, spec) == adapter.complete_all(prompts, spec)


def test_a_prompt_ending_in_a_space_is_cut_where_training_cut_it_on_the_real_tokenizer(default_model_home, tmp_path):
    """vicuna's "ASSISTANT: %output%": SmolLM2's tokenizer merges the space into the answer's first word (" Arr"), so
    the prompt training masked ends at "ASSISTANT:"; sending "ASSISTANT: " would be a token the model never saw."""
    from loratune.models.sources import load_tokenizer, resolve_model_path

    ws = Workspace.resolve(default_model_home)
    tokenizer = load_tokenizer(resolve_model_path("default", ws))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    for fmt in ("vicuna", "alpaca", "auto"):
        spec = DataSpec(path=str(data), format=fmt)
        contract = make_contract(spec, tokenizer, ws)
        samples, _ = build_samples(spec, tokenizer, ws)
        ids = render_prompt(contract, tokenizer, RECORDS[0]["instruction"])
        assert ids == _masked_prefix(samples[0]), fmt
        if fmt == "vicuna":
            assert tokenizer.decode(ids).endswith("ASSISTANT:")
            assert tokenizer.convert_ids_to_tokens(samples[0].input_ids[len(ids)]) == "ĠArr"


@pytest.mark.parametrize("name", ["alpaca", "vicuna"])
def test_named_chat_templates_render_a_turn_like_their_format_files(tokenizer, tmp_path, name):
    from loratune.data.chat_templates import NAMED
    from loratune.data.chats import chat_segments
    from loratune.data.instructions import format_segments, load_format

    record = {"instruction": "What is the capital of France?", "output": "Paris."}
    messages = [{"role": "user", "content": record["instruction"]}, {"role": "assistant", "content": "Paris."}]
    templates = load_format(name, Workspace.resolve(tmp_path))
    expected = format_segments(record, templates, "r")
    got = chat_segments(messages, tokenizer, "r", NAMED[name])  # renders by appending turns, so it can be masked
    assert "".join(s for s, _ in got) == "".join(s for s, _ in expected) + tokenizer.eos_token
    assert got[0] == expected[0]  # the same prompt text
