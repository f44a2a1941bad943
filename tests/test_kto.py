"""KTO (train.method kto): the loss against the paper's formula computed here from the model's logits, learning on a
tiny model, the label through the samples cache, exact resume, one-line refusals."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from helpers import write_jsonl
from loratune import train
from loratune.config import DataSpec, TrainSpec
from loratune.data import build_samples
from loratune.data.batching import collate
from loratune.data.preview import check_data
from loratune.errors import LoratuneError
from loratune.training.kto import LabelledSamples, kl_sums, kto_losses
from loratune.training.preference import Options, sequence_logps
from loratune.workspace import Workspace
from test_preference import OPTIONS as PAIR_OPTIONS
from test_preference import rows

RECORDS = [
    record
    for a in range(5)
    for b in range(4)
    for record in (
        {"prompt": f"What is {a} plus {b}?", "completion": f"Arr, matey! It be {a + b}.", "label": True},
        {"prompt": f"What is {a} plus {b}?", "completion": f"It is {a + b}.", "label": False},
    )
]  # 40 records, desirable and undesirable in turn
DATA_FILE = "kto.jsonl"
OPTIONS = PAIR_OPTIONS | {"train.method": "kto"}


def run(model, data, home, name, **options):
    return train(model=str(model), data=str(data), name=name, home=home, show_progress=False, **OPTIONS | options)


def logp_by_hand(model, ids: list[int], labels: list[int]) -> float:
    """log P(trained tokens | the rest), from a plain forward pass of one sequence alone."""
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
    return sum(logprobs[p, ids[p + 1]].item() for p in range(len(ids) - 1) if labels[p + 1] != -100)


def prompt_and_completion(sample) -> tuple[list[int], list[int]]:
    """The sample's prompt tokens (masked) and its completion's (from the first trained token on)."""
    first = next(i for i, label in enumerate(sample.labels) if label != -100)
    return sample.input_ids[:first], sample.input_ids[first:]


def test_the_loss_equals_the_papers_formula_on_a_tiny_model(tiny_model, tokenizer, data_file, home):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    samples, _ = build_samples(DataSpec(path=str(data_file)), tokenizer, Workspace.resolve(home))
    items = LabelledSamples(samples).subset([0, 1, 2, 3, 5])  # the last two undesirable: unequal classes
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(3)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM"))
    model.double().eval()  # float64 throughout: the comparison tests the formula, not float32 round-off
    options = Options.of(TrainSpec(method="kto", kto_desirable_weight=1.5, kto_undesirable_weight=0.7))
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        sums = kl_sums(model, list(items), None, 2, pad, 0, "cpu")  # in passes of 2 samples
        own = collate([item.sample for item in items], pad)
        logps, _ = sequence_logps(model, own)
        with model.disable_adapter():
            ref, _ = sequence_logps(model, own)
        desirable = torch.tensor([item.desirable for item in items])

        # Ethayarajh et al. 2024, eq. 8, and its KL estimate from mismatched pairs, as TRL makes them: (x_i, y_{i-1})
        def log_ratio(ids, labels):
            policy = logp_by_hand(model, ids, labels)
            with model.disable_adapter():
                return policy - logp_by_hand(model, ids, labels)

        mean = 0.0
        for i, item in enumerate(items):
            prompt, _ = prompt_and_completion(item.sample)
            before = items[i - 1].sample  # the first item's completion is the last's
            _, completion = prompt_and_completion(before)
            ids = (prompt + completion)[: max(len(item.sample.input_ids), len(before.input_ids))]  # cut as built
            mean += log_ratio(ids, [-100] * len(prompt) + ids[len(prompt) :]) / len(items)
        assert sums[0].item() / sums[1].item() == pytest.approx(mean, abs=1e-6)
        sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        rewards = [log_ratio(item.sample.input_ids, item.sample.labels) for item in items]
        for z in (max(0.0, mean), abs(mean) + 0.5):  # the estimate clamped at 0, and a KL that is not 0
            losses, _ = kto_losses(options, logps, ref, z, desirable)
            expected = [
                1.5 * (1 - sigmoid(0.1 * (r - z))) if item.desirable else 0.7 * (1 - sigmoid(0.1 * (z - r)))
                for item, r in zip(items, rewards, strict=True)
            ]
            assert losses.tolist() == pytest.approx(expected, abs=1e-6, rel=1e-6)
            assert len(set(round(x, 6) for x in expected)) == len(items)
        one_class, _ = kto_losses(options, logps[:3], ref[:3], z, desirable[:3])  # all desirable: a batch like any
        assert one_class.tolist() == pytest.approx(expected[:3], abs=1e-6)


def test_kto_learns_and_the_reference_can_be_precomputed(tiny_model, data_file, home):
    learned = run(tiny_model, data_file, home, "learned", **{"data.eval_split": 0.2})
    first, last = rows(learned.run_dir)[0], rows(learned.run_dir)[-1]
    assert first["loss"] == pytest.approx(0.5, abs=1e-4)  # the adapter starts as the reference: r = z = 0
    assert first["reward_margin"] == pytest.approx(0, abs=1e-4) and first["kl"] == pytest.approx(0, abs=1e-4)
    assert last["reward_chosen"] > 0 > last["reward_rejected"] and last["loss"] < 0.5 * first["loss"]
    evaluation = [r for r in map(json.loads, (learned.run_dir / "metrics.jsonl").read_text().splitlines())
                  if "eval_loss" in r]  # fmt: skip
    assert evaluation[-1]["eval_margin"] > 0 and evaluation[-1]["eval_loss"] < 0.25  # 8 held-out samples
    assert (learned.run_dir / "loss.png").stat().st_size > 0
    from loratune.ui.train_view import preference_line

    line = preference_line(rows(learned.run_dir), [])
    assert line.startswith("reward margin") and "rejected" in line and "KL estimate" in line
    # the reference's log-probs computed once before the first step equal a reference pass in every step; z_ref is
    # the whole step's, so padded passes of 2 samples give what packed passes of 4 do
    same = {"adapter.dropout": 0.0}
    precomputed = run(tiny_model, data_file, home, "precomputed", **same)
    each = run(tiny_model, data_file, home, "each", **same, **{"train.precompute_reference": False})
    padded = run(tiny_model, data_file, home, "padded", **same, **{"train.packing": False, "train.micro_batch": 2})
    for other in (each, padded):
        for a, b in zip(rows(precomputed.run_dir), rows(other.run_dir), strict=True):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["kl"] == pytest.approx(b["kl"], abs=1e-5)


def test_kto_resume_is_exact(tiny_model, data_file, home):
    from test_resume import assert_same_adapter

    straight = run(tiny_model, data_file, home, "straight")
    stop = threading.Event()  # stopped after step 3, between checkpoints (every 2 steps)
    cut = train(model=str(tiny_model), data=str(data_file), name="cut", home=home, show_progress=False, stop=stop,
                on_step=lambda row: row["step"] == 3 and stop.set(), **OPTIONS)  # fmt: skip
    assert cut.stopped and cut.steps == 3
    resumed = run(tiny_model, data_file, home, "cut", **{"train.resume": True})
    assert resumed.steps == 6
    assert [r["loss"] for r in rows(cut.run_dir)] == pytest.approx([r["loss"] for r in rows(straight.run_dir)],
                                                                   abs=1e-5)  # fmt: skip
    assert_same_adapter(straight.run_dir, cut.run_dir)


def test_the_label_survives_the_cache_and_the_data_check_counts_it(tokenizer, home, tmp_path):
    turns = [("user", "Hi"), ("assistant", "Ahoy"), ("user", "2+2?")]
    history = [{"role": role, "content": content} for role, content in turns]
    records = [
        {"prompt": "What is 1 plus 1?", "completion": "Arr, two!", "label": True},
        {"prompt": history, "completion": [{"role": "assistant", "content": "Four."}], "label": "false"},  # CSV-like
        {"prompt": "What is 2 plus 2?", "completion": "Arr, four!", "label": 1},
    ]
    data = write_jsonl(tmp_path / "kto.jsonl", records)
    spec, ws = DataSpec(path=str(data)), Workspace.resolve(home)
    fresh, report = build_samples(spec, tokenizer, ws)
    cached, again = build_samples(spec, tokenizer, ws)
    assert not report.cached and again.cached and report.shapes == {"kto": 3}
    assert [s.desirable for s in fresh] == [s.desirable for s in cached] == [True, False, True]
    chat = cached[1]
    trained = tokenizer.decode([t for t, lab in zip(chat.input_ids, chat.labels, strict=True) if lab != -100])
    assert trained.startswith("Four.") and "Ahoy" not in trained  # the prompt's assistant turn is masked too
    check = check_data(spec, tokenizer, ws)
    assert check.labels == {"desirable": 2, "undesirable": 1}
    assert check.example_labels == ["desirable", "undesirable", "desirable"]
    from loratune.commands.data import render

    assert "labels: desirable 2, undesirable 1" in render(check, False) and "#2 (undesirable) " in render(check, False)


def test_refusals_in_one_line_and_one_class_trains(tiny_model, tokenizer, home, tmp_path):
    kto_data = write_jsonl(tmp_path / "kto.jsonl", RECORDS[:8])
    with pytest.raises(LoratuneError, match=r"8 labelled records .*--train.method kto; supervised fine-tuning would"):
        run(tiny_model, kto_data, home, "sft", **{"train.method": "sft"})
    with pytest.raises(LoratuneError, match="train.method dpo needs preference records.*kto 8; labelled records"):
        run(tiny_model, kto_data, home, "dpo", **{"train.method": "dpo"})
    unlabelled = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Hi", "completion": "Arr!"}] * 3)
    with pytest.raises(LoratuneError, match=r"train.method kto needs labelled records \(prompt, completion, label"):
        run(tiny_model, unlabelled, home, "unlabelled")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Arr!", "rejected": "Hello."}] * 2)
    with pytest.raises(LoratuneError, match="kto needs labelled records.*preference 2; pairs train with"):
        run(tiny_model, pairs, home, "pairs")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hi", "completion": "Arr!", "label": "maybe"}])
    with pytest.raises(LoratuneError, match="record 1: 'label' must be true .* got 'maybe'"):
        build_samples(DataSpec(path=str(bad)), tokenizer, Workspace.resolve(home))
    good_only = write_jsonl(tmp_path / "good.jsonl", [r for r in RECORDS[:8] if r["label"]])
    check = check_data(DataSpec(path=str(good_only)), tokenizer, Workspace.resolve(home))
    assert any("all 4 labelled samples are desirable" in w.message and not w.problem for w in check.warnings)
    result = run(tiny_model, good_only, home, "good-only", **{"train.max_steps": 2, "train.save_every": 0})
    assert result.steps == 2 and all("reward_rejected" not in r and "reward_chosen" in r for r in rows(result.run_dir))
