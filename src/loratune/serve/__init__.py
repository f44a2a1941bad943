"""`loratune serve`: an OpenAI-compatible HTTP API for a base model and the LoRA adapters trained on it."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from loratune.errors import LoratuneError
from loratune.serve.limits import Limits


def serve(
    model: str = "default",
    home: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    api_key: str | None = None,
) -> None:
    """Load `model`, listen on host:port and answer until interrupted (adapters load on their first
    request; concurrent requests are batched).

    A host other than loopback needs `api_key`: the server would otherwise answer anyone on the network."""
    from loratune.serve.api import make_server
    from loratune.serve.models import ModelPool

    if not api_key and not is_loopback(host):
        raise LoratuneError(
            f"--host {host} serves the API to the network: give an API key with --api-key or LORATUNE_API_KEY"
        )
    limits = limits or Limits()
    pool = ModelPool(model, home, max_queue=limits.max_queue, max_batch=limits.max_batch)
    server = make_server(pool, host, port, limits, api_key)
    host, port = server.server_address[:2]
    key = ", API key required" if api_key else ""
    print(f"serving {pool.base_name} on http://{host}:{port}/v1 (models: {', '.join(pool.names())}{key})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def is_loopback(host: str) -> bool:
    """Does `host` name only this machine (127.0.0.1, ::1, localhost)? '' and 0.0.0.0 mean every interface."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


__all__ = ["Limits", "is_loopback", "serve"]
