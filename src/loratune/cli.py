"""`loratune` command line: parse, call the library, print. Errors a user can fix print as one line, exit 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loratune.config import GenerateSpec, RunConfig, field_help, from_dict, load_yaml, merge_options
from loratune.errors import LoratuneError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise LoratuneError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loratune", description="LoRA fine-tuning of text-generation models.")
    parser.add_argument("--home", help="workspace folder (default: $LORATUNE_HOME or the current directory)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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

    gen = sub.add_parser("generate", help="generate text with a base model and optionally a LoRA")
    gen.add_argument("--model", help="base model (default: the LoRA's base, else SmolLM2)")
    gen.add_argument("--lora", help="adapter name in loras/, 'name/checkpoint-000100', or an adapter folder")
    gen.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    gen.add_argument("--prompts-file", help="a text file with one prompt per line")
    gen.add_argument("--compare", action="store_true", help="print the base model's answer beside the LoRA's")
    gen.add_argument("--max-new-tokens", type=int, default=GenerateSpec.max_new_tokens)
    gen.add_argument("--temperature", type=float, default=GenerateSpec.temperature, help="0 = greedy")
    gen.add_argument(
        "--no-chat",
        action="store_true",
        help="never wrap the prompt in the chat template (by default it is, unless the LoRA learned raw text)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = build_parser().parse_known_args(argv)
        if args.command == "train":
            return run_train(args, extra)
        if extra:
            raise LoratuneError(f"unknown argument(s): {' '.join(extra)}")
        return run_generate(args)
    except LoratuneError as e:
        print(f"loratune: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loratune: interrupted", file=sys.stderr)
        return 130


def run_train(args, extra: list[str]) -> int:
    from loratune.train import train

    config = train_config(args, extra)
    result = train(config, home=args.home)
    print(
        f"done: {result.steps} steps in {result.seconds:.0f}s, final loss {result.final_loss:.4f}, "
        f"adapter in {result.run_dir}"
    )
    return 0


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
    name = overrides.get("name", data.get("name"))
    if args.resume and name:
        from loratune.workspace import Workspace

        saved = Workspace.resolve(args.home).lora_dir(name) / "loratune.yaml"
        if saved.is_file():
            data = merge_options(load_yaml(saved), data)
    merge_options(data, overrides)
    return from_dict(RunConfig, data)


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """`--train.lr 2e-4`, `--train.lr=2e-4`, or a bare `--train.resume` (true)."""
    overrides, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or "." not in token:
            raise LoratuneError(
                f"unknown argument '{token}' (options look like --train.lr 2e-4; see loratune train --help)"
            )
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value, i = extra[i + 1], i + 1
            else:
                value = "true"
        overrides[key] = value
        i += 1
    return overrides


def run_generate(args) -> int:
    from loratune.generate import Generator

    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise LoratuneError(f"prompts file not found: {path}")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise LoratuneError("give at least one --prompt (or --prompts-file)")
    if args.compare and not args.lora:
        raise LoratuneError("--compare needs --lora")
    spec = GenerateSpec(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, chat=False if args.no_chat else None
    )
    generator = Generator(args.model, args.lora, args.home)
    for prompt in prompts:
        if args.compare:
            print(f"\n>>> {prompt}")
            print(f"  base      : {generator.complete(prompt, spec, use_lora=False)}")
            print(f"  + {args.lora:<8}: {generator.complete(prompt, spec)}")
        else:
            print(generator.complete(prompt, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
