"""`loratune loras list|promote|delete|merge|export`: manage the adapters in loras/."""

from __future__ import annotations

import sys

from loratune.adapters.export_gguf_model import QUANTS  # a light import: torch loads only when a merge runs
from loratune.errors import LoratuneError


def add(sub) -> None:
    loras = sub.add_parser("loras", help="list, promote, delete, merge or export adapters")
    actions = loras.add_subparsers(dest="action", required=True)

    actions.add_parser("list", help="adapters with their checkpoints and losses").set_defaults(run=run_list)

    promote = actions.add_parser(
        "promote",
        help="make a checkpoint the run's adapter (--undo puts back the one training ended with)",
        description="Copy a complete checkpoint's adapter over the run's own. Nothing is lost: the adapter it "
        "replaces stays in the checkpoint of its step (or in adapter-before-promote/), and --undo puts back the "
        "adapter the run had before its first promote.",
    )
    promote.add_argument("name", help="adapter name in loras/")
    promote.add_argument("checkpoint", nargs="?", help="checkpoint-000200, or just 200")
    promote.add_argument("--undo", action="store_true", help="put back the adapter the run had before promoting")
    promote.set_defaults(run=run_promote)

    delete = actions.add_parser(
        "delete",
        help="delete an adapter (its whole folder) or one checkpoint",
        description="Refused while the run trains. The folder is renamed aside first, then removed, so an "
        "interrupted delete leaves the whole run or a hidden leftover that the next command removes.",
    )
    delete.add_argument("name", help="'name' or 'name/checkpoint-000200'")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(run=run_delete)

    merge = actions.add_parser("merge", help="merge base + adapter into a plain model folder in models/")
    merge.add_argument("name", help="'name' or 'name/checkpoint-000200'")
    merge.add_argument("--out", required=True, help="models/<new name> (or just <new name>)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    merge.set_defaults(run=run_merge)

    export = actions.add_parser("export", help="export an adapter for other programs (llama.cpp, Ollama)")
    export.add_argument("name", help="'name' or 'name/checkpoint-000200'")
    export.add_argument(
        "--format",
        choices=["gguf", "gguf-model", "ollama"],
        default="gguf",
        help="gguf: a LoRA adapter for llama.cpp --lora; gguf-model: base + adapter merged into one GGUF model file; "
        "ollama: a folder with the GGUF adapter and a Modelfile",
    )
    export.add_argument("--quant", choices=QUANTS, default="q8_0", help="gguf-model: the weights' type (default q8_0)")
    export.add_argument(
        "--llama-cpp", help="gguf-model: a llama.cpp checkout to take the converter from (default: fetched once)"
    )
    export.add_argument(
        "--out",
        help="inside the adapter folder: the file name (gguf: adapter.gguf, gguf-model: model-<quant>.gguf) "
        "or folder (ollama: ollama)",
    )
    export.add_argument("--verify", action="store_true", help="then check the exports as `loras verify` does")
    add_verify_options(export)
    export.set_defaults(run=run_export)

    verify = actions.add_parser(
        "verify",
        help="run each export of an adapter and compare it with transformers + peft",
        description="Compare the adapter's exports (merged folder, Ollama TEMPLATE, GGUF adapter and merged GGUF in "
        "llama.cpp) with base + adapter in transformers + peft on the run's eval prompts: logits, greedy tokens, "
        "prompt rendering and the stop token. Prints a table; exit status 1 on a mismatch.",
    )
    verify.add_argument("name", help="'name' or 'name/checkpoint-000200'")
    verify.add_argument(
        "--llama-cpp", help="a llama.cpp source tree: its converter makes the GGUF files to check (f16, q8_0)"
    )
    add_verify_options(verify)
    verify.set_defaults(run=run_verify)


def add_verify_options(parser) -> None:
    parser.add_argument(
        "--greedy", help="the llama.cpp driver tools/verify_gguf/greedy.cpp (make build/verify-gguf/greedy)"
    )
    parser.add_argument("--prompts-file", help="prompts to compare on, one per line (default: the run's eval data)")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens compared per prompt (default 32)")


def run_list(args, extra) -> int:
    from loratune.adapters import list_adapters

    adapters = list_adapters(args.home)
    if not adapters:
        print("no adapters in loras/")
    for a in adapters:
        where = f"step {a.step}" if a.step is not None else ("no adapter yet" if not a.has_adapter else "step unknown")
        if a.training:
            where += ", training now"
        if a.promoted_from:
            where += f" (promoted from {a.promoted_from})"
        kept = _retention(a.retention)
        print(f"{a.name}: rank {a.rank}, alpha {a.alpha}, {where}, loss {_loss(a.loss)}{kept}, base {a.base_model}")
        for c in a.checkpoints:
            print(f"  {c.name}: loss {_loss(c.loss)}{_retention(c.retention)}{'' if c.complete else ' (incomplete)'}")
    return 0


def _retention(figures: dict | None) -> str:
    """', retention KL 0.0123 (97% same)' of a step's retention figures; '' when not measured."""
    if not figures:
        return ""
    same = figures.get("retention_same")
    return f", retention KL {figures['retention_kl']:.4f}" + (f" ({same:.0%} same)" if same is not None else "")


def run_promote(args, extra) -> int:
    from loratune.adapters import promote, undo_promote

    _clean(args.home)

    if args.undo:
        if args.checkpoint:
            raise LoratuneError("loras promote --undo takes no checkpoint: it puts back the adapter before the promote")
        info = undo_promote(args.name, args.home)
        print(f"{info.name}: adapter is back to the one of step {info.step} (loss {_loss(info.loss)})")
        return 0
    if not args.checkpoint:
        raise LoratuneError("loras promote needs a checkpoint (e.g. 200 or checkpoint-000200), or --undo")
    info = promote(args.name, args.checkpoint, args.home)
    print(
        f"{info.name}: adapter is now {info.promoted_from} (loss {_loss(info.loss)}); "
        f"undo with: loratune loras promote {info.name} --undo"
    )
    return 0


def run_delete(args, extra) -> int:
    from loratune.adapters import delete

    _clean(args.home)

    name, _, checkpoint = args.name.partition("/")
    if not args.yes:
        if not sys.stdin.isatty():
            raise LoratuneError(f"deleting {args.name} needs --yes when not run interactively")
        if input(f"delete {args.name} for good? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    print(f"deleted {delete(name, args.home, checkpoint=checkpoint or None)}")
    return 0


def run_merge(args, extra) -> int:
    from loratune.adapters import merge

    _clean(args.home)

    print(f"merged model written to {merge(args.name, args.out, args.home, overwrite=args.overwrite)}")
    return 0


def run_verify(args, extra) -> int:
    from loratune.adapters.verify import failed, format_table, verify

    _clean(args.home)
    checks = verify(
        args.name, args.home, args.prompts_file, llama_cpp=args.llama_cpp, greedy=args.greedy, tokens=args.tokens
    )
    print(format_table(checks))
    return 1 if failed(checks) else 0


def run_export(args, extra) -> int:
    code = _export(args)
    return run_verify(args, extra) if args.verify and code == 0 else code


def _export(args) -> int:
    _clean(args.home)
    if args.format == "gguf-model":
        from loratune.adapters.export_gguf_model import export_gguf_model

        path = export_gguf_model(args.name, args.home, quant=args.quant, out=args.out, llama_cpp=args.llama_cpp)
        print(f"wrote {path}; use it with: llama-cli -m {path} -cnv")
        return 0
    from loratune.adapters.export_gguf import export_gguf

    if args.format == "ollama":
        from loratune.adapters.export_ollama import export_ollama

        done = export_ollama(args.name, args.home, out=args.out)
        print(f"wrote {done.modelfile} and {done.folder / 'adapter.gguf'}")
        if done.convert_command:
            print(f"the base is not a GGUF file; convert it once with llama.cpp: {done.convert_command}")
        print(f"then: ollama create {done.model_name} -f {done.modelfile} && ollama run {done.model_name}")
        return 0

    path = export_gguf(args.name, args.home, out=args.out)
    print(f"wrote {path}; use it with: llama-cli -m <base model>.gguf --lora {path}")
    return 0


def _clean(home) -> None:
    """Remove what killed commands left behind (hidden temporaries of dead processes) before doing anything."""
    from loratune.adapters.catalog import clean_workspace
    from loratune.workspace import Workspace

    clean_workspace(Workspace.resolve(home))


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
