"""`loratune generate`: complete prompts with a base model, a LoRA, or both side by side."""

from __future__ import annotations

from pathlib import Path

from loratune.config import GenerateSpec
from loratune.errors import LoratuneError


def add(sub) -> None:
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
    gen.set_defaults(run=run_generate)


def run_generate(args, extra: list[str]) -> int:
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
