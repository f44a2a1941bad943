"""`loratune chat`: a conversation in the terminal through the adapter's prompt contract.

Each turn is rendered with the whole history (chat template or format file, as the LoRA was trained) and the answer
is streamed as it is generated. `/reset` forgets the history, `/exit` or end of input (Ctrl-D) ends.
"""

from __future__ import annotations

import sys

from loratune.commands.generate import add_model_args, add_sampling_args, spec_from_args
from loratune.errors import LoratuneError


def add(sub) -> None:
    chat = sub.add_parser("chat", help="talk with a LoRA (or a base model) in the terminal, turn by turn")
    add_model_args(chat)
    add_sampling_args(chat)
    chat.set_defaults(run=run_chat, max_new_tokens=256)


def run_chat(args, extra: list[str]) -> int:
    from loratune.generator import Generator

    spec = spec_from_args(args)
    generator = Generator(args.model, args.lora, args.home)
    name = args.lora or "the base model"
    if generator.contract.kind == "raw":
        raise LoratuneError(
            f"{name} was trained on raw text (it continues text, it has no chat); use loratune generate --prompt"
        )
    print(f"chat with {name} ({generator.contract.describe()}); /reset clears the history, /exit or Ctrl-D ends")
    history: list[dict] = []
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            history.clear()
            print("(history cleared)")
            continue
        history.append({"role": "user", "content": text})
        ids = generator.chat_ids(history, spec)
        pieces = []
        for piece in generator.stream(ids, spec):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
