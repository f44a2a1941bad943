"""`loratune train`: options from defaults, the saved run, a YAML file and dotted flags; then the library's train()."""

from __future__ import annotations

import argparse
import copy
import os

from loratune.config import RunConfig, field_help, from_dict, load_yaml, merge_options, parse_overrides
from loratune.rundir import read_run_config
from loratune.workspace import Workspace


def add(sub) -> None:
    options = "\n".join(f"  --{name} (default {default!r})  {doc}" for name, default, doc in field_help())
    train = sub.add_parser(
        "train",
        help="train a LoRA adapter",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="every option, also settable in the YAML config:\n" + options,
    )
    train.add_argument("--config", help="YAML file with any of the options below")
    train.add_argument("--model", help="base model: hub id, folder, .gguf file, name in models/ (default: SmolLM2)")
    train.add_argument("--data", help="dataset: .txt file or folder, .json or .jsonl file")
    train.add_argument("--name", help="adapter name: results go to loras/<name>/")
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing adapter of that name")
    train.set_defaults(run=run_train, takes_overrides=True)


def run_train(args, extra: list[str]) -> int:
    config = train_config(args, extra)  # a bad option is refused before torch loads
    from loratune.training.loop import train

    result = train(config, home=args.home)
    if result.already_finished:
        return 0  # train() said so; nothing was changed
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, one line, not one per process
        print(
            f"{'stopped' if result.stopped else 'done'}: {result.steps} steps in {result.seconds:.0f}s, "
            f"final loss {result.final_loss:.4f}, adapter in {result.run_dir}"
        )
    return 0  # a graceful stop (SIGINT/SIGTERM) is a success: the run is saved and resumable


def train_config(args, extra: list[str]) -> RunConfig:
    """Defaults <- the run's saved loratune.yaml (on --resume) <- --config file <- flags and dotted overrides."""
    overrides = parse_overrides(extra)
    overrides.update(
        {flag: getattr(args, flag) for flag in ("model", "data", "name") if getattr(args, flag) is not None}
    )
    if args.resume:
        overrides["train.resume"] = True
    if args.overwrite:
        overrides["train.overwrite"] = True
    data = load_yaml(args.config) if args.config else {}
    given = from_dict(RunConfig, merge_options(copy.deepcopy(data), overrides))
    if given.train.resume and given.name:  # --resume or train.resume auto: the saved run's options come first
        options = read_run_config(Workspace.resolve(args.home).lora_dir(given.name))
        if options is not None:
            for what_that_command_did in ("resume", "overwrite"):  # never inherit an --overwrite
                (options.get("train") or {}).pop(what_that_command_did, None)
            data = merge_options(options, data)
    merge_options(data, overrides)
    config = from_dict(RunConfig, data)
    # The cheap checks here, before train() imports torch: a bad option or name is refused in a second, not in ten.
    config.validate()
    ws = Workspace.resolve(args.home)
    if config.name:
        ws.lora_dir(config.name)
    if config.train.resume is True:
        ws.check_resumable(config.name)
    return config
