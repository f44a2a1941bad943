"""`loratune serve`: an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions)."""

from __future__ import annotations

import os


def add(sub) -> None:
    from loratune.serve.limits import Limits

    d = Limits()
    serve = sub.add_parser(
        "serve",
        help="serve a base model and its adapters over an OpenAI-compatible HTTP API",
        description="Request model '<base>' for the base model or '<base>+<adapter>' for an adapter in loras/ "
        "(also '<base>+<adapter>/checkpoint-000200', or the adapter's bare name); adapters load on their first request "
        "and stay loaded; concurrent requests are generated together (--max-batch). "
        "A request over a limit gets a 400 naming it.",
    )
    serve.add_argument("--model", default="default", help="base model: name in models/, folder, .gguf or hub id")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback needs a key)")
    serve.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("LORATUNE_API_KEY"),
        help="clients must send 'Authorization: Bearer <key>' (default: $LORATUNE_API_KEY; the variable keeps the "
        "key out of the process list)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the model (default: torch's, one per core); on a machine shared with other jobs 1 "
        "is often several times faster (README, Serving)",
    )
    limit = serve.add_argument_group("limits (per request unless said)")
    limit.add_argument("--max-tokens", type=int, default=d.max_tokens, help="most tokens one request may generate")
    limit.add_argument("--max-prompt-tokens", type=int, help="longest prompt in tokens (default: the model's context)")
    limit.add_argument("--max-stop-strings", type=int, default=d.max_stop_strings, help="most stop strings")
    limit.add_argument("--max-stop-length", type=int, default=d.max_stop_length, help="longest stop string (chars)")
    limit.add_argument("--max-body", type=int, default=d.max_body, help="largest request body, bytes")
    limit.add_argument(
        "--request-timeout", type=float, default=d.request_timeout, help="seconds to wait for the model + generate"
    )
    limit.add_argument(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout,
        help="seconds a connection may stay silent, and to upload one request",
    )
    limit.add_argument(
        "--max-queue", type=int, default=d.max_queue, help="requests waiting for a place in the batch (then 503)"
    )
    limit.add_argument("--max-batch", type=int, default=d.max_batch, help="requests generated together, server-wide")
    limit.add_argument("--max-connections", type=int, default=d.max_connections, help="open connections, server-wide")
    serve.set_defaults(run=run_serve)


def run_serve(args, extra) -> int:
    from loratune.errors import LoratuneError

    if args.threads is not None and args.threads < 1:
        raise LoratuneError(f"--threads {args.threads}: give 1 or more")
    from loratune.serve import serve
    from loratune.serve.limits import Limits

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)  # global: the batcher thread's forwards use it too

    limits = Limits(
        max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        max_stop_strings=args.max_stop_strings,
        max_stop_length=args.max_stop_length,
        max_body=args.max_body,
        request_timeout=args.request_timeout,
        idle_timeout=args.idle_timeout,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_connections=args.max_connections,
    )
    serve(args.model, args.home, args.host, args.port, limits, args.api_key)
    return 0
