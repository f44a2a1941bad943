"""Held-out chrF of the base model and of the LoRA on the English -> Spanish recipe (sacrebleu's chrF).

    python examples/en-es/evaluate.py [--home HOME] [--lora en-es] [--limit N]

Each held-out English verse is asked with the training prompt (greedy decoding); the first line of the answer is the
translation, scored against the Reina-Valera 1909 verse with corpus-level chrF. One model is loaded: the base answers
with the adapter disabled. Prints a table and writes it, with a few examples, to loras/<lora>/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from sacrebleu.metrics import CHRF

from loratune import Generator
from loratune.config import GenerateSpec
from loratune.data.chats import alpaca_to_messages


def translate(generator: Generator, records: list[dict], use_lora: bool, max_new_tokens: int) -> tuple[list, float]:
    spec = GenerateSpec(max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    prompts = [alpaca_to_messages(r, "held-out record")[0]["content"] for r in records]  # as training renders it
    answers = [a.strip().split("\n")[0] for a in generator.complete_all(prompts, spec, use_lora=use_lora)]
    return answers, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("LORATUNE_HOME", "."), help="the loratune workspace")
    parser.add_argument("--lora", default="en-es", help="the adapter to evaluate (name in loras/ or a folder)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N held-out verses (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest translation generated")
    parser.add_argument("--no-base", action="store_true", help="skip the base model (its answers do not change)")
    args = parser.parse_args(argv)

    path = Path(args.home) / "datasets" / "en-es" / "held_out.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = records[: args.limit or None]
    references = [[r["output"] for r in records]]
    generator = Generator(lora=args.lora, home=args.home)
    results = {"held_out": str(path), "verses": len(records)}
    outputs = {"base": [""] * len(records)}
    for who, use_lora in (("base", False), ("lora", True))[args.no_base :]:
        outputs[who], seconds = translate(generator, records, use_lora, args.max_new_tokens)
        chrf = CHRF().corpus_score(outputs[who], references).score
        results[who] = {"chrF": round(chrf, 1), "seconds": round(seconds, 1)}
    results["examples"] = [
        {"english": r["input"], "reference": r["output"], "base": b, "lora": lo}
        for r, b, lo in list(zip(records, outputs["base"], outputs["lora"], strict=True))[:5]
    ]

    print(f"held-out chrF on {len(records)} verses ({path}):")
    print("| model | chrF |")
    print("|---|---|")
    if "base" in results:
        print(f"| SmolLM2-135M-Instruct | {results['base']['chrF']:.1f} |")
    print(f"| + LoRA {args.lora} | {results['lora']['chrF']:.1f} |")
    for example in results["examples"][:3]:
        print(f"\n  english  : {example['english']}\n  reference: {example['reference']}")
        print(f"  base     : {example['base']}\n  lora     : {example['lora']}")
    (generator.lora_path / "evaluation.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
