"""The loss is taken on response tokens only: prompt positions get exactly zero gradient."""

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from loratune.config import DataSpec
from loratune.data import build_samples, collate
from loratune.data.build import IGNORE
from loratune.training.loss import token_loss_sum
from loratune.workspace import Workspace


def _batch(tmp_path, tokenizer):
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"instruction": "What is the capital of France?", "output": "Paris."}\n'
        '{"instruction": "Translate this sentence.", "input": "one two three", "output": "Arr, one two three!"}\n'
    )
    samples, _ = build_samples(DataSpec(path=str(data)), tokenizer, Workspace.resolve(tmp_path))
    return collate(samples, tokenizer.pad_token_id)


def test_prompt_positions_carry_no_gradient(tiny_model, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = _batch(tmp_path, tokenizer)
    captured = {}

    def keep_output(module, args, output):
        output.retain_grad()
        captured["hidden"] = output

    model.model.norm.register_forward_hook(keep_output)  # last hidden states, one vector per position
    loss, n = token_loss_sum(model, batch)
    loss.backward()
    grad = captured["hidden"].grad.abs().sum(-1)  # (batch, positions)
    predicts_trained = torch.zeros_like(batch["labels"], dtype=torch.bool)
    predicts_trained[:, :-1] = batch["labels"][:, 1:] != IGNORE
    assert n == int(predicts_trained.sum()) > 0
    assert torch.all(grad[~predicts_trained] == 0), "a prompt or padding position received gradient"
    assert torch.all(grad[predicts_trained] > 0)


def test_loss_equals_full_logits_cross_entropy(tiny_model, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = _batch(tmp_path, tokenizer)
    with torch.no_grad():
        loss, n = token_loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reference = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
        )
    assert n == int((batch["labels"][:, 1:] != IGNORE).sum())
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_union_positions_path_gives_the_same_loss(tiny_model, tokenizer, tmp_path, monkeypatch):
    """The fallback for transformers versions without boolean `logits_to_keep` masks."""
    from loratune.training import loss as loss_module

    monkeypatch.setattr(loss_module, "decoder_and_frozen_head", lambda model: None)  # the logits_to_keep paths
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = _batch(tmp_path, tokenizer)
    with torch.no_grad():
        masked, n = token_loss_sum(model, batch)
        monkeypatch.setattr(loss_module, "mask_supported", lambda: False)
        union, m = token_loss_sum(model, batch)
    assert n == m
    torch.testing.assert_close(union, masked, rtol=1e-5, atol=1e-5)
