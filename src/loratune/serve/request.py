"""Checking a request's fields before any work is done for it: every bad or over-limit field is a 400 naming it."""

from __future__ import annotations

import math

from loratune.sampling import Sampling
from loratune.serve.limits import Limits

SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's seed is an int64; torch.manual_seed fails outside 64 bits


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code
        self.headers: dict[str, str] = {}


def read_sampling(body: dict, limits: Limits, default_max_tokens: int) -> tuple[Sampling, bool]:
    """The sampling fields of a request, checked; also whether max_tokens was given (else it may be shortened to fit
    the context)."""
    if _or(body, "n", 1) != 1 or isinstance(body.get("n"), bool):
        raise ApiError(400, "only n=1 is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, f"'stream' must be true or false (got {json_repr(stream)})", "stream")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
        raise ApiError(400, "'stop' must be a string or a list of non-empty strings", "stop")
    if len(stop) > limits.max_stop_strings:
        raise ApiError(
            400, f"'stop' has {len(stop)} strings; at most {limits.max_stop_strings} (--max-stop-strings)", "stop"
        )
    longest = max((len(x) for x in stop), default=0)
    if longest > limits.max_stop_length:
        raise ApiError(
            400, f"a stop string has {longest} characters; at most {limits.max_stop_length} (--max-stop-length)", "stop"
        )
    given = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = default_max_tokens if given is None else number(given, name, int, 1)
    if given is not None and max_tokens > limits.max_tokens:
        raise ApiError(
            400, f"'{name}' is {max_tokens}; this server allows at most {limits.max_tokens} (--max-tokens)", name
        )
    seed = body.get("seed")
    top_k = number(_or(body, "top_k", 0), "top_k", int, -1)  # vLLM's extra field; -1 and 0 mean off
    sampling = Sampling(
        max_new_tokens=min(max_tokens, limits.max_tokens),
        temperature=number(_or(body, "temperature", 1.0), "temperature", float, 0.0, 2.0),
        top_p=number(_or(body, "top_p", 1.0), "top_p", float, 0.0, 1.0),
        top_k=max(0, top_k),
        repetition_penalty=number(_or(body, "repetition_penalty", 1.0), "repetition_penalty", float, 0.01, 10.0),
        stop=stop,
        seed=None if seed is None else number(seed, "seed", int, *SEED_RANGE),
    )
    return sampling, given is not None


def check_prompt(ids: list[int], sampling: Sampling, max_tokens_given: bool, max_prompt: int, context: int) -> None:
    """The prompt fits --max-prompt-tokens, and prompt + max_tokens fit the model's context; an unset max_tokens is
    shortened to fit (OpenAI does the same)."""
    if len(ids) > max_prompt:
        raise ApiError(
            400, f"the prompt has {len(ids)} tokens; this server allows at most {max_prompt} (--max-prompt-tokens)"
        )
    room = context - len(ids)
    if not max_tokens_given:
        sampling.max_new_tokens = min(sampling.max_new_tokens, room)
    if sampling.max_new_tokens > room or room < 1:
        raise ApiError(
            400,
            f"the prompt ({len(ids)} tokens) + max_tokens ({sampling.max_new_tokens}) exceed the model's context of "
            f"{context} tokens: shorten the prompt or lower max_tokens",
            "max_tokens",
        )


def number(value, name: str, kind: type, low: float | None = None, high: float | None = None):
    """A JSON number checked for type, finiteness (1e999 parses as inf, NaN is accepted by Python's json) and range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"'{name}' must be a {'whole ' if kind is int else ''}number", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number (got {value})", name)
    if kind is int and value != int(value):
        raise ApiError(400, f"'{name}' must be a whole number", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ApiError(400, f"'{name}' must be {bounds} (got {value})", name)
    return kind(value)


def text_of(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts (the text parts are joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    raise ApiError(400, f"{where} must be a string or a list of text parts", "messages")


def json_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _or(body: dict, key: str, default):
    """A field's value; JSON null means "not given", as in OpenAI's API."""
    value = body.get(key)
    return default if value is None else value
