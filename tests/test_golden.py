"""Pinned per-step losses of three tiny runs (torchtune's golden values).

The other training tests check properties that stay true under a self-consistent mistake: a loss that goes down,
resume == straight, reload == in memory. A prompt mask shifted by one token, a loss averaged over the wrong count, a
packed row that lets samples see each other, a changed seed path or scheduler keep all of those and move these
numbers. Each run: make_tiny_llama (seed 0), 4 optimizer steps on CPU in fp32.

The numbers came from this code on 2026-12-03 (torch 2.13.0+cpu; produced by `python tests/test_golden.py`), moved
that day by LoRA dropout sharing one mask per input tensor (training/lora_dropout.py; step 1 has B = 0), and on
2026-12-06 by the masks being drawn from uniforms (`rand >= p`) instead of `bernoulli_` (other masks, same law; with
`bernoulli_` put back the old values held to 1e-4 with that day's other changes). If a
change is meant to move them (the loss, the data pipeline, packing, the LoRA init, make_tiny_llama, the tokenizer),
rerun that, check that the new values make sense, paste them here and say in the commit why they moved. If they move
without such a change, the change broke training. Another torch version may move them in the last digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CORPUS, make_tiny_llama
from helpers import sum_records, write_jsonl
from loratune import train

CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"Arr, matey! It be {a + b}."},
            {"role": "user", "content": "And the quick brown fox?"},
            {"role": "assistant", "content": "It jumps over the lazy dog."},
        ]
    }
    for a in range(3)
    for b in range(3)
]
SHARED = {  # small, fast and deterministic: every run learns on the same rank-4 adapter with dropout on (seeded)
    "adapter.rank": 4,
    "adapter.alpha": 8,
    "train.max_steps": 4,
    "train.lr": 1e-2,
    "train.warmup_ratio": 0,
    "train.save_every": 0,
    "train.seed": 7,
}
RUNS = {
    # raw text, packed rows of several 32-token windows, linear decay
    "raw_packed": ("story.txt", {"data.cutoff": 32, "data.overlap": 8, "train.batch_size": 8, "train.micro_batch": 4}),
    # alpaca format file: the prompt is masked, only the response (and EOS) is trained; padded, 2 micro-batches a step
    "instructions_masked": (
        "sums.jsonl",
        {"data.format": "alpaca", "train.packing": False, "train.batch_size": 4, "train.micro_batch": 2},
    ),
    # chat records through the ChatML template: only assistant turns trained; packed; cosine schedule
    "chat": ("chats.jsonl", {"train.batch_size": 4, "train.micro_batch": 4, "train.scheduler": "cosine"}),
}
GOLDEN = {
    "raw_packed": [6.774033, 6.884188, 6.502653, 6.586117],
    "instructions_masked": [6.629499, 6.014639, 5.440639, 4.841229],
    "chat": [7.166672, 6.599463, 6.088589, 5.755306],
}


def write_data(folder: Path) -> None:
    (folder / "story.txt").write_text(CORPUS, encoding="utf-8")
    write_jsonl(folder / "sums.jsonl", sum_records(range(4), range(4)))
    write_jsonl(folder / "chats.jsonl", CHATS)


def losses(run: str, model: Path, folder: Path) -> list[float]:
    data, options = RUNS[run]
    result = train(
        model=str(model),
        data=str(folder / data),
        name=run,
        home=folder / "home",
        show_progress=False,
        **SHARED,
        **options,
    )
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def golden_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("golden")
    make_tiny_llama(folder / "model", seed=0)
    write_data(folder)
    return folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="pinned on CPU in fp32; a GPU trains in bf16")
@pytest.mark.parametrize("run", list(RUNS))
def test_losses_match_the_pinned_values(run, golden_folder):
    assert losses(run, golden_folder / "model", golden_folder) == pytest.approx(GOLDEN[run], rel=1e-4)


if __name__ == "__main__":  # PYTHONPATH=src python tests/test_golden.py: the current values, to paste into GOLDEN
    import tempfile

    root = Path(tempfile.mkdtemp())
    write_data(root)
    tiny = make_tiny_llama(root / "model", seed=0)
    for name in RUNS:
        print(f'    "{name}": {losses(name, tiny, root)},')
