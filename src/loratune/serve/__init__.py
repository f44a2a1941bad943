"""`loratune serve`: an OpenAI-compatible HTTP API for a base model and the LoRA adapters trained on it."""

from __future__ import annotations

from pathlib import Path

from loratune.serve.api import make_server
from loratune.serve.models import ModelPool


def serve(model: str = "default", home: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load `model`, listen on host:port and answer until interrupted (adapters load on their first request)."""
    pool = ModelPool(model, home)
    server = make_server(pool, host, port)
    host, port = server.server_address[:2]
    print(f"serving {pool.base_name} on http://{host}:{port}/v1 (models: {', '.join(pool.names())})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["ModelPool", "make_server", "serve"]
