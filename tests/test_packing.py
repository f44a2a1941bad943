"""Padding-free packing: packed rows give the same logits, loss and gradients as padded rows; no cross-sample attention;
exact resume with packing on."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from loratune import train
from loratune.config import AdapterSpec, DataSpec, ModelSpec, RunConfig, TrainSpec
from loratune.data import build_samples
from loratune.data.batching import collate, collate_packed, micro_batches, pack_rows
from loratune.data.build import IGNORE
from loratune.training.loss import token_loss_sum
from loratune.training.packing import equal_length_runs, use_packed_attention
from loratune.workspace import Workspace

RECORDS = [
    {"instruction": "What is the capital of France?", "output": "Paris."},
    {
        "instruction": "Translate this sentence.",
        "input": "one two three four five six",
        "output": "Arr, one two three!",
    },
    {"instruction": "Hi", "output": "Arr, matey! The quick brown fox jumps over the lazy dog."},
    {"instruction": "Count.", "output": "One two three four five six seven eight nine ten."},
]


@pytest.fixture(scope="module")
def samples(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("packing-data")
    data = folder / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    found, _ = build_samples(DataSpec(path=str(data)), tokenizer, Workspace.resolve(folder))
    assert len({len(s.input_ids) for s in found}) > 1  # varied lengths, so padding would happen
    return found


@pytest.fixture(scope="module")
def model(tiny_model):
    m = AutoModelForCausalLM.from_pretrained(tiny_model)
    use_packed_attention(m)
    return m.eval()


def packed_logits(model, samples):
    batch = collate_packed(samples)
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], packed_bounds=batch["packed_bounds"]
    )
    return [logits.logits[0, s:e] for s, e in batch["packed_bounds"]]


def packed_logits_equal_padded(model, samples, pad_id) -> list:
    """Each sample's logits from one packed row, checked against the same samples in padded rows."""
    padded = collate(samples, pad_id)
    with torch.no_grad():
        reference = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        packed = packed_logits(model, samples)
    for row, (s, got) in enumerate(zip(samples, packed, strict=True)):
        torch.testing.assert_close(got, reference[row, : len(s.input_ids)], rtol=1e-5, atol=1e-5)
    return packed


def test_packed_logits_equal_padded_logits(model, samples, tokenizer):
    packed_logits_equal_padded(model, samples, tokenizer.pad_token_id)


def test_packed_logits_equal_transformers_block_mask(model, samples):
    """The per-sample attention equals transformers' own packed path (block-diagonal mask from the position ids)."""
    batch = collate_packed(samples)
    with torch.no_grad():
        ours = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], packed_bounds=batch["packed_bounds"]
        )
        # No bounds: stock SDPA with the mask transformers builds from the position ids (only without a KV cache).
        stock = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    torch.testing.assert_close(ours.logits, stock.logits, rtol=1e-5, atol=1e-5)


def test_no_attention_across_samples(model, samples):
    """Changing every token of the first sample leaves the logits of the samples after it unchanged."""
    other = [type(samples[0])([(t + 7) % 250 + 4 for t in samples[0].input_ids], samples[0].labels)] + samples[1:]
    with torch.no_grad():
        before, after = packed_logits(model, samples), packed_logits(model, other)
    assert not torch.allclose(before[0], after[0])
    for a, b in zip(before[1:], after[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_runs_of_equal_length_attend_in_one_batched_call_and_only_to_themselves(model, samples, tokenizer):
    """Raw text in full windows packs samples of one length: those runs take one batched call, same logits."""
    first, second = samples[0], samples[1]
    twin = type(first)([(t + 7) % 250 + 4 for t in first.input_ids], first.labels)  # same length, other tokens
    equal = [first, twin, first, second, second]
    bounds = collate_packed(equal)["packed_bounds"]
    n0, n1 = len(first.input_ids), len(second.input_ids)
    assert equal_length_runs(bounds) == [(0, 3 * n0, 3), (3 * n0, 3 * n0 + 2 * n1, 2)]
    packed = packed_logits_equal_padded(model, equal, tokenizer.pad_token_id)
    assert not torch.allclose(packed[0], packed[1])  # the twin attends to its own tokens only
    torch.testing.assert_close(packed[0], packed[2], rtol=1e-5, atol=1e-5)


def test_packed_loss_and_gradients_equal_padded(tiny_model, samples, tokenizer):
    from peft import LoraConfig, get_peft_model

    def loss_and_grads(packing: bool):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        m = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        use_packed_attention(m)
        passes, _ = micro_batches(samples, 2, tokenizer.pad_token_id, packed_tokens=10_000 if packing else 0)
        assert len(passes) == (1 if packing else 2)
        total, count = 0.0, 0
        for batch in passes:
            loss, n = token_loss_sum(m, batch)
            loss.backward()
            total, count = total + loss.item(), count + n
        grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}
        return total, count, grads

    loss_p, n_p, grads_p = loss_and_grads(True)
    loss_u, n_u, grads_u = loss_and_grads(False)
    assert n_p == n_u == sum(sum(1 for x in s.labels[1:] if x != IGNORE) for s in samples)
    assert loss_p == pytest.approx(loss_u, rel=1e-5)
    for name in grads_u:
        scale = grads_u[name].abs().max().item()  # float32 summation order differs: compare at the gradient's scale
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-4, atol=1e-5 * scale)


