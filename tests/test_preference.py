"""Preference tuning (train.method dpo / ipo / simpo / orpo): the losses against the papers' formulas computed here
from the model's logits, packed equal to padded, pairs kept whole, exact resume, one-line refusals."""

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
from loratune.training.preference import Options, Pairs, pair_losses, sequence_logps
from loratune.workspace import Workspace

RECORDS = [
    {"instruction": f"What is {a} plus {b}?", "chosen": f"Arr, matey! It be {a + b}.", "rejected": f"It is {a + b}."}
    for a in range(5)
    for b in range(4)
]  # 20 pairs
DATA_FILE = "pairs.jsonl"
OPTIONS = {
    "train.max_steps": 6,
    "train.batch_size": 4,
    "train.micro_batch": 4,
    "train.lr": 5e-3,
    "train.save_every": 2,
    "train.retention": False,
    "adapter.rank": 4,
    "adapter.dropout": 0.1,  # on: a resume must restore the dropout RNG too
}


def run(model, data, home, name, **options):
    return train(model=str(model), data=str(data), name=name, home=home, show_progress=False, **OPTIONS | options)


def rows(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def sequence_logp_by_hand(model, sample) -> tuple[float, int]:
    """log P(trained tokens | the rest), from a plain forward pass of one sample alone."""
    ids = torch.tensor([sample.input_ids])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
    total, count = 0.0, 0
    for p in range(len(sample.input_ids) - 1):
        if sample.labels[p + 1] != -100:
            total += logprobs[p, sample.input_ids[p + 1]].item()
            count += 1
    return total, count


def papers_loss(method: str, c: float, r: float, rc: float, rr: float, nc: int, nr: int) -> float:
    """Each paper's per-pair loss, written from its formula (beta, gamma, lambda: the defaults)."""
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    if method == "dpo":  # Rafailov et al. 2023, eq. 7
        return -math.log(sigmoid(0.1 * ((c - rc) - (r - rr))))
    if method == "ipo":  # Azar et al. 2023, eq. 17, tau = beta
        return ((c - rc) - (r - rr) - 1 / (2 * 0.1)) ** 2
    if method == "simpo":  # Meng et al. 2024, eq. 6
        return -math.log(sigmoid(2.0 / nc * c - 2.0 / nr * r - 1.0))
    pc, pr = math.exp(c / nc), math.exp(r / nr)  # ORPO, Hong et al. 2024, eqs. 4-7
    odds = (pc / (1 - pc)) / (pr / (1 - pr))
    return -c / nc - 0.1 * math.log(sigmoid(math.log(odds)))


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "orpo"])
def test_each_loss_equals_the_papers_formula_on_a_tiny_model(tiny_model, tokenizer, data_file, home, method):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    samples, _ = build_samples(DataSpec(path=str(data_file)), tokenizer, Workspace.resolve(home))
    pairs = Pairs(samples)[:3]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM"))
    model.double().eval()  # float64 throughout: the comparison tests the formulas, not float32 round-off
    flat = [s for p in pairs for s in (p.chosen, p.rejected)]
    with torch.no_grad():
        logps, counts = sequence_logps(model, collate(flat, tokenizer.pad_token_id))
        with model.disable_adapter():
            ref, _ = sequence_logps(model, collate(flat, tokenizer.pad_token_id))
        losses, _, _ = pair_losses(Options.of(TrainSpec(method=method)), logps.view(-1, 2), counts.view(-1, 2),
                                   ref.view(-1, 2))  # fmt: skip
        expected = []
        for pair in pairs:
            (c, nc), (r, nr) = sequence_logp_by_hand(model, pair.chosen), sequence_logp_by_hand(model, pair.rejected)
            with model.disable_adapter():
                rc, _ = sequence_logp_by_hand(model, pair.chosen)
                rr, _ = sequence_logp_by_hand(model, pair.rejected)
            expected.append(papers_loss(method, c, r, rc, rr, nc, nr))
    assert losses.tolist() == pytest.approx(expected, abs=1e-6, rel=1e-6)
    assert len(set(round(x, 6) for x in expected)) == 3  # the pairs differ: not one number three times


