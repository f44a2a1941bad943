"""`loratune models list | recommend --language xx | download <hub id>`: the base models you have and could get."""

from __future__ import annotations


def add(sub) -> None:
    models = sub.add_parser("models", help="list, recommend or download base models")
    verbs = models.add_subparsers(dest="verb", required=True, parser_class=sub._parser_class)
    verbs.add_parser("list", help="the models in <home>/models/")
    recommend = verbs.add_parser("recommend", help="base models to start from for a language")
    recommend.add_argument("--language", default="en", help="ISO 639-1 code: en, zh, ko, es, ...")
    download = verbs.add_parser("download", help="download a hub model into models/ (resumes partial downloads)")
    download.add_argument("hub_id", help="e.g. Qwen/Qwen2.5-0.5B-Instruct")
    download.add_argument("--trust-remote-code", action="store_true", help="also fetch the model's Python files")
    models.set_defaults(run=run_models)


def run_models(args, extra: list[str]) -> int:
    from loratune.errors import LoratuneError
    from loratune.models.catalog import installed, recommend
    from loratune.models.estimate import human
    from loratune.workspace import Workspace

    ws = Workspace.resolve(args.home)
    if args.verb == "list":
        rows = installed(ws)
        if not rows:
            print(f"no models in {ws.models} (add one with: loratune models download <hub id>)")
        for row in rows:
            state = "" if row.complete else "  (unfinished download: run loratune models download again)"
            print(f"{row.name:<40} {row.family:<10} {human(row.bytes_on_disk):>9}{state}")
        return 0
    if args.verb == "recommend":
        for entry in recommend(args.language):
            mark = "guide" if entry.guide else "today"
            print(f"{entry.hub_id:<38} {entry.family:<9} {entry.size:>5}  [{mark}] {entry.licence}")
            if entry.note:
                print(f"{'':<38} {entry.note}")
        return 0
    if "/" not in args.hub_id:
        raise LoratuneError(f"'{args.hub_id}' is not a hub id (they look like org/name, e.g. Qwen/Qwen2.5-0.5B)")
    from loratune.models.sources import download  # the hub client: only for a download

    path = download(args.hub_id, ws, args.trust_remote_code)
    print(f"{args.hub_id} is in {path}")
    return 0
