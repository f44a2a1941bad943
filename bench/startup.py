"""Where the time before loratune's first optimizer step goes: imports, each setup phase, then the steps.

    .venv/bin/python bench/startup.py [--steps 2] [--suite "smollm2-135m / reviews"]

Trains a few steps of a bench/throughput.py suite through `loratune.train` (its defaults and the bench's LoRA) and
prints the seconds since the process started at the end of each phase: torch, transformers + peft, loratune, then
each setup function as it returns, and each optimizer step. The time to first step of `make bench` is the last line
of setup plus the first step: the step itself holds the suite's 16 samples (TRL's packed step holds one row of up to
1024 tokens), so the start-up proper is everything before it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
START = psutil.Process().create_time()


def mark(what: str) -> None:
    print(f"{time.time() - START:6.2f} s  {what}", flush=True)


def timed(module, name: str) -> None:
    """Replace module.name with a wrapper that marks its end and its own duration."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        began = time.time()
        result = inner(*args, **kwargs)
        mark(f"{name} ({time.time() - began:.2f} s)")
        return result

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--suite", default="smollm2-135m / reviews")
    args = parser.parse_args()
    mark("python started")
    import torch  # noqa: F401

    mark("import torch")
    import peft  # noqa: F401
    import transformers  # noqa: F401

    mark("import transformers, peft")
    import loratune.training.loop as loop
    import loratune.training.setup as setup

    mark("import loratune")
    for name in ("check_fits", "load_base", "build_samples", "make_contract", "split_eval", "add_lora",
                 "write_run_folder"):  # fmt: skip
        timed(setup, name)
    for name in ("plan_run", "setup", "train_step"):
        timed(loop, name)
    from throughput import CACHE, loratune_options, prepare_suite

    from loratune import train

    suite = prepare_suite(args.suite)
    options = loratune_options(Path(suite["model"]), Path(suite["data"]), args.steps, "startup")
    began = time.time()
    train(home=CACHE / "home", show_progress=False, **options)
    mark(f"train() returned ({time.time() - began:.2f} s in all)")


if __name__ == "__main__":
    main()
