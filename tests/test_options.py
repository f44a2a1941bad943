"""Each option of text-generation-webui's Training tab (and the PEFT variants) changes what it should.

Options with tests elsewhere: data.overlap, data.hard_cut, data.min_chunk, data.add_eos (test_raw_text.py),
train.overwrite, train.save_every, train.max_steps / epochs, batch_size / micro_batch (test_train.py).
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_tokenizer
from helpers import sum_records
from loratune import LoratuneError, train
from loratune.config import DataSpec, TrainSpec, options_table
from loratune.data.build import IGNORE, build_samples
from loratune.data.raw_text import snap_to_newlines
from loratune.training.optim import build_optimizer, lr_factor, warmup_steps
from loratune.workspace import Workspace

RECORDS = sum_records(range(4), range(4))
DATA_FILE = "sums.jsonl"


def _train(model, data, home, name, **groups):
    groups.setdefault("train", {})
    groups["train"] = {"max_steps": 1, "batch_size": 4, "micro_batch": 4, "save_every": 0, **groups["train"]}
    return train(model=str(model), data=str(data), name=name, home=home, show_progress=False, **groups)


def _metrics(run_dir: Path) -> list[dict]:
    """The training rows (the retention probe writes a row of its own at the end)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


# ---------------------------------------------------------------- LoRA shape, copy from, optimizer, clipping, seed


def test_lora_shape_sgd_clipping_and_copy_from(tiny_model, data_file, home):
    """rank/alpha/dropout/targets land in the adapter; sgd + max_grad_norm bound the first update exactly."""
    first = _train(
        tiny_model,
        data_file,
        home,
        "first",
        adapter={"rank": 4, "alpha": 8, "dropout": 0.1, "targets": "q_proj,k_proj"},
        train={"optimizer": "sgd", "lr": 1.0, "max_grad_norm": 1e-3, "scheduler": "constant", "seed": 1},
    )
    saved = json.loads((first.run_dir / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (4, 8, 0.1)
    assert sorted(saved["target_modules"]) == ["k_proj", "q_proj"]
    weights = load_file(first.run_dir / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in weights} == {"q_proj", "k_proj"}
    assert all(w.shape[0] == 4 for k, w in weights.items() if "lora_A" in k)
    # LoRA B starts at zero and A gets no gradient in step 1, so after one plain-SGD step at lr 1 the B weights are
    # exactly minus the clipped gradient: their joint norm is max_grad_norm (AdamW would move each by ~lr instead).
    b_norm = math.sqrt(sum(float(w.pow(2).sum()) for k, w in weights.items() if "lora_B" in k))
    assert b_norm == pytest.approx(1e-3, rel=1e-3)
    assert _metrics(first.run_dir)[0]["lr"] == 1.0  # 'constant' has no warmup

    # copy_from takes the adapter group of 'first' although this run asks for rank 16; another seed, another init
    second = _train(
        tiny_model, data_file, home, "second", adapter={"copy_from": "first", "rank": 16}, train={"seed": 2}
    )
    copied = json.loads((second.run_dir / "adapter_config.json").read_text())
    assert (copied["r"], copied["lora_alpha"], sorted(copied["target_modules"])) == (4, 8, ["k_proj", "q_proj"])
    assert yaml.safe_load((second.run_dir / "loratune.yaml").read_text())["adapter"]["rank"] == 4
    other = load_file(second.run_dir / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_A" in k)
    assert not torch.equal(other[key], weights[key]), "train.seed did not change the LoRA initialisation"
    with pytest.raises(LoratuneError, match="copy_from"):
        _train(tiny_model, data_file, home, "third", adapter={"copy_from": "no-such-lora"})


def test_high_rank_rslora_dora_checkpointing_tensorboard(tiny_model, data_file, home):
    result = _train(
        tiny_model,
        data_file,
        home,
        "variants",
        adapter={"rank": 256, "alpha": 32, "rslora": True, "dora": True},
        train={"gradient_checkpointing": True, "report_to": "tensorboard", "max_steps": 2, "log_every": 1},
    )
    saved = json.loads((result.run_dir / "adapter_config.json").read_text())
    assert saved["r"] == 256 and saved["use_rslora"] and saved["use_dora"]
    lora_layer = result.model.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_layer.scaling["default"] == pytest.approx(32 / math.sqrt(256))  # rsLoRA: alpha / sqrt(r), not / r
    assert any("lora_magnitude_vector" in k for k in load_file(result.run_dir / "adapter_model.safetensors"))

    # gradient checkpointing: each decoder layer runs forward again during backward
    base = result.model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    calls = []
    hook = base.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))  # the replay stops early
    result.model.train()
    ids = torch.tensor([[2, 40, 41, 42, 43, 3]])
    result.model(input_ids=ids, labels=ids).loss.backward()
    hook.remove()
    assert len(calls) == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("retention/kl")] == [2]  # the retention probe at the end
    assert [round(e.value, 4) for e in events.Scalars("train/loss")] == [
        round(r["loss"], 4) for r in _metrics(result.run_dir)
    ]


