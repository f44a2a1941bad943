"""The memory estimate: exact parameter and LoRA counts from config alone, sane growth, the budget search, the CLI."""

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import make_tokenizer
from loratune import LoratuneError
from loratune.cli import main
from loratune.models.estimate import GB, estimate, largest_fit, parse_size, shape_of
from loratune.models.families import resolve_targets
from test_families import tiny_config


@pytest.mark.parametrize("model_type", ["llama", "gemma", "phi3", "opt", "gpt2", "gpt_neox", "rwkv", "glm4"])
@pytest.mark.parametrize("targets", ["attention", "attention+mlp", "all-linear"])
def test_counts_from_config_equal_the_real_model(model_type, targets):
    config = tiny_config(model_type, make_tokenizer())
    shape = shape_of(config, rank=4, targets=targets)
    model = AutoModelForCausalLM.from_config(config)
    assert shape.params == sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=resolve_targets(model, targets)))
    assert shape.lora == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert shape.layers == 2


def test_logits_of_a_chunked_head_are_one_chunk():
    """The families whose head training projects in chunks (training/loss.py) count one chunk of logits, not all."""
    from loratune.models.families import HEAD_CHUNK
    from loratune.training.loss import CHUNK

    assert HEAD_CHUNK == CHUNK
    chunked = shape_of(tiny_config("llama", make_tokenizer()), rank=4, targets="attention")
    whole = shape_of(tiny_config("gemma", make_tokenizer()), rank=4, targets="attention")  # soft-capped, scaled head
    assert chunked.chunked_head and not whole.chunked_head
    rows = 8 * 511
    assert estimate(chunked, 8, 512).logits == HEAD_CHUNK * chunked.vocab * 4 + rows * chunked.hidden * 4
    assert estimate(whole, 8, 512).logits == 3 * rows * whole.vocab * 4


@pytest.fixture(scope="module")
def shape():
    return shape_of(tiny_config("llama", make_tokenizer()), rank=8, targets="attention+mlp")


def test_memory_grows_with_micro_batch_cutoff_and_rank(shape):
    totals = [estimate(shape, b, 256).total for b in (1, 2, 4, 8)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    totals = [estimate(shape, 4, t).total for t in (64, 128, 256, 512)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    big = shape_of(tiny_config("llama", make_tokenizer()), rank=64, targets="attention+mlp")
    assert estimate(big, 4, 256).lora_and_optimizer > estimate(shape, 4, 256).lora_and_optimizer


def test_quantized_weights_are_smaller_and_checkpointing_saves_activations(shape):
    fp32 = estimate(shape, 4, 256, device="cpu")
    bf16 = estimate(shape, 4, 256, device="cuda")
    nf4 = estimate(shape, 4, 256, device="cuda", quant="4bit")
    assert nf4.weights < bf16.weights < fp32.weights
    assert nf4.activations < bf16.activations  # gradient checkpointing comes with quantization
    assert "gradient checkpointing" in nf4.assumptions


def test_largest_fit_is_the_boundary(shape):
    budget = estimate(shape, 6, 256).total + 1
    batch, cutoff = largest_fit(shape, budget, micro_batch=2, cutoff=256)
    assert batch == 6
    assert estimate(shape, 2, cutoff).total <= budget < estimate(shape, 2, cutoff + 1).total
    assert largest_fit(shape, 1024, 2, 256) == (0, 0)  # 1 KB fits nothing


def test_sizes_parse():
    assert parse_size("8GB") == 8 * GB and parse_size("512 MiB") == 512 * 1024**2 and parse_size("1.5") == int(1.5 * GB)
    with pytest.raises(LoratuneError, match="write it like 8GB"):
        parse_size("lots")


def test_cli_prints_the_parts_and_what_fits(tiny_model, home, capsys):
    args = ["--home", str(home), "estimate", "--model", str(tiny_model), "--micro-batch", "2", "--cutoff", "128"]
    assert main([*args, "--rank", "8", "--budget", "1GB"]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "LoRA + grads + AdamW state", "activations", "logits", "runtime", "total"):
        assert part in out
    assert "budget 1.00 GB: this configuration fits" in out and "largest micro-batch at cutoff 128:" in out


def test_cli_refusals_are_one_line(tiny_model, home, capsys):
    assert main(["--home", str(home), "estimate", "--model", "Qwen/Qwen2.5-0.5B"]) == 1  # offline in tests
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert main(["--home", str(home), "estimate", "--model", str(tiny_model), "--quant", "4bit"]) == 1
    assert capsys.readouterr().err.strip() == (
        "loratune: error: model.quant 4bit runs only on CUDA GPUs; estimate for device cuda or model.quant none"
    )


def test_a_run_that_cannot_fit_is_refused_before_loading_and_writes_nothing(tiny_model, home, tmp_path):
    """The run's own estimate against the machine's free RAM: one line with both figures and the ways out."""
    import json
    import subprocess
    import sys

    from loratune.config import RunConfig, from_dict
    from loratune.models.fit import check_fits, free_memory, run_estimate

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi", "output": "Arr"}) + "\n")
    rank = 1 << 24  # ~130 GB of LoRA weights, gradients and AdamW state on the tiny model
    command = [sys.executable, "-m", "loratune.cli", "--home", str(home), "train", "--model", str(tiny_model)]
    command += ["--data", str(data), "--name", "huge", f"--adapter.rank={rank}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("loratune: error: this run needs about ")
    assert "of available RAM" in line and "train.memory_check false" in line and f"adapter.rank ({rank})" in line
    assert not (home / "loras" / "huge").exists()

    options = {"adapter": {"rank": rank}, "data": {"path": str(data)}}
    config = from_dict(RunConfig, options)
    need = run_estimate(config, tiny_model, "cpu").total
    assert need > free_memory("cpu") and f"{need / GB:.2f} GB" in line  # the figure `loratune estimate` prints
    check_fits(from_dict(RunConfig, {**options, "train": {"memory_check": False}}), tiny_model, "cpu")  # let through
