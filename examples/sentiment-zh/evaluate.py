"""Held-out accuracy of the base model and of the LoRA on the Chinese sentiment recipe.

    python examples/sentiment-zh/evaluate.py [--home HOME] [--lora sentiment-zh] [--limit N]

Each held-out review is asked with the training prompt (greedy decoding, 8 new tokens); the answer counts as the
label it names first ('positive' / 'negative'), an answer naming neither is wrong. One model is loaded: the base answers
with the adapter disabled. Prints a table and writes it to loras/<lora>/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from loratune import Generator
from loratune.config import GenerateSpec
from loratune.data.chats import alpaca_to_messages


def label_of(answer: str) -> str:
    """'positive' or 'negative', whichever word the answer names first (so "The sentiment is positive." counts),
    else 'unclear'."""
    found = re.search(r"positive|negative", answer.lower())
    return found.group(0) if found else "unclear"


def evaluate(generator: Generator, records: list[dict], use_lora: bool) -> dict:
    spec = GenerateSpec(max_new_tokens=8)
    start = time.perf_counter()
    prompts = [alpaca_to_messages(r, "held-out record")[0]["content"] for r in records]  # as training renders it
    labels = [label_of(a) for a in generator.complete_all(prompts, spec, use_lora=use_lora)]
    correct = sum(got == r["output"] for got, r in zip(labels, records, strict=True))
    unclear = labels.count("unclear")
    return {
        "accuracy": round(100 * correct / len(records), 1),
        "correct": correct,
        "unclear": unclear,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("LORATUNE_HOME", "."), help="the loratune workspace")
    parser.add_argument("--lora", default="sentiment-zh", help="the adapter to evaluate (name in loras/ or a folder)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N held-out records (0: all)")
    parser.add_argument("--no-base", action="store_true", help="skip the base model (its answers do not change)")
    args = parser.parse_args(argv)

    path = Path(args.home) / "datasets" / "sentiment-zh" / "held_out.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = records[: args.limit or None]
    generator = Generator(lora=args.lora, home=args.home)
    results = {"held_out": str(path), "records": len(records)}
    if not args.no_base:
        results["base"] = evaluate(generator, records, use_lora=False)
    results["lora"] = evaluate(generator, records, use_lora=True)

    print(f"held-out accuracy on {len(records)} reviews ({path}):")
    print("| model | accuracy | correct | unclear answers |")
    print("|---|---|---|---|")
    for who, name in (("base", "SmolLM2-135M-Instruct"), ("lora", f"+ LoRA {args.lora}")):
        if who not in results:
            continue
        r = results[who]
        print(f"| {name} | {r['accuracy']:.1f} % | {r['correct']} / {len(records)} | {r['unclear']} |")
    (generator.lora_path / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
