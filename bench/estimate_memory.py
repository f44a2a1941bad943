"""Estimate vs measured: peak memory of real CPU training runs against `loratune estimate` (models/estimate.py).

Each configuration trains 4 optimizer steps through the real CLI in its own process, on raw text cut into full
`cutoff`-token windows (every position trained: the estimate's assumption), with micro-batch = batch size; the peak
resident set size of that process (os.wait4's ru_maxrss, taken by a fresh launcher process) is compared with the
estimate. Run it alone on the machine:

    .venv/bin/python bench/estimate_memory.py [--home bench-home]   # on an otherwise idle machine
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from loratune.models.estimate import GB, estimate, load_config, shape_of
from loratune.models.sources import DEFAULT_NAME, resolve_model_path
from loratune.workspace import Workspace

# (label, model: 'default' or a config to build, rank, cutoff, micro-batch)
CONFIGS = [
    ("tiny LLaMA (h 64, 2 layers)", "tiny", 8, 128, 4),
    ("SmolLM2-135M", "default", 8, 128, 1),
    ("SmolLM2-135M", "default", 32, 256, 4),
    ("SmolLM2-135M", "default", 16, 512, 8),
    ("GPT-2 shape (h 768, 6 layers), random", "gpt2", 16, 256, 4),
]
SENTENCES = [
    "The harbour master counted {n} ships before the storm came in from the west.",
    "Sentence {n}: a lighthouse keeper wrote letters to the sea, and the sea never answered.",
    "On day {n} the crew mended the sails, sang old songs and dreamed of distant islands.",
]


def build(kind: str, ws: Workspace) -> Path:
    """The default model (converted once), or a random model of that shape with SmolLM2's tokenizer."""
    default = resolve_model_path("default", ws)
    if kind == "default":
        return default
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

    folder = ws.models / f"bench-{kind}"
    if not (folder / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(default)
        ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        if kind == "tiny":
            sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
            config = LlamaConfig(**sizes, **ids)
        else:
            config = GPT2Config(n_embd=768, n_layer=6, n_head=12, n_positions=1024, **ids)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


TARGETS = "attention"  # the preset the README table was measured with


# Linux carries a process's peak RSS across fork and exec, so a child forked from this (large) process would report
# at least our own peak; a small launcher forks the training process from a fresh interpreter and reports its peak.
LAUNCHER = (
    "import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "_, status, usage = os.wait4(child.pid, 0); print(usage.ru_maxrss); sys.exit(os.waitstatus_to_exitcode(status))"
)


def measure(model: Path, data: Path, home: Path, rank: int, cutoff: int, micro: int) -> int:
    """Peak RSS in bytes of one real training run in its own process."""
    args = [sys.executable, "-m", "loratune.cli", "--home", str(home), "train", "--model", str(model)]
    args += ["--data", str(data), "--name", "bench", "--overwrite", "--adapter.rank", str(rank)]
    args += ["--data.cutoff", str(cutoff), "--data.overlap", "0", "--train.micro_batch", str(micro)]
    args += ["--train.batch_size", str(micro), "--train.max_steps", "4", "--train.save_every", "0"]
    args += ["--adapter.targets", TARGETS]
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training failed: {' '.join(args)}\n{done.stderr}")
    return int(done.stdout.split()[-1]) * 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="bench-home", help="workspace (the default model is converted into it)")
    args = parser.parse_args()
    ws = Workspace.resolve(args.home)
    data = ws.datasets / "bench-text.txt"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(" ".join(SENTENCES[n % 3].format(n=n) for n in range(3000)), encoding="utf-8")

    print("| model | rank | cutoff | micro-batch | estimate (GB) | measured peak RSS (GB) | estimate / measured |")
    print("|---|---|---|---|---|---|---|")
    for label, kind, rank, cutoff, micro in CONFIGS:
        model = build(kind, ws)
        shape = shape_of(load_config(str(model)), rank, TARGETS)
        predicted = estimate(shape, micro, cutoff).total
        measured = measure(model, data, ws.home, rank, cutoff, micro)
        print(
            f"| {label} | {rank} | {cutoff} | {micro} | {predicted / GB:.2f} | {measured / GB:.2f} | "
            f"{predicted / measured:.2f} |",
            flush=True,
        )
    print(f"\n(default model: {DEFAULT_NAME}; fp32 on CPU, AdamW, LoRA on the attention preset, dropout 0.05)")


if __name__ == "__main__":
    main()