def test_dpo_learns_packed_equals_padded_and_the_reference_can_be_precomputed(tiny_model, data_file, home):
    packed = run(tiny_model, data_file, home, "packed", **{"train.method": "dpo", "data.eval_split": 0.2})
    same = {"train.method": "dpo", "adapter.dropout": 0.0}  # dropout masks depend on the tensors' shapes
    padded = run(tiny_model, data_file, home, "padded", **same, **{"train.packing": False})
    first = rows(packed.run_dir)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the adapter starts as the reference (B = 0)
    assert first["reward_margin"] == pytest.approx(0, abs=1e-4)
    last = rows(packed.run_dir)[-1]
    assert last["loss"] < 0.5 * first["loss"] and last["accuracy"] == 1.0 and last["reward_margin"] > 0
    assert (packed.run_dir / "loss.png").stat().st_size > 0
    from loratune.ui.train_view import loss_curve, preference_line

    train_rows = rows(packed.run_dir)
    line = preference_line(train_rows, [])
    assert line.startswith("preference accuracy 1.00 · reward margin") and "rejected" in line
    assert "preference accuracy" in set(loss_curve(train_rows, [])["series"])
    evaluation = [r for r in map(json.loads, (packed.run_dir / "metrics.jsonl").read_text().splitlines())
                  if "eval_accuracy" in r]  # fmt: skip
    assert evaluation and evaluation[-1]["eval_accuracy"] >= 0.75  # 4 held-out pairs
    # without an eval split the steps see other pairs: compare packed and padded on the same data
    packed_all = run(tiny_model, data_file, home, "packed-all", **same)
    assert [r["loss"] for r in rows(packed_all.run_dir)] == pytest.approx(
        [r["loss"] for r in rows(padded.run_dir)], abs=1e-5
    )
    # the reference's log-probs computed once before the first step equal a reference pass in every step
    each = run(tiny_model, data_file, home, "each", **same, **{"train.precompute_reference": False})
    for a, b in zip(rows(packed_all.run_dir), rows(each.run_dir), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["reward_chosen"] == pytest.approx(b["reward_chosen"], abs=1e-5)


def test_dpo_resume_is_exact(tiny_model, data_file, home):
    from test_resume import assert_same_adapter

    straight = run(tiny_model, data_file, home, "straight", **{"train.method": "dpo"})
    stop = threading.Event()  # stopped after step 3, between checkpoints (every 2 steps)
    cut = train(model=str(tiny_model), data=str(data_file), name="cut", home=home, show_progress=False, stop=stop,
                on_step=lambda row: row["step"] == 3 and stop.set(), **OPTIONS | {"train.method": "dpo"})  # fmt: skip
    assert cut.stopped and cut.steps == 3
    resumed = run(tiny_model, data_file, home, "cut", **{"train.method": "dpo", "train.resume": True})
    assert resumed.steps == 6
    assert [r["loss"] for r in rows(cut.run_dir)] == pytest.approx([r["loss"] for r in rows(straight.run_dir)],
                                                                   abs=1e-5)  # fmt: skip
    assert_same_adapter(straight.run_dir, cut.run_dir)
    with pytest.raises(LoratuneError, match="train.method"):  # another method is another run
        run(tiny_model, data_file, home, "cut", **{"train.method": "ipo", "train.resume": True, "train.max_steps": 8})


def test_a_pair_is_kept_or_dropped_whole_and_the_methods_match_their_data(tiny_model, tokenizer, home, tmp_path):
    records = [dict(r) for r in RECORDS[:4]]
    records[1]["rejected"] = "no " * 400  # longer than the cutoff: the whole pair goes, not one side
    records[2]["rejected"] = records[2]["chosen"]  # the same answer twice teaches nothing
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    samples, report = build_samples(DataSpec(path=str(data)), tokenizer, Workspace.resolve(home))
    assert len(samples) == 6 and report.too_long == 1 and report.shapes == {"preference": 4}
    pairs = Pairs(samples)
    assert [tokenizer.decode(p.chosen.input_ids).count("plus 0") for p in pairs] == [1, 0, 0]  # pairs 1, 3, 4 left
    check = check_data(DataSpec(path=str(data)), tokenizer, Workspace.resolve(home))
    messages = " | ".join(w.message for w in check.warnings)
    assert "1 of 3 preference pairs have the same chosen and rejected answer" in messages
    assert "dropped whole" in messages
    with pytest.raises(LoratuneError, match=r"preference records \(chosen / rejected\).*--train.method dpo"):
        run(tiny_model, data, home, "sft")
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "Hi", "output": "Arr!"}] * 3)  # odd: no pairs
    with pytest.raises(LoratuneError, match="train.method dpo needs preference records.*alpaca 3"):
        run(tiny_model, sft_data, home, "dpo", **{"train.method": "dpo"})
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "Hi", "chosen": "Arr!", "rejected": " "}])
    with pytest.raises(LoratuneError, match="record 1: 'rejected' is empty"):
        build_samples(DataSpec(path=str(empty)), tokenizer, Workspace.resolve(home))


def test_chat_pairs_share_the_history(tokenizer, home, tmp_path):
    history = [{"role": "user", "content": "What is 2 plus 2?"}]
    record = {
        "prompt": history,
        "chosen": [{"role": "assistant", "content": "Arr, four!"}],
        "rejected": [{"role": "assistant", "content": "4"}],
    }
    data = write_jsonl(tmp_path / "chat.jsonl", [record])
    samples, _ = build_samples(DataSpec(path=str(data)), tokenizer, Workspace.resolve(home))
    chosen, rejected = Pairs(samples)[0].chosen, Pairs(samples)[0].rejected
    trained = lambda s: tokenizer.decode([t for t, lab in zip(s.input_ids, s.labels, strict=True) if lab != -100])  # noqa: E731
    assert trained(chosen).startswith("Arr, four!") and trained(rejected).startswith("4")
    prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(chosen.input_ids).startswith(prompt)
    assert tokenizer.decode(rejected.input_ids).startswith(prompt)