# ---------------------------------------------------------------- optimizers and schedules (no training needed)


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 4))]


@pytest.mark.parametrize(("name", "cls"), [("adamw_torch", "AdamW"), ("sgd", "SGD"), ("adafactor", "Adafactor")])
def test_optimizer_choice(name, cls):
    optimizer = build_optimizer(_params(), TrainSpec(optimizer=name, lr=0.01, weight_decay=0.1))
    assert type(optimizer).__name__ == cls
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["weight_decay"] == 0.1


def test_adamw_8bit_without_cuda_is_one_clear_line():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may really run it")
    with pytest.raises(LoratuneError, match="adamw_8bit needs a CUDA GPU"):
        build_optimizer(_params(), TrainSpec(optimizer="adamw_8bit"))


def test_weight_decay_shrinks_weights_without_gradient():
    (p,) = _params()
    before = p.detach().clone()
    optimizer = build_optimizer([p], TrainSpec(lr=0.1, weight_decay=0.5))
    p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(p.detach(), before * (1 - 0.1 * 0.5))


def test_schedules():
    total, warm = 100, 10
    kinds = typing.get_args(typing.get_type_hints(TrainSpec)["scheduler"])
    assert len(kinds) == 7
    f = {kind: [lr_factor(s, warm, total, kind) for s in range(total)] for kind in kinds}
    assert f["constant"] == [1.0] * total  # no warmup at all
    assert f["constant_with_warmup"][:warm] == [(s + 1) / (warm + 1) for s in range(warm)]
    assert f["constant_with_warmup"][warm:] == [1.0] * (total - warm)
    for kind in f:
        if kind != "constant":
            assert f[kind][0] < f[kind][warm - 1] < f[kind][warm] == pytest.approx(1.0), kind
    assert f["linear"][55] == pytest.approx(0.5)
    assert f["cosine"][55] == pytest.approx(0.5)
    assert f["polynomial"][55] == pytest.approx(0.25)  # (1 - 0.5) ** 2
    assert lr_factor(55, warm, total, "polynomial", power=1.0) == pytest.approx(f["linear"][55])
    restarts = f["cosine_with_restarts"]  # 3 cycles over 90 steps: back to the peak at steps 40 and 70
    assert restarts[40] == pytest.approx(1.0) and restarts[70] == pytest.approx(1.0) and restarts[39] < 0.01
    assert lr_factor(40, warm, total, "cosine_with_restarts", cycles=1) == pytest.approx(f["cosine"][40])
    assert f["inverse_sqrt"][40] == pytest.approx(1 / math.sqrt(4))  # sqrt(warmup / (step - warmup + warmup))
    assert all(a > b for a, b in zip(f["inverse_sqrt"][warm:], f["inverse_sqrt"][warm + 1 :], strict=False))
    assert warmup_steps(TrainSpec(warmup_steps=7, warmup_ratio=0.5), 100) == 7
    assert warmup_steps(TrainSpec(warmup_ratio=0.25), 100) == 25


# ---------------------------------------------------------------- data options


def _samples(tmp_path, home, tokenizer, records_or_text, **spec):
    if isinstance(records_or_text, str):
        path = tmp_path / "d.txt"
        path.write_text(records_or_text, encoding="utf-8")
    else:
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records_or_text), encoding="utf-8")
    return build_samples(DataSpec(path=str(path), **spec), tokenizer, Workspace.resolve(home))


