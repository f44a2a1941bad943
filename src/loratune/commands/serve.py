"""`loratune serve`: an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions)."""

from __future__ import annotations


def add(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a base model and its adapters over an OpenAI-compatible HTTP API",
        description="Request model '<base>' for the base model or '<base>+<adapter>' for an adapter in loras/ "
        "(also '<base>+<adapter>/checkpoint-000200'); adapters load on their first request and stay loaded.",
    )
    serve.add_argument("--model", default="default", help="base model: name in models/, folder, .gguf or hub id")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    serve.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    serve.set_defaults(run=run_serve)


def run_serve(args, extra) -> int:
    from loratune.serve import serve

    serve(args.model, args.home, args.host, args.port)
    return 0
