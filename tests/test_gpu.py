"""On a CUDA GPU: bf16 training, QLoRA (a 4-bit base through bitsandbytes) and 8-bit AdamW, each on a tiny LLaMA.

Skipped without CUDA (and the bitsandbytes ones without bitsandbytes); `pytest -m gpu` runs only these. Where
bench/gpu_check.py measures speed and memory of the same path (bf16 base, fp32 LoRA), these check that it is right:
the weights have the dtypes the recipe promises, the loss is finite and goes down, and the saved adapter, put on a
freshly loaded base (quantized the same way), gives the logits of the model that was trained.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import sum_records
from loratune import train
from loratune.models.checks import load_adapter
from loratune.models.quant import prepare_for_training
from loratune.models.sources import load_base
from loratune.training.checkpoint import read_state

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

RECORDS = sum_records(range(4), range(4))  # 16 samples: 4 steps an epoch at batch 4
FAST = {
    "adapter.rank": 8,
    "adapter.alpha": 16,
    "adapter.dropout": 0.0,  # the in-memory model and the reloaded one must compute the same thing
    "train.max_steps": 8,
    "train.batch_size": 4,
    "train.micro_batch": 4,
    "train.lr": 1e-2,
    "train.warmup_ratio": 0,
    "train.scheduler": "constant",
    "train.save_every": 4,
}


def trained(tiny_model, data_file, home, name: str, **options):
    """Train 8 steps; the loss must be finite at every step and clearly lower at the end than at the start."""
    result = train(
        model=str(tiny_model), data=str(data_file), name=name, home=home, show_progress=False, **{**FAST, **options}
    )
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-2:]) / 2 < 0.9 * losses[0], f"the loss did not go down: {losses}"
    return result


def assert_reloads_to_the_same_logits(result, tiny_model, quant: str = "none") -> None:
    """The saved adapter on a base loaded as training loaded it gives the trained model's logits; it changes them."""
    base, _ = load_base(tiny_model, "cuda", quant=quant)
    if quant != "none":
        base = prepare_for_training(base)  # as the training run did: fp32 norms around the k-bit layers
    reloaded = load_adapter(base, result.run_dir).eval()
    model = result.model.eval()
    ids = result.tokenizer("What is 1 plus 2?", return_tensors="pt").input_ids.to("cuda")
    with torch.no_grad():
        in_memory = model(input_ids=ids).logits.float()
        again = reloaded(input_ids=ids).logits.float()
        with model.disable_adapter():
            plain = model(input_ids=ids).logits.float()
    torch.testing.assert_close(again, in_memory, rtol=0, atol=1e-3)
    assert (plain - in_memory).abs().max() > 0.1, "the adapter changed nothing"


def weight_dtypes(model) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of the frozen q_proj weight, dtype of the LoRA weights), as bench/gpu_check.py reports them."""
    base = next(p for n, p in model.named_parameters() if "q_proj.base_layer" in n)
    lora = next(p for n, p in model.named_parameters() if "lora_A" in n)
    return base.dtype, lora.dtype


def test_bf16_training_learns_and_reloads(tiny_model, data_file, home):
    result = trained(tiny_model, data_file, home, "bf16")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert weight_dtypes(result.model) == (expected, torch.float32)  # frozen base in bf16, the adapter in fp32
    assert_reloads_to_the_same_logits(result, tiny_model)


def test_qlora_4bit_base_learns_and_reloads(tiny_model, data_file, home):
    bnb = pytest.importorskip("bitsandbytes")
    result = trained(tiny_model, data_file, home, "qlora", **{"model.quant": "4bit"})
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules()), "the base was not quantized"
    assert weight_dtypes(result.model)[1] == torch.float32
    assert_reloads_to_the_same_logits(result, tiny_model, quant="4bit")


def test_adamw_8bit_keeps_8bit_state_learns_and_reloads(tiny_model, data_file, home):
    pytest.importorskip("bitsandbytes")
    # bitsandbytes keeps 32-bit state for tensors under 4096 values: rank 64 makes each 64 x 64 lora_A one of 4096
    result = trained(tiny_model, data_file, home, "adamw8", **{"train.optimizer": "adamw_8bit", "adapter.rank": 64})
    saved = read_state(result.run_dir / "checkpoint-000004")["optimizer"]["state"]  # per parameter: its moments
    moments = [t for per_param in saved.values() for t in per_param.values() if isinstance(t, torch.Tensor)]
    assert any(t.dtype == torch.uint8 for t in moments), "no 8-bit optimizer state in the checkpoint"
    assert_reloads_to_the_same_logits(result, tiny_model)
