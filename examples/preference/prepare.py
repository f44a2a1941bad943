"""Build preference pairs from the demo: chosen = the pirate answer, rejected = the base model's own greedy answer.

    python examples/preference/prepare.py [--home HOME] [--model default] [--held-out 40]

Reads examples/demo/pirate.jsonl (300 instruction records), asks the base model each instruction once (greedy, 48 new
tokens, through its chat template as training renders alpaca records) and caches the answers in
<home>/datasets/preference/base_answers.jsonl, so a second run generates nothing. Writes train.jsonl and
held_out.jsonl beside it: {instruction, input?, chosen, rejected} records, the held-out split a seeded sample of
instructions never trained on; and train_kto.jsonl, the training pairs unpaired for train.method kto: each side a
{instruction, input?, completion, label} record, the pirate answer desirable (true), the base's not (false).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from loratune import Generator
from loratune.config import GenerateSpec
from loratune.data.chats import alpaca_to_messages

DEMO = Path(__file__).resolve().parents[1] / "demo" / "pirate.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def prompt_of(record: dict) -> str:
    """The user turn training renders for an alpaca record (instruction and input)."""
    asked = {k: record[k] for k in ("instruction", "input") if k in record}
    return alpaca_to_messages(asked | {"output": "-"}, "demo record")[0]["content"]


def base_answers(records: list[dict], cache: Path, model: str, home: str) -> dict[str, str]:
    """The base model's greedy answer to each record's prompt, generated once and cached by prompt."""
    answers = {r["prompt"]: r["answer"] for r in read_jsonl(cache)} if cache.is_file() else {}
    missing = sorted({prompt_of(r) for r in records} - answers.keys())
    if missing:
        start = time.perf_counter()
        generator = Generator(model=model, home=home)
        spec = GenerateSpec(max_new_tokens=48)
        for prompt, answer in zip(missing, generator.complete_all(missing, spec), strict=True):
            answers[prompt] = answer
        write_jsonl(cache, [{"prompt": p, "answer": a} for p, a in sorted(answers.items())])
        print(f"base answers: {len(missing)} generated in {time.perf_counter() - start:.0f} s, cached in {cache}")
    return answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("LORATUNE_HOME", "."), help="the loratune workspace")
    parser.add_argument("--model", default="default", help="the base model whose answers are the rejected side")
    parser.add_argument("--held-out", type=int, default=40, help="pairs kept out of training for evaluation")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N demo records (0: all)")
    args = parser.parse_args(argv)

    records = read_jsonl(DEMO)[: args.limit or None]
    folder = Path(args.home) / "datasets" / "preference"
    folder.mkdir(parents=True, exist_ok=True)
    answers = base_answers(records, folder / "base_answers.jsonl", args.model, args.home)
    pairs = []
    for r in records:
        rejected = answers[prompt_of(r)] or "I don't know."
        pair = {k: r[k] for k in ("instruction", "input") if k in r}
        pairs.append(pair | {"chosen": r["output"], "rejected": rejected})
    prompts = sorted({prompt_of(r) for r in records})
    held = set(random.Random(0).sample(prompts, min(args.held_out, len(prompts) - 1)))
    train = [p for p in pairs if prompt_of(p) not in held]
    held_out = [p for p in pairs if prompt_of(p) in held]
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "held_out.jsonl", held_out)
    write_jsonl(folder / "train_kto.jsonl", [labelled for pair in train for labelled in unpaired(pair)])
    print(f"{folder}: train.jsonl {len(train)} pairs, held_out.jsonl {len(held_out)} pairs, train_kto.jsonl "
          f"{2 * len(train)} labelled answers")  # fmt: skip


def unpaired(pair: dict) -> list[dict]:
    """A pair as KTO's two records: the chosen answer desirable, the rejected one not."""
    asked = {k: pair[k] for k in ("instruction", "input") if k in pair}
    return [
        asked | {"completion": pair["chosen"], "label": True},
        asked | {"completion": pair["rejected"], "label": False},
    ]


if __name__ == "__main__":
    main()
