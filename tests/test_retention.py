"""The retention probe (training/retention.py): KL from the base, the same-answer share, the cache, train.retain."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn.functional as F

from helpers import run_config, sum_records
from loratune import train
from loratune.cli import main
from loratune.config import AdapterSpec, RunConfig
from loratune.errors import LoratuneError
from loratune.prompting import model_contract
from loratune.rundir import read_json, read_metrics, read_retention
from loratune.training.retention import Item, Retention, replay_loss
from loratune.workspace import Workspace

RECORDS = sum_records(range(1, 7), range(1, 4))  # 18 samples


def config(model, data, name="run", **train):
    options = dict(epochs=3, batch_size=4, micro_batch=2, lr=3e-3, save_every=2, seed=3, warmup_ratio=0.1)
    adapter = AdapterSpec(rank=4, alpha=8, dropout=0.1)  # dropout on: the replay's RNG use must resume too
    return run_config(model, data, name, adapter, **{**options, **train})


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def kls(run_dir) -> dict[int, float]:
    return {step: f["retention_kl"] for step, f in read_retention(run_dir).items()}


def peft_model(tiny_model, randomize_b: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    if randomize_b:  # an adapter trained away from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.5)
    return model.eval()


def probe(tiny_model, tokenizer, tmp_path, model, **train) -> Retention:
    cfg = RunConfig()
    cfg.model.source = str(tiny_model)
    cfg.train.retention_tokens = 8
    for k, v in train.items():
        setattr(cfg.train, k, v)
    retention = Retention.prepare(cfg, Workspace.resolve(tmp_path), model_contract(tokenizer), tokenizer)
    retention.answer_as_base(model, tmp_path, True, print)
    retention.answer_probe(model)  # (training leaves it to the first measurement)
    return retention


def test_an_untrained_adapter_keeps_the_base_and_a_trained_one_drifts(tiny_model, tokenizer, tmp_path):
    model = peft_model(tiny_model, randomize_b=False)  # B = 0: the adapter adds nothing
    retention = probe(tiny_model, tokenizer, tmp_path, model)
    assert len(retention.probe) > 80 and any(i.short for i in retention.probe)
    figures = retention.measure(model)
    assert figures["retention_kl"] == pytest.approx(0.0, abs=1e-5)  # the base's side was recorded while generating
    assert figures["retention_same"] == 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = retention.measure(model)
    assert moved["retention_kl"] > 0.01 and moved["retention_same"] < 1.0
    # The full KL over the whole vocabulary, from two forward passes: the measured one is a lower bound (close
    # where the base is confident; this random tiny model spreads its probability thinly).
    total, tokens = 0.0, 0
    with torch.no_grad():
        for item in retention.probe:
            ids = torch.tensor([item.prompt + item.answer])
            answer = slice(len(item.prompt) - 1, ids.shape[1] - 1)
            with model.disable_adapter():
                base = model(input_ids=ids).logits[0, answer].log_softmax(-1)
            tuned = model(input_ids=ids).logits[0, answer].log_softmax(-1)
            total += F.kl_div(tuned, base, log_target=True, reduction="sum").item()
            tokens += len(item.answer)
    assert 0.5 * total / tokens < moved["retention_kl"] <= total / tokens + 1e-5


def test_the_measure_keeps_few_logits_at_once_and_gives_the_same_figures(tiny_model, tokenizer, tmp_path, monkeypatch):
    """A large vocabulary measures in smaller batches (at most LOGIT_FLOATS logits alive): the same KL and agreement."""
    import loratune.training.retention as retention_module

    model = peft_model(tiny_model, randomize_b=True)
    retention = probe(tiny_model, tokenizer, tmp_path, model)
    whole = retention.measure(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(retention_module, "LOGIT_FLOATS", 40 * vocab)  # 40 rows: every batch split by rows
    sizes = []
    real = retention_module.batches
    monkeypatch.setattr(retention_module, "batches", lambda *a: sizes.append(real(*a)) or sizes[-1])
    split = retention.measure(model)
    assert max(sum(len(i.answer) for i in chunk) for chunk in sizes[-1]) <= 40 and len(sizes[-1]) > 3
    assert split["retention_kl"] == pytest.approx(whole["retention_kl"], abs=1e-6)
    assert split["retention_same"] == whole["retention_same"]


def test_retention_grows_as_training_moves_away_and_is_reported(tiny_model, data_file, home, capsys):
    run = train(config(tiny_model, data_file, eval_every=3, lr=1e-2), home=home, data={"eval_split": 0.2})
    rows = [r for r in read_metrics(run.run_dir) if "retention_kl" in r]
    assert run.steps == 12 and [r["step"] for r in rows] == [3, 6, 9, 12]  # 14 samples left to train on
    assert all("eval_loss" in r for r in rows)  # one row per evaluation holds both
    assert 0 < rows[0]["retention_kl"] < rows[-1]["retention_kl"]
    out = capsys.readouterr().out
    assert "eval step 12: loss" in out and "retention KL" in out and "the probe took" in out
    best = read_json(run.run_dir / "best.json")
    assert best["retention_kl"] == next(r["retention_kl"] for r in rows if r["step"] == best["step"])
    card = (run.run_dir / "README.md").read_text(encoding="utf-8")
    assert f"{rows[-1]['retention_kl']:.4f}" in card
    assert read_retention(run.run_dir)[12]["retention_kl"] == rows[-1]["retention_kl"]
    from matplotlib.image import imread

    assert imread(run.run_dir / "loss.png").shape[0] == 650  # the loss panel and the retention panel below it
    capsys.readouterr()
    assert main(["--home", str(home), "loras", "list"]) == 0
    kl = f"retention KL {rows[-1]['retention_kl']:.4f}"
    assert f"loss {run.final_loss:.4f}, {kl}" in capsys.readouterr().out
    from loratune.ui.loras_tab import adapters_table

    table = adapters_table(Workspace.resolve(home))
    assert table["retention (KL, same)"].tolist() == [f"{rows[-1]['retention_kl']:.4f}, 0%"]


def test_the_automatic_probe_size_follows_the_run():
    retention = Retention([([1] * 60, i % 3 == 0) for i in range(93)], [], "", 32, 0, [0])
    retention.fit(0, trained_tokens=36_000, measures=1)  # the demo's size: the fewest items
    assert len(retention.probe) == 32 and retention.probe[0] == ([1] * 60, True)
    big = Retention([([1] * 60, False)] * 93, [], "", 32, 0, [0])
    big.fit(0, trained_tokens=2_000_000, measures=10)  # a long run affords the whole probe
    assert len(big.probe) == 93
    chosen = Retention([([i], False) for i in range(93)], [], "", 32, 0, [0])
    chosen.fit(40, trained_tokens=1, measures=1)
    assert len(chosen.probe) == 40 and chosen.probe[-1][0][0] > 85  # spread over the whole probe


def test_the_base_answers_are_cached_and_reused_on_resume(tiny_model, data_file, home, capsys):
    cached_at = {}  # the base answers the probe when it is first measured (step 4), not before the first step
    watch = lambda row: cached_at.setdefault(row["step"], (home / "loras/straight/retention.json").exists())  # noqa: E731
    straight = train(config(tiny_model, data_file, name="straight", eval_every=4), home=home, on_step=watch)
    assert cached_at[1] is False and cached_at[5] is True
    stop = threading.Event()
    cut = train(
        config(tiny_model, data_file, name="cut", eval_every=4),
        home=home,
        stop=stop,
        on_step=lambda row: row["step"] == 5 and stop.set(),
    )
    assert cut.stopped
    cache = (cut.run_dir / "retention.json").read_bytes()
    capsys.readouterr()
    train(config(tiny_model, data_file, name="cut", eval_every=4, resume=True), home=home)
    out = capsys.readouterr().out
    assert "probe answers from retention.json" in out and "the base model answered" not in out
    assert (cut.run_dir / "retention.json").read_bytes() == cache
    assert kls(cut.run_dir) == pytest.approx(kls(straight.run_dir), abs=1e-5)
    assert sorted(kls(cut.run_dir)) == [4, 8, 12, 15]


def test_replay_loss_and_gradient_equal_a_full_logits_reference(tiny_model, tokenizer, tmp_path):
    model = peft_model(tiny_model, randomize_b=True)
    retention = probe(tiny_model, tokenizer, tmp_path, model, retention=False, retain=1.0)
    items = retention.replay_items(step=3, count=5, seed=0)
    assert len(items) == 5
    trainable = [p for p in model.parameters() if p.requires_grad]

    loss, n = replay_loss(model, items, tokenizer.pad_token_id)
    loss.backward()
    got = [p.grad.clone() for p in trainable]
    model.zero_grad()

    # The reference: each item alone (no padding), the whole logits, torch's own KL.
    reference, tokens = 0.0, 0
    for item in items:
        ids = torch.tensor([item.prompt + item.answer])
        answer = slice(len(item.prompt) - 1, ids.shape[1] - 1)
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=ids).logits[0, answer].log_softmax(-1)
        tuned = model(input_ids=ids).logits[0, answer].log_softmax(-1)
        reference = reference + F.kl_div(tuned, base, log_target=True, reduction="sum")
        tokens += len(item.answer)
    reference.backward()
    assert n == tokens
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-5)
    for g, p in zip(got, trainable, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-6)


def test_resume_is_exact_with_retain_on_and_retain_keeps_the_base(tiny_model, data_file, home):
    straight = train(config(tiny_model, data_file, name="straight", retain=1.0), home=home, show_progress=False)
    stop = threading.Event()
    cut = train(
        config(tiny_model, data_file, name="cut", retain=1.0),
        home=home,
        show_progress=False,
        stop=stop,
        on_step=lambda row: row["step"] == 7 and stop.set(),
    )
    assert cut.stopped
    train(config(tiny_model, data_file, name="cut", retain=1.0, resume=True), home=home, show_progress=False)
    assert losses(cut.run_dir) == pytest.approx(losses(straight.run_dir), abs=1e-5)
    assert kls(cut.run_dir) == pytest.approx(kls(straight.run_dir), abs=1e-5)
    plain = train(config(tiny_model, data_file, name="plain"), home=home, show_progress=False)
    assert losses(plain.run_dir) != pytest.approx(losses(straight.run_dir), abs=1e-5)  # the replay trains
    assert kls(straight.run_dir)[15] < kls(plain.run_dir)[15]


def test_a_users_probe_file_and_turning_it_off(tiny_model, data_file, home, tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("What is 1 plus 1?\n\nName a colour.\n", encoding="utf-8")
    run = train(config(tiny_model, data_file, name="mine", max_steps=2, retention_prompts=str(mine)), home=home)
    cached = json.loads((run.run_dir / "retention.json").read_text(encoding="utf-8"))
    assert len(cached["probe"]) == 2 and read_retention(run.run_dir)[2]["retention_same"] is None
    off = train(config(tiny_model, data_file, name="off", max_steps=2, retention=False), home=home)
    assert not (off.run_dir / "retention.json").exists() and read_retention(off.run_dir) == {}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no prompt key"}\n', encoding="utf-8")
    with pytest.raises(LoratuneError, match="line 1: expected a JSON object"):
        train(config(tiny_model, data_file, name="bad", max_steps=2, retention_prompts=str(bad)), home=home)
    with pytest.raises(LoratuneError, match="no file"):
        train(config(tiny_model, data_file, name="bad", max_steps=2, retention_prompts="nope.jsonl"), home=home)


def test_replay_items_walk_the_replay_set():
    retention = Retention([], [Item([1], [2], False) for _ in range(6)], "", 4, 0, [0])
    for i, item in enumerate(retention.replay):
        item.prompt = [i]
    seen = [i.prompt[0] for step in range(3) for i in retention.replay_items(step, 2, seed=1)]
    assert sorted(seen) == list(range(6))  # three steps of two cover the six items once
