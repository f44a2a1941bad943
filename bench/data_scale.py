"""Data at scale: `loratune data check` (cold, then warm) and `loratune train --train.max_steps 2` (cold, then warm) on
raw-text corpora made from Debian's bible-kjv-text, repeated to size, and on an alpaca JSONL.

Not part of `make test`. Needs `apt-get install bible-kjv-text` (the `bible` program prints the text).

    python bench/data_scale.py --sizes 25 100 --records 1000000 --src src [--src /other/checkout/src] --out r.json
        [--phases check1 check2] [--limit 900]

Each --src is a checkout's source folder; runs alternate between them (interleaved, same machine). Peak memory is
sampled every 0.1 s from /proc: the main process's RSS, and the PSS summed over its process tree (forked tokenizer
workers share pages with their parent, so PSS counts each page once). "first step" is when metrics.jsonl gets its
first line. LORATUNE_TOKENIZE_WORKERS=1 in the environment forces single-process tokenization.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def kjv_text() -> bytes:
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, check=True).stdout
    return out.replace(b"\r\n", b"\n")


def make_corpus(path: Path, megabytes: int, text: bytes) -> None:
    if path.exists() and path.stat().st_size == megabytes * 1_000_000:
        return
    with open(path, "wb") as f:
        left = megabytes * 1_000_000
        while left > 0:
            piece = text[:left]
            f.write(piece)
            left -= len(piece)


def make_jsonl(path: Path, records: int, text: bytes) -> None:
    if path.exists():
        return
    lines = text.decode().splitlines()
    with open(path, "w") as f:
        for n in range(records):
            verse = lines[n % len(lines)]
            ref, _, body = verse.partition(" ")
            f.write(json.dumps({"instruction": f"Quote {ref}.", "output": body}) + "\n")


def _mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process, from smaps_rollup."""
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def measure(cmd: list[str], env: dict, watch: Path | None = None, limit: float = 0) -> dict:
    """Run `cmd`, sampling its memory; past `limit` seconds (0: none) it is killed and reported as timed out."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parent = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    first_step, timed_out = None, False
    while proc.poll() is None:
        try:
            pids = [proc.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pids = [proc.pid]
        mems = [_mem(p) for p in pids]
        peak_rss = max(peak_rss, mems[0][0])
        peak_pss = max(peak_pss, sum(m[1] for m in mems))
        if watch is not None and first_step is None and watch.exists() and watch.stat().st_size > 0:
            first_step = time.perf_counter() - start
        if limit and time.perf_counter() - start > limit:
            timed_out = True
            for pid in reversed(pids):  # its tokenizer workers too
                try:
                    psutil.Process(pid).kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait()
            break
        time.sleep(0.1)
    output = proc.stdout.read()
    wall = time.perf_counter() - start
    if watch is not None and first_step is None and watch.exists() and watch.stat().st_size > 0:
        first_step = wall
    return {
        "rc": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 2),
        "first_step_s": None if first_step is None else round(first_step, 2),
        "peak_rss_gb": round(peak_rss / 1e9, 3),
        "peak_pss_tree_gb": round(peak_pss / 1e9, 3),
        "cached": "(cached" in output,
        "tail": output[-400:] if proc.returncode else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[25, 100])
    ap.add_argument("--records", type=int, default=0, help="also an alpaca JSONL of this many records")
    ap.add_argument("--src", action="append", required=True, help="a checkout's src folder (repeat to interleave)")
    ap.add_argument("--work", default="/tmp/loratune-data-scale")
    ap.add_argument("--out", default="")
    ap.add_argument("--skip", nargs="*", default=[], help="label:corpus pairs to skip, e.g. before:400")
    ap.add_argument("--phases", nargs="*", default=["check1", "check2", "train1", "train2"])
    ap.add_argument("--limit", type=float, default=0, help="kill a phase after this many seconds (0: never)")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    text = kjv_text()
    corpora = []
    for mb in args.sizes:
        path = work / f"kjv-{mb}mb.txt"
        make_corpus(path, mb, text)
        corpora.append((f"{mb} MB text", path))
    if args.records:
        path = work / f"alpaca-{args.records}.jsonl"
        make_jsonl(path, args.records, text)
        corpora.append((f"{args.records} records JSONL ({path.stat().st_size / 1e6:.0f} MB)", path))

    model = work / "tiny-llama"
    if not model.exists():
        sys.path.insert(0, str(HERE.parent / "tests"))
        from conftest import make_tiny_llama

        make_tiny_llama(model)
    results = []
    for name, path in corpora:
        for n, src in enumerate(args.src):
            label = "after" if n == 0 else f"src{n}"
            label = Path(src).resolve().parent.name if len(args.src) > 1 else label
            if f"{label}:{name.split()[0]}" in args.skip:
                continue
            home = work / f"home-{n}"
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), TOKENIZERS_PARALLELISM="true")
            loratune = [sys.executable, "-c", "import sys; from loratune.cli import main; sys.exit(main())"]
            check = [
                *loratune,
                "--home",
                str(home),
                "data",
                "check",
                str(path),
                "--model",
                str(model),
                "--examples",
                "1",
            ]
            train = [*loratune, "--home", str(home), "train", "--model", str(model), "--data", str(path), "--name", "b"]
            train += ["--train.max_steps", "2", "--overwrite"]
            row = {"corpus": name, "code": label, "src": src}
            for phase, cmd in (("check1", check), ("check2", check), ("train1", train), ("train2", train)):
                if phase not in args.phases or (phase == "check2" and row.get("check1", {}).get("timed_out")):
                    continue
                if phase in ("check1", "train1"):
                    shutil.rmtree(home / "datasets" / ".cache", ignore_errors=True)
                shutil.rmtree(home / "loras" / "b", ignore_errors=True)
                watch = home / "loras" / "b" / "metrics.jsonl" if phase.startswith("train") else None
                row[phase] = measure(cmd, env, watch, args.limit)
                print(name, label, phase, row[phase], flush=True)
            results.append(row)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
