"""Build the English -> Spanish recipe's data: verse pairs of the World English Bible and the Reina-Valera 1909.

    python examples/en-es/prepare.py [--home HOME] [--train 3000] [--held-out 200]

The Debian packages sword-text-web and sword-text-sparv (public-domain SWORD zText modules) are fetched once with
`apt-get download` into <home>/datasets/cache/ and unpacked there with `dpkg-deb -x` (nothing is installed or
committed; later runs are offline). Their New Testaments are read with sword.py and paired verse by verse. Writes
<home>/datasets/en-es/train.jsonl and held_out.jsonl: alpaca records, English in, Spanish out. No English verse text
of the held-out split occurs in training.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import sword

PACKAGES = {"sword-text-web": "engWEB2015eb", "sword-text-sparv": "spaRV1909eb"}  # Debian package -> SWORD module
INSTRUCTION = "Translate this English text to Spanish."


def fetch_module(cache: Path, package: str) -> Path:
    """The unpacked package's SWORD root (mods.d/ and modules/), downloaded and unpacked unless already there."""
    root = cache / "sword" / package / "usr" / "share" / "sword"
    if (root / "mods.d").is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        sys.exit(f"apt-get download {package} left no {package}_*.deb in {cache}")
    target = cache / "sword" / package
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], check=True)
    return root


def pairs(english: dict, spanish: dict, max_chars: int) -> list[tuple[str, str]]:
    """(English, Spanish) for verses present in both, short enough to train and evaluate quickly on a CPU."""
    found = []
    for key, en in english.items():
        es = spanish.get(key)
        if es and len(en) <= max_chars and len(es) <= max_chars * 3 // 2:
            found.append((en, es))
    return found


def split(found: list[tuple[str, str]], n_train: int, n_held_out: int, seed: int):
    """Held-out pairs first; a training pair never repeats the English text of a held-out one (nor of another)."""
    by_english = {}
    for en, es in found:
        by_english.setdefault(en, es)  # a repeated English verse keeps its first Spanish rendering
    english = sorted(by_english)
    random.Random(seed).shuffle(english)
    if len(english) < n_train + n_held_out:
        sys.exit(f"only {len(english)} distinct verse pairs; {n_train + n_held_out} needed")
    held_out = [record(en, by_english[en]) for en in english[:n_held_out]]
    train = [record(en, by_english[en]) for en in english[n_held_out : n_held_out + n_train]]
    return train, held_out


def record(english: str, spanish: str) -> dict:
    return {"instruction": INSTRUCTION, "input": english, "output": spanish}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("LORATUNE_HOME", "."), help="the loratune workspace")
    parser.add_argument("--train", type=int, default=3000, help="training verse pairs")
    parser.add_argument("--held-out", type=int, default=200, help="held-out verse pairs")
    parser.add_argument("--max-chars", type=int, default=100, help="longest English verse kept, in characters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    datasets = Path(args.home) / "datasets"
    english, spanish = (sword.read_nt(fetch_module(datasets / "cache", p), m) for p, m in PACKAGES.items())
    found = pairs(english, spanish, args.max_chars)
    train, held_out = split(found, args.train, args.held_out, args.seed)
    out = datasets / "en-es"
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "held_out.jsonl", held_out)

    print(f"New Testament: {len(english)} English and {len(spanish)} Spanish verses, {len(found)} pairs kept")
    for name, records in (("train", train), ("held_out", held_out)):
        en = sum(len(r["input"]) for r in records) / max(len(records), 1)
        es = sum(len(r["output"]) for r in records) / max(len(records), 1)
        print(f"{out / name}.jsonl: {len(records)} pairs, {en:.0f} English / {es:.0f} Spanish characters per verse")


if __name__ == "__main__":
    main()
