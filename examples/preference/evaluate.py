"""Held-out preference accuracy and answers of a preference-tuned LoRA, against the base model.

    python examples/preference/evaluate.py [--home HOME] [--lora demo-dpo]

On the held-out pairs of prepare.py: the adapter's preference accuracy (implicit reward of chosen above rejected, as
its method defines the reward, e.g. DPO's beta (log p - log p_ref), which is KTO's too: a kto adapter is measured on
the pairs as DPO's, its loss then DPO's; p_ref is the run's reference, the base, or for a run started from another
adapter with adapter.init_from that adapter), its loss and margin; the base model's accuracy by
its own log-probs (it wrote the rejected answers, so it prefers them); then the demo's six held-out prompts answered
by base and LoRA, counted as pirate style when the answer starts with "Arr" and does not degenerate into repeating
itself (a word or symbol 4 times in a row, or a character 8 times: `degenerate`). Writes loras/<lora>/evaluation.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import time
from pathlib import Path

import torch

from loratune import Generator
from loratune.config import DataSpec, GenerateSpec, RunConfig, from_dict
from loratune.data import build_samples
from loratune.rundir import read_run_config
from loratune.training.preference import Options, Pairs, evaluate_pairs, pass_groups, sequence_logps
from loratune.training.start_adapter import START, start_weights_of

HELD_OUT_PROMPTS = Path(__file__).resolve().parents[1] / "demo" / "held_out.txt"


def degenerate(answer: str) -> bool:
    """The answer repeats itself: one word or symbol 4 times in a row ("⚓ ⚓ ⚓ ⚓"), or one character 8 times."""
    words = answer.split()
    if any(len(set(words[i : i + 4])) == 1 for i in range(len(words) - 3)):
        return True
    return re.search(r"(.)\1{7}", answer) is not None


@torch.no_grad()
def base_accuracy(generator: Generator, pairs: Pairs) -> float:
    """The share of pairs whose chosen side the base model gives the higher log-probability (mean per token)."""
    correct = 0
    with generator.model.disable_adapter():
        for tensors, _, _ in pass_groups(list(pairs), 8, generator.tokenizer.pad_token_id, 0):
            logps, counts = sequence_logps(generator.model, tensors)
            mean = (logps / counts.clamp(min=1)).view(-1, 2)
            correct += int((mean[:, 0] > mean[:, 1]).sum())
    return correct / max(len(pairs), 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("LORATUNE_HOME", "."), help="the loratune workspace")
    parser.add_argument("--lora", default="demo-dpo", help="the adapter to evaluate (name in loras/ or a folder)")
    args = parser.parse_args(argv)

    generator = Generator(lora=args.lora, home=args.home)
    config = from_dict(RunConfig, read_run_config(generator.lora_path))
    held_out = Path(args.home) / "datasets" / "preference" / "held_out.jsonl"
    spec = DataSpec(path=str(held_out), cutoff=config.data.cutoff)
    samples, _ = build_samples(spec, generator.tokenizer, generator.ws)
    pairs = Pairs(samples)
    options = Options.of(config.train)
    if options.method == "kto":  # the same implicit reward as DPO's; KTO's own loss needs no pairs
        options = dataclasses.replace(options, method="dpo")
    kept = generator.lora_path / START  # the run started from another adapter: that one is its reference
    reference = start_weights_of(generator.model, kept) if kept.is_file() else None
    start = time.perf_counter()
    lora = evaluate_pairs(generator.model, list(pairs), options, 8, generator.tokenizer.pad_token_id, reference)
    results = {
        "method": config.train.method,
        "init_from": config.adapter.init_from or None,
        "pairs": len(pairs),
        "lora": lora,
        "base_logp_accuracy": round(base_accuracy(generator, pairs), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    prompts = [p for p in HELD_OUT_PROMPTS.read_text(encoding="utf-8").splitlines() if p.strip()]
    gen = GenerateSpec(max_new_tokens=48)
    answers = {"base": generator.complete_all(prompts, gen, use_lora=False)}
    answers["lora"] = generator.complete_all(prompts, gen)
    rows = zip(prompts, answers["base"], answers["lora"], strict=True)
    results["answers"] = [{"prompt": p, "base": b, "lora": a} for p, b, a in rows]
    results["pirate"] = {
        who: sum(a.startswith("Arr") and not degenerate(a) for a in said) for who, said in answers.items()
    }
    results["degenerate"] = {who: sum(degenerate(a) for a in said) for who, said in answers.items()}
    results["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)

    since = f", from {config.adapter.init_from} (its reference)" if config.adapter.init_from else ""
    print(f"{args.lora} ({config.train.method}{since}) on {len(pairs)} held-out pairs ({held_out}):")
    print("| model | preference accuracy | held-out prompts in pirate style | answers repeating themselves |")
    print("|---|---|---|---|")
    pirate, bad, n = results["pirate"], results["degenerate"], len(prompts)
    for key, who, accuracy in (("base", "base (by its own log-probs)", results["base_logp_accuracy"]),
                               ("lora", f"+ LoRA {args.lora} (implicit reward)", lora["eval_accuracy"])):  # fmt: skip
        print(f"| {who} | {accuracy:.2f} | {pirate[key]} / {n} | {bad[key]} |")
    for row in results["answers"]:
        print(f">>> {row['prompt']}\n  base: {row['base'][:100]}\n  lora: {row['lora'][:100]}")
    (generator.lora_path / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