@pytest.mark.parametrize(("add_bos", "first_is_bos"), [("auto", False), ("always", True), ("never", False)])
def test_add_bos_on_token_ids(tmp_path, home, tokenizer, add_bos, first_is_bos):
    bos = tokenizer.bos_token_id  # this tokenizer adds none by itself, so 'auto' adds none
    (chat,), _ = _samples(tmp_path, home, tokenizer, RECORDS[:1], add_bos=add_bos)
    assert (chat.input_ids[0] == bos) is first_is_bos and chat.input_ids.count(bos) == int(first_is_bos)
    if first_is_bos:
        assert chat.labels[0] == IGNORE
    text = "The quick brown fox jumps over the lazy dog. " * 3
    raw, _ = _samples(tmp_path, home, tokenizer, text, add_bos=add_bos, cutoff=16, overlap=0, min_chunk=1)
    assert all((s.input_ids[0] == bos) is first_is_bos and len(s.input_ids) <= 16 for s in raw)


def test_add_bos_auto_follows_a_tokenizer_that_adds_one(tmp_path, home):
    from tokenizers import processors

    tok = make_tokenizer()
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)]
    )  # LLaMA-2 style: the tokenizer itself puts BOS first
    assert tok("a")["input_ids"][0] == bos
    (auto,), _ = _samples(tmp_path, home, tok, RECORDS[:1])
    (never,), _ = _samples(tmp_path, home, tok, RECORDS[:1], add_bos="never")
    assert auto.input_ids[0] == bos and auto.input_ids[1:] == never.input_ids and bos not in never.input_ids


def test_add_eos_on_token_ids(tmp_path, home):
    tok = make_tokenizer(None)
    eos = tok.eos_token_id
    (on,), _ = _samples(tmp_path, home, tok, RECORDS[:1], format="alpaca")
    (off,), _ = _samples(tmp_path, home, tok, RECORDS[:1], format="alpaca", add_eos=False)
    assert on.input_ids[-1] == eos and on.labels[-1] == eos and on.input_ids[:-1] == off.input_ids
    assert eos not in off.input_ids


def test_train_only_after_marker(tmp_path, home):
    tok = make_tokenizer(None)
    (s,), _ = _samples(tmp_path, home, tok, RECORDS[:1], format="alpaca", train_only_after="### Instruction:")
    trained = tok.decode([label for label in s.labels if label != IGNORE])
    assert trained.startswith("\nWhat is 0 plus 0?") and trained.endswith("Arr, matey! It be 0.<|im_end|>")
    assert "Below is an instruction" not in trained
    # a record without the marker trains nothing and is dropped (and counted)
    with pytest.raises(LoratuneError, match="no usable samples"):
        _samples(tmp_path, home, tok, RECORDS[:2], format="alpaca", train_only_after="### Nowhere:", add_eos=False)


def test_newline_cut_snaps_chunk_edges_to_lines(tmp_path, home, tokenizer):
    lines = "".join(f"Line {n}: the quick brown fox jumps over the lazy dog.\n" for n in range(12))
    plain, _ = _samples(tmp_path, home, tokenizer, lines, cutoff=100, overlap=20, min_chunk=1)
    snapped, _ = _samples(tmp_path, home, tokenizer, lines, cutoff=100, overlap=20, min_chunk=1, newline_cut=80)
    texts = [tokenizer.decode(s.input_ids) for s in snapped]
    assert any(not tokenizer.decode(s.input_ids).startswith("Line") for s in plain[1:])
    # every chunk starts at a line and ends at a line's end (the last holds the document's end: only its EOS here)
    assert all(t.startswith("Line") and t.endswith("\n") for t in texts[:-1]) and texts[-1] == "<|im_end|>"
    assert len(texts) == len(plain)


def test_snap_to_newlines_keeps_document_edges_and_never_empties():
    text = "ab\ncd\nef"
    starts = list(range(len(text)))  # one token per character
    assert snap_to_newlines(text, starts, 0, 8, 5) == (0, 8)  # the whole section: nothing to snap
    assert snap_to_newlines(text, starts, 1, 7, 5) == (3, 6)
    assert snap_to_newlines(text, starts, 2, 3, 5) == (2, 3)


# ---------------------------------------------------------------- the README lists every option


def test_readme_lists_every_option_with_its_default():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## All options\n", 1)[1]
    assert options_table() in section, "README '## All options' is stale: paste the output of python -m loratune.config"
