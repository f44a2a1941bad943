"""`loratune data check <file>`: what training will see, before training: counts, lengths, a mask view, warnings.

Trained text is printed in green and masked text in grey when stdout is a terminal (and NO_COLOR is unset); otherwise
trained text stands between ⟦ and ⟧. Exits 2 when a problem would make training silently useless.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from loratune.config import DataSpec, ModelSpec, from_dict, load_yaml, merge_options, parse_overrides

TRAINED, MASKED, RESET = "\033[32m", "\033[90m", "\033[0m"
BAR_WIDTH = 40
FILES_SHOWN = 20  # a folder of thousands of files lists the first ones
PROBLEM_EXIT = 2  # 1 is a user error (bad file, bad option), as for every command
# The suffixes data/files.py reads (its KINDS; a test keeps the two equal): importing loratune.data loads torch.
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".md")


def add(sub) -> None:
    data = sub.add_parser("data", help="look at a dataset before training")
    actions = data.add_subparsers(dest="action", required=True, parser_class=type(data))
    check = actions.add_parser(
        "check",
        help="counts, lengths against the cutoff, trained/masked text and warnings, as training will see them",
        description="Exit status 2 when a problem would make training silently useless; 1 on a user error.",
    )
    check.add_argument(
        "path",
        nargs="+",
        help="the dataset: a file (.jsonl/.json, .csv/.tsv, .parquet, .arrow, .txt/.md), a folder, a name in "
        "datasets/, or a hub dataset (hf:org/name); several datasets are checked as one run's data.path list",
    )
    check.add_argument("--model", help="base model whose tokenizer (and chat template) is used (default: SmolLM2)")
    check.add_argument("--format", help=_doc("format"))
    check.add_argument("--cutoff", type=int, help=_doc("cutoff"))
    check.add_argument("--config", help="a run's YAML config; its model and data options are used")
    check.add_argument("--examples", type=int, default=3, help="how many samples to show (default 3)")
    check.set_defaults(run=run_check, takes_overrides=("model", "data"))  # the dotted options it uses


def run_check(args, extra: list[str]) -> int:
    from loratune.workspace import Workspace

    data = load_yaml(args.config) if args.config else {}
    path = args.path[0] if len(args.path) == 1 else args.path
    options = parse_overrides(extra) | {"data.path": path}
    options.update({f"data.{k}": getattr(args, k) for k in ("format", "cutoff") if getattr(args, k) is not None})
    if args.model is not None:
        options["model.source"] = args.model
    merge_options(data, options)
    model = from_dict(ModelSpec, data.get("model") or {}, "model")
    spec = from_dict(DataSpec, data.get("data") or {}, "data")
    ws = Workspace.resolve(args.home)
    unsupported = _unsupported_file(spec.path, ws)
    if unsupported is not None:  # said in a second, before the tokenizer and torch load
        suffixes = ", ".join(DATA_SUFFIXES)
        print(f"PROBLEM: {unsupported}: unsupported data file type; use {suffixes} (or a folder of them)")
        print("1 problem(s): training on this data would be silently useless")
        return PROBLEM_EXIT

    from loratune.data.preview import check_data
    from loratune.models.sources import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(model.source, ws, model.trust_remote_code), model.trust_remote_code)
    check = check_data(spec, tokenizer, ws, examples=args.examples)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(render(check, color))
    return PROBLEM_EXIT if check.has_problems else 0


def _unsupported_file(given: str | list[str], ws) -> Path | None:
    """The first given dataset that is a file of a type no reader takes (found as data/build.py's find_data does)."""
    for name in given if isinstance(given, list) else [given]:
        path = Path(name).expanduser()
        if not path.exists() and not path.is_absolute() and (ws.datasets / name).exists():
            path = ws.datasets / name
        if path.is_file() and path.suffix.lower() not in DATA_SUFFIXES:
            return path
    return None


def render(check, color: bool) -> str:
    """The check as terminal text; `color` paints trained / masked text, else trained text is ⟦bracketed⟧."""
    cached = ", tokenized samples (cached)" if check.cached else ""
    lines = [f"{check.kind} data {check.path} (cutoff {check.cutoff} tokens{cached})"]
    if check.kind and check.records:
        share = f"{100 * check.trained_tokens / check.tokens:.1f} %" if check.tokens else "-"
        lines += [
            f"  records {check.records}, samples {check.samples}, tokens {check.tokens}, "
            f"trained tokens {check.trained_tokens} ({share})",
            f"  dropped {check.dropped} (too long {check.dropped_too_long}, nothing to train "
            f"{check.dropped_nothing_to_train}, too short {check.dropped_too_short}), cut {check.truncated}; "
            f"samples training EOS {check.samples_with_eos}/{check.samples}",
        ]
    if check.shapes:
        lines.append("  shapes: " + ", ".join(f"{shape} {count}" for shape, count in check.shapes.items()))
    if check.labels:
        lines.append("  labels: " + ", ".join(f"{label} {count}" for label, count in check.labels.items()))
    for summary in check.datasets:
        lines.append(f"  dataset {summary}")
    if len(check.file_shapes) > 1 or check.skipped:
        files = ", ".join(f"{count} {suffix}" for suffix, count in check.files.items())
        lines.append(f"  files read: {files}")
        lines += [f"    {line}" for line in check.file_shapes[:FILES_SHOWN]]
        if len(check.file_shapes) > FILES_SHOWN:
            lines.append(f"    ... and {len(check.file_shapes) - FILES_SHOWN} more")
    if check.skipped:
        lines.append(f"  skipped {len(check.skipped)}: " + "; ".join(check.skipped[:FILES_SHOWN]))
    if any(b.count for b in check.histogram):
        lines.append("sample lengths in tokens:")
        top = max(b.count for b in check.histogram) or 1
        for b in check.histogram:
            bar = "█" * round(BAR_WIDTH * b.count / top)
            note = "  over the cutoff" if b.over_cutoff else ""
            lines.append(f"  {b.low:>6}-{b.high:<6} {bar} {b.count}{note}")
    if check.examples:
        legend = "green: trained, grey: masked" if color else "trained text between ⟦ and ⟧, the rest is masked"
        lines.append(f"samples ({legend}):")
        for number, (segments, label) in enumerate(zip(check.examples, check.example_labels, strict=True), 1):
            text = "".join(_paint(piece, trained, color) for piece, trained in segments)
            label = f"({label}) " if label else ""
            lines.append(f"  #{number} {label}" + text.rstrip("\n").replace("\n", "\n     "))
    for w in check.warnings:
        lines.append(f"{'PROBLEM' if w.problem else 'warning'}: {w.message}")
    problems = sum(w.problem for w in check.warnings)
    lines.append(
        f"{problems} problem(s): training on this data would be silently useless" if problems else "ok: no problems"
    )
    return "\n".join(lines)


def _paint(text: str, trained: bool, color: bool) -> str:
    """Newlines show as ↵ (then break the line); the paint or bracket closes before the break."""
    shown = text.replace("\n", "↵\n")
    core, end = (shown[:-1], "\n") if shown.endswith("\n") else (shown, "")
    if color:
        return f"{TRAINED if trained else MASKED}{core}{RESET}{end}"
    return (f"⟦{core}⟧" if trained else core) + end


def _doc(name: str) -> str:
    from loratune.config import field_help

    return next(doc for dotted, _, doc in field_help(DataSpec) if dotted == name)
