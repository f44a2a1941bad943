"""GPU check of the training path (bf16 base, fp32 adapter) on models built from config with random weights.

Weights do not change speed or memory, so a random SmolLM2-135M and a random Qwen2.5-0.5B shape stand in for the real
ones on a machine that cannot download them. Usage: python bench/gpu_check.py <folder with tokenizer + config.json>
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from loratune import RunConfig, train
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

DATA = Path(__file__).resolve().parents[1] / "examples/demo/pirate.jsonl"


def build(folder: Path, config, tokenizer_dir: Path) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def main(tokenizer_dir: str) -> None:
    tok_dir = Path(tokenizer_dir)
    home = Path(tempfile.mkdtemp())
    shapes = {
        "SmolLM2-135M (random)": AutoConfig.from_pretrained(tok_dir),
        "Qwen2.5-0.5B shape (random)": Qwen2Config(
            vocab_size=49152,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        ),
    }
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16: {torch.cuda.is_bf16_supported()}")
    for label, config in shapes.items():
        model_dir = build(home / label.split()[0], config, tok_dir)
        for micro in (4, 16):
            torch.cuda.reset_peak_memory_stats()
            name = f"{label.split()[0]}-mb{micro}"
            run = RunConfig(
                name=name,
                model=ModelSpec(source=str(model_dir)),
                adapter=AdapterSpec(),
                data=DataSpec(path=str(DATA)),
                train=TrainSpec(epochs=2, batch_size=16, micro_batch=micro, save_every=0),
            )
            result = train(run, home=home, show_progress=False)
            rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
            steady = rows[3:]  # skip warm-up steps (CUDA kernels, allocator)
            tps = sorted(r["tokens_per_s"] for r in steady)[len(steady) // 2]
            dtype = next(p for n, p in result.model.named_parameters() if "q_proj.base_layer" in n).dtype
            lora_dtype = next(p for n, p in result.model.named_parameters() if "lora_A" in n).dtype
            print(
                f"{label:30s} micro-batch {micro:2d}: {result.steps} steps in {result.seconds:5.1f}s, "
                f"median {tps:8.0f} tokens/s, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}, "
                f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, base {dtype}, lora {lora_dtype}"
            )
            del result
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1])
