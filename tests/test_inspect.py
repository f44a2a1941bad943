"""The data check: counts and lengths from the real builders, the mask view, and each warning on data that has it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from conftest import make_tokenizer
from helpers import sum_records
from helpers import write_jsonl as _jsonl
from loratune.commands.data import render
from loratune.config import DataSpec
from loratune.data.batching import collate
from loratune.data.build import build_samples
from loratune.data.preview import check_data, eos_masked_by_padding, histogram
from loratune.workspace import Workspace

RECORDS = sum_records(range(4), range(3), "Arr! It be {}.")
LONG = {"instruction": "Translate this sentence. " * 12, "output": "Arr, matey!"}
# A chat template that forgets the assistant turns: every response is masked away (only the appended EOS is left).
FORGETFUL = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
)
# A chat template whose text depends on the number of messages: a prompt is not a prefix of its full chat.
COUNTING = "{{ messages | length }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"


def _check(path, tokenizer, home, **kw):
    return check_data(DataSpec(path=str(path), **kw), tokenizer, Workspace.resolve(home))


def test_good_instruction_data_counts_match_the_builder(tmp_path, tokenizer, home):
    path = _jsonl(tmp_path / "sums.jsonl", RECORDS)
    check = _check(path, tokenizer, home)
    samples, report = build_samples(DataSpec(path=str(path)), tokenizer, Workspace.resolve(home))
    assert (check.kind, check.records, check.samples) == ("instruction", 12, 12)
    assert (check.tokens, check.trained_tokens) == (report.tokens, report.trained_tokens)
    assert check.dropped == check.truncated == check.over_cutoff == 0
    assert check.samples_with_eos == 12
    assert sum(b.count for b in check.histogram) == 12 and check.histogram[-1].high == 256
    assert check.warnings == [] and not check.has_problems
    (first, *_) = check.examples
    assert len(check.examples) == 3
    assert "".join(text for text, trained in first if trained) in (
        "Arr! It be 0.<|im_end|>\n",
        "Arr! It be 0.<|im_end|>",
    )
    assert "What is 0 plus 0?" in "".join(text for text, trained in first if not trained)
    assert tokenizer.decode(samples[0].input_ids) == "".join(text for text, _ in first)
    json.dumps(check.to_dict())  # the web UI reads it as JSON


def test_long_samples_are_counted_against_the_cutoff(tmp_path, tokenizer, home):
    check = _check(_jsonl(tmp_path / "d.jsonl", RECORDS + [LONG, LONG]), tokenizer, home, cutoff=64)
    assert check.over_cutoff == 2 and check.dropped_too_long == 2 and check.samples == 12
    over = check.histogram[-1]
    assert over.over_cutoff and over.low == 65 and over.count == 2
    assert any("longer than data.cutoff 64" in w.message and not w.problem for w in check.warnings)
    assert not check.has_problems


def test_everything_too_long_is_a_problem(tmp_path, tokenizer, home):
    check = _check(_jsonl(tmp_path / "d.jsonl", [LONG]), tokenizer, home, cutoff=16)
    assert check.samples == 0 and check.has_problems
    assert any("no sample is left" in w.message for w in check.warnings if w.problem)


def test_template_that_drops_the_response_trains_only_eos(tmp_path, home):
    tok = make_tokenizer(FORGETFUL)
    path = _jsonl(tmp_path / "d.jsonl", RECORDS)
    check = _check(path, tok, home)
    assert check.has_problems and check.samples == 12 and check.trained_tokens == 12
    assert any("train only the EOS token" in w.message and w.problem for w in check.warnings)
    # without the EOS appended nothing at all is trained: every row is dropped
    check = _check(path, tok, home, add_eos=False)
    assert check.dropped_nothing_to_train == 12 and check.samples == 0 and check.has_problems


def test_template_that_does_not_grow_by_appending_is_a_problem(tmp_path, home):
    check = _check(_jsonl(tmp_path / "d.jsonl", RECORDS), make_tokenizer(COUNTING), home)
    assert check.has_problems and check.samples == 0
    assert "does not render this chat by appending turns" in check.warnings[0].message


def test_no_eos_is_a_warning_when_asked_for(tmp_path, tokenizer, home):
    check = _check(_jsonl(tmp_path / "d.jsonl", RECORDS), tokenizer, home, format="alpaca", add_eos=False)
    assert check.samples_with_eos == 0 and not check.has_problems
    assert any("will not learn to stop" in w.message for w in check.warnings)


def test_pad_equal_eos_checks_the_real_collate(tmp_path, home):
    from transformers import DataCollatorForLanguageModeling

    tok = make_tokenizer()
    tok.pad_token = tok.eos_token
    check = _check(_jsonl(tmp_path / "d.jsonl", RECORDS), tok, home)
    assert not check.has_problems, check.warnings  # loratune masks padding by position: EOS stays trained
    samples, _ = build_samples(DataSpec(path=str(tmp_path / "d.jsonl")), tok, Workspace.resolve(home))
    assert not eos_masked_by_padding(samples, tok.pad_token_id, collate)
    # the classic collator masks every pad id in the labels, and with pad == eos that is every EOS
    hf = DataCollatorForLanguageModeling(tok, mlm=False)
    assert eos_masked_by_padding(samples, tok.pad_token_id, lambda s, _: hf([{"input_ids": x.input_ids} for x in s]))


def test_raw_text_blocks_and_eos(tmp_path, tokenizer, home):
    path = tmp_path / "story.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 6 + "\n\n\nArr.", encoding="utf-8")
    check = _check(path, tokenizer, home, cutoff=32, overlap=8, min_chunk=5)
    assert check.kind == "raw text" and check.records == 2
    assert check.dropped_too_short == 1  # "Arr." + EOS is shorter than 5 tokens
    assert check.trained_tokens == check.tokens and all(trained for ex in check.examples for _, trained in ex)
    assert not check.has_problems
    assert any("shorter than data.min_chunk" in w.message for w in check.warnings)
    assert any("no EOS in the trained tokens" in w.message for w in check.warnings)  # it was in the dropped block
    assert _check(path, tokenizer, home, cutoff=32, overlap=8, min_chunk=2).samples_with_eos == 1


def test_histogram_bins():
    bins = histogram([1, 8, 9, 16, 17, 40], 16, bins=2)
    assert [(b.low, b.high, b.count, b.over_cutoff) for b in bins] == [
        (1, 8, 2, False),
        (9, 16, 2, False),
        (17, 40, 2, True),
    ]


def test_render_colours_trained_and_masked(tmp_path, tokenizer, home):
    check = _check(_jsonl(tmp_path / "d.jsonl", RECORDS[:1]), tokenizer, home)
    painted, plain = render(check, color=True), render(check, color=False)
    assert "\033[32mArr! It be 0." in painted and "\033[90m<|im_start|>user" in painted
    assert "\033[" not in plain and "⟦Arr! It be 0." in plain


def _cli(*args, home, tty: bool = False, env: dict | None = None):
    command = [sys.executable, "-m", "loratune.cli", "--home", str(home), "data", "check", *map(str, args)]
    full_env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    if not tty:
        result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=120)
        return result.returncode, result.stdout + result.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=follower, stderr=subprocess.DEVNULL, env=full_env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=120), b"".join(chunks).decode("utf-8")


def test_cli_good_data_in_colour_on_a_terminal(tmp_path, tiny_model, home):
    code, out = _cli(
        _jsonl(tmp_path / "d.jsonl", RECORDS), "--model", tiny_model, "--examples", "1", home=home, tty=True
    )
    assert code == 0, out
    assert "\033[32mArr! It be 0." in out and "ok: no problems" in out and "records 12, samples 12" in out


@pytest.mark.parametrize("tty", [False, True])
def test_cli_broken_data_exits_non_zero_in_plain_text(tmp_path, tiny_model, home, tty):
    path = _jsonl(tmp_path / "d.jsonl", [LONG])
    code, out = _cli(path, "--model", tiny_model, "--cutoff", "16", home=home, tty=tty, env={"NO_COLOR": "1"})
    assert code == 2, out
    assert "PROBLEM: " in out and "1 problem(s)" in out and "\033[" not in out
