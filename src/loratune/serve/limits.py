"""What one client may ask of the server, and the two ways a request ends early (its client left, it ran too long).

Every limit has a default a user can raise from the command line; a request over one gets a 400 naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from loratune.errors import LoratuneError

CONTEXT_WHEN_UNKNOWN = 4096  # a model whose config names no context length (e.g. RWKV) still gets a prompt limit


@dataclass
class Limits:
    max_tokens: int = 2048  # --max-tokens: the most tokens one request may generate
    max_prompt_tokens: int | None = None  # --max-prompt-tokens: None = the model's context length
    max_stop_strings: int = 4  # --max-stop-strings (OpenAI's own limit is 4)
    max_stop_length: int = 100  # --max-stop-length, in characters
    max_body: int = 1024 * 1024  # --max-body, bytes of JSON
    request_timeout: float = 600.0  # --request-timeout: waiting for the model + generating, seconds
    idle_timeout: float = 30.0  # --idle-timeout: a silent connection, or one request's upload, seconds
    max_queue: int = 32  # --max-queue: requests waiting for a place in the batch beyond those it holds
    max_batch: int = 16  # --max-batch: requests generated together, one row each of one batch
    max_connections: int = 64  # --max-connections: open connections, one thread each

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name == "max_queue" else 1e-9  # a queue of 0 is allowed: one request at a time
            if value is not None and not value >= low:
                flag = "--" + f.name.replace("_", "-")
                raise LoratuneError(f"{flag} must be {'0 or more' if low == 0 else 'positive'} (got {value})")


class ClientGone(Exception):
    """The client closed its connection: stop working for it."""


class TimedOut(Exception):
    """The request ran past --request-timeout."""


def context_length(model) -> int | None:
    """The longest sequence the model was built for, from its config (None when the config does not say)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
