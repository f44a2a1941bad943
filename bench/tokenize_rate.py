"""Raw-text tokenization rate (tokens/s) on this machine: the code as it runs by default against the fast tokenizer
held to one thread, and the other ways to spread the work. Not part of `make test`.

    python bench/tokenize_rate.py --mb 10 --rounds 2 --tokenizer /path/to/model [--out r.json]
    python bench/tokenize_rate.py --records 30000 --arms "one thread" default --tokenizer /path/to/model

Arms (each a fresh process, interleaved round by round, so a loaded machine's drift falls on every arm alike):
- `one thread`: RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, LORATUNE_TOKENIZE_WORKERS=1 (one core);
- `default`: what the code does with no setting (raw text above data.raw_text.PARALLEL_BYTES, records files of more
  than data.blocks.BLOCK records: a pool of one process per core);
- `one process`: LORATUNE_TOKENIZE_WORKERS=1, the tokenizer's own Rust threads free;
- `pool`: LORATUNE_TOKENIZE_WORKERS=<cores>, whatever the corpus size.
Each arm tokenizes the same corpus through data.raw_text.build (windows and all, no cache), or with --records an
alpaca JSONL through data.build.build_samples (instruction blocks, into a fresh cache), and reports wall time,
tokens/s and CPU seconds / wall seconds (the cores it kept busy), and the stream's digest (every arm must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_arm(corpus: str, tokenizer_path: str) -> dict:
    import tempfile

    from transformers import AutoTokenizer

    from loratune.config import DataSpec
    from loratune.data import pool, raw_text
    from loratune.data.build import build_samples
    from loratune.workspace import Workspace

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    spec = DataSpec(path=corpus)
    start, cpu0 = time.perf_counter(), _cpu()
    if corpus.endswith(".jsonl"):  # instruction records, through the cache writer of a fresh workspace
        with tempfile.TemporaryDirectory() as home:
            samples, _ = build_samples(spec, tokenizer, Workspace.resolve(Path(home)))
    else:
        samples, _ = raw_text.build(Path(corpus), tokenizer, spec)
    wall, cpu = time.perf_counter() - start, _cpu() - cpu0
    tokens = sum(len(store.ids) for store, _ in samples.parts)  # the whole token stream (windows are spans of it)
    return {
        "wall_s": round(wall, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall),
        "cores_busy": round(cpu / wall, 2),
        "digest": samples.fingerprint(),
        "workers": pool.processes() if corpus.endswith(".jsonl") else raw_text.workers_for([Path(corpus)]),
    }


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


ARMS = {
    "one thread": {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "LORATUNE_TOKENIZE_WORKERS": "1"},
    "default": {},
    "one process": {"LORATUNE_TOKENIZE_WORKERS": "1"},
    "pool": {"LORATUNE_TOKENIZE_WORKERS": str(len(os.sched_getaffinity(0)))},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--records", type=int, default=0, help="an alpaca JSONL of this many records instead of raw text")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arms", nargs="*", default=list(ARMS))
    ap.add_argument("--tokenizer", required=True, help="a model folder with tokenizer files")
    ap.add_argument("--work", default="/tmp/loratune-tokenize-rate")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(one_arm(args.corpus, args.tokenizer)))
        return
    sys.path.insert(0, str(HERE))
    from data_scale import kjv_text, make_corpus, make_jsonl

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.records:
        corpus = work / f"alpaca-{args.records}.jsonl"
        make_jsonl(corpus, args.records, kjv_text())
    else:
        corpus = work / f"kjv-{args.mb}mb.txt"
        make_corpus(corpus, args.mb, kjv_text())
    clean = {k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    clean.pop("LORATUNE_TOKENIZE_WORKERS", None)
    results = []
    for round_ in range(1, args.rounds + 1):
        for arm in args.arms:
            cmd = [sys.executable, __file__, "--arm", arm, "--corpus", str(corpus), "--tokenizer", args.tokenizer]
            out = subprocess.run(cmd, env=dict(clean, **ARMS[arm]), capture_output=True, text=True, check=True)
            row = {"round": round_, "arm": arm, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(row, flush=True)
            results.append(row)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