def test_chunked_head_loss_equals_full_logits(tiny_model, samples, tokenizer, monkeypatch):
    """The chunked LM-head cross-entropy: same loss and LoRA gradients as full logits + cross_entropy."""
    from peft import LoraConfig, get_peft_model

    from loratune.training import loss as loss_module

    monkeypatch.setattr(loss_module, "CHUNK", 7)  # several chunks, the last one partial
    batch = collate_packed(samples)

    def loss_and_grads(chunked: bool):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        m = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        use_packed_attention(m)
        assert loss_module.decoder_and_frozen_head(m) is not None
        if chunked:
            loss, _ = token_loss_sum(m, batch)
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = m(**inputs).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], reduction="sum")
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}

    (loss_c, grads_c), (loss_f, grads_f) = loss_and_grads(True), loss_and_grads(False)
    assert loss_c == pytest.approx(loss_f, rel=1e-5)
    for name in grads_f:
        scale = grads_f[name].abs().max().item()
        torch.testing.assert_close(grads_c[name], grads_f[name], rtol=1e-4, atol=1e-5 * scale)


def test_pack_rows_keeps_order_and_budget(samples):
    lengths = [len(s.input_ids) for s in samples]
    budget = max(lengths) + min(lengths)
    rows = pack_rows(samples, budget)
    assert [s for row in rows for s in row] == samples
    assert all(sum(len(s.input_ids) for s in row) <= budget for row in rows)
    batch = collate_packed(samples)
    first_tokens = [s for s, _ in batch["packed_bounds"]]
    assert all(batch["labels"][0, i] == IGNORE for i in first_tokens)  # never predicted across a boundary
    assert all(batch["position_ids"][0, i] == 0 for i in first_tokens)


def test_resume_with_packing_continues_exactly(tiny_model, home, tmp_path):
    """N steps straight == k steps, then resume from checkpoint-k, with several samples per packed row."""
    data = tmp_path / "d.jsonl"
    records = [r | {"output": r["output"] * (1 + i % 3)} for i, r in enumerate(RECORDS * 6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))

    def config(name, resume=False):
        spec = TrainSpec(epochs=3, batch_size=8, micro_batch=2, save_every=3, lr=3e-3, packing=True, resume=resume)
        return RunConfig(
            name=name,
            model=ModelSpec(source=str(tiny_model)),
            adapter=AdapterSpec(rank=8, alpha=16, dropout=0.0),
            data=DataSpec(path=str(data), cutoff=96),
            train=spec,
        )

    straight = train(config("straight"), home=home, show_progress=False)
    cut = home / "loras" / "cut"
    shutil.copytree(straight.run_dir / "checkpoint-000006", cut / "checkpoint-000006")
    rows = [json.loads(line) for line in (straight.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]  # the training rows (the retention probe adds one at the end)
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    resumed = train(config("cut", resume=True), home=home, show_progress=False)
    assert resumed.steps == straight.steps == 9
    got = [json.loads(line).get("loss") for line in (cut / "metrics.jsonl").read_text().splitlines()]
    got = [loss for loss in got if loss is not None]
    assert got == pytest.approx([r["loss"] for r in rows], abs=1e-5)
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(cut / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_low_memory_trains_the_same_adapter_in_smaller_checkpointed_passes(tiny_model, home, tmp_path, monkeypatch):
    """train.low_memory: activation checkpointing, one cutoff of tokens per pass; the same steps, losses and adapter."""
    import loratune.training.loop as loop

    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps(r | {"output": r["output"] * (1 + i % 3)}) + "\n" for i, r in enumerate(RECORDS * 4))
    )
    passes = []
    real = loop.micro_batches
    monkeypatch.setattr(loop, "micro_batches", lambda *a, **k: passes.append(real(*a, **k)) or passes[-1])

    def run(name, low_memory):
        spec = TrainSpec(max_steps=3, batch_size=8, micro_batch=4, lr=3e-3, low_memory=low_memory, retention=False)
        config = RunConfig(
            name=name,
            model=ModelSpec(source=str(tiny_model)),
            adapter=AdapterSpec(rank=8, alpha=16, dropout=0.0),  # masks drawn per pass differ with the passes
            data=DataSpec(path=str(data), cutoff=96),
            train=spec,
        )
        assert config.packed_tokens() == (96 if low_memory else 4 * 96) and config.checkpointing() == low_memory
        passes.clear()
        result = train(config, home=home, show_progress=False)
        base = result.model.get_base_model()
        assert bool(getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing) == low_memory
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        widest = max(t["input_ids"].shape[1] for p, _ in passes for t in p)
        return [r["loss"] for r in rows if "loss" in r], load_file(result.run_dir / "adapter_model.safetensors"), widest

    losses, adapter, widest = run("default", False)
    small_losses, small_adapter, small_widest = run("small", True)
    assert small_widest <= 96 < widest
    assert small_losses == pytest.approx(losses, abs=1e-5)
    for key in adapter:
        torch.testing.assert_close(small_adapter[key], adapter[key], rtol=0, atol=1e-5)
