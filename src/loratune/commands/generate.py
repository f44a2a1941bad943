"""`loratune generate`: complete prompts with a base model, a LoRA, or both side by side."""

from __future__ import annotations

from pathlib import Path

from loratune.config import GenerateSpec
from loratune.errors import LoratuneError


def add(sub) -> None:
    gen = sub.add_parser("generate", help="generate text with a base model and optionally a LoRA")
    add_model_args(gen)
    gen.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    gen.add_argument("--prompts-file", help="a text file with one prompt per line")
    gen.add_argument("--compare", action="store_true", help="print the base model's answer beside the LoRA's")
    add_sampling_args(gen)
    gen.add_argument(
        "--no-chat",
        action="store_true",
        help="send the prompt as bare text (by default it is built as the LoRA was trained: its chat template, "
        "format file, or bare text for raw-text LoRAs; see its prompt.json)",
    )
    gen.set_defaults(run=run_generate)


def add_model_args(parser) -> None:
    parser.add_argument("--model", help="base model (default: the LoRA's base, else SmolLM2)")
    parser.add_argument("--lora", help="adapter name in loras/, 'name/checkpoint-000100', or an adapter folder")


def add_sampling_args(parser) -> None:
    """The generation options `generate` and `chat` share (GenerateSpec's fields)."""
    parser.add_argument("--system", default="", help="system prompt (default: the adapter's, or the template's own)")
    parser.add_argument("--max-new-tokens", type=int, default=GenerateSpec.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=GenerateSpec.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=GenerateSpec.top_p, help="nucleus sampling (temperature > 0)")
    parser.add_argument("--top-k", type=int, default=GenerateSpec.top_k, help="sample from the k likeliest (0: off)")
    parser.add_argument("--repetition-penalty", type=float, default=GenerateSpec.repetition_penalty)
    parser.add_argument("--seed", type=int, default=GenerateSpec.seed, help="seed for sampling (-1: none)")


def spec_from_args(args, chat: bool | None = None) -> GenerateSpec:
    return GenerateSpec(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        system=args.system,
        chat=chat,
    ).validate()


def run_generate(args, extra: list[str]) -> int:
    from loratune.generator import Generator

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
    spec = spec_from_args(args, chat=False if args.no_chat else None)
    generator = Generator(args.model, args.lora, args.home)
    for prompt in prompts:
        if args.compare:
            print(f"\n>>> {prompt}")
            print(f"  base      : {generator.complete(prompt, spec, use_lora=False)}")
            print(f"  + {args.lora:<8}: {generator.complete(prompt, spec)}")
        else:
            print(generator.complete(prompt, spec))
    return 0
