"""An OpenAI-compatible HTTP API on the standard library's ThreadingHTTPServer (no web framework to install).

GET /v1/models, POST /v1/completions, POST /v1/chat/completions, with `"stream": true` as server-sent events.
Errors are JSON in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status for bad requests.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loratune.serve.generation import Generation, Sampling
from loratune.serve.models import ModelPool, UnknownModel

MAX_BODY = 16 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def make_server(pool: ModelPool, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    handler = type("Handler", (Handler,), {"pool": pool})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


class Handler(BaseHTTPRequestHandler):
    pool: ModelPool
    protocol_version = "HTTP/1.1"
    server_version = "loratune"
    _headers_sent = False

    def do_GET(self):
        self._answer(lambda: self._models() if self.path.rstrip("/") == "/v1/models" else self._no_route())

    def do_POST(self):
        routes = {"/v1/completions": self._completion, "/v1/chat/completions": self._chat}
        route = routes.get(self.path.rstrip("/"))
        self._answer(lambda: route(self._body()) if route else self._no_route())

    # ------------------------------------------------------------------ endpoints

    def _models(self) -> None:
        created = int(time.time())
        data = [{"id": n, "object": "model", "created": created, "owned_by": "loratune"} for n in self.pool.names()]
        self._json(200, {"object": "list", "data": data})

    def _completion(self, body: dict) -> None:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (one prompt per request)", "prompt")
        adapter, sampling = self._common(body, default_max_tokens=16)
        tok = self.pool.tokenizer
        ids = tok(prompt)["input_ids"]
        self._generate(body, adapter, ids, sampling, chat=False)

    def _chat(self, body: dict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, f"messages[{i}] needs a 'role' and a 'content'", "messages")
            turns.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}].content")})
        adapter, sampling = self._common(body, default_max_tokens=256)
        tok = self.pool.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, f"{self.pool.base_name} has no chat template; use /v1/completions", "model")
        ids = tok.apply_chat_template(turns, add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        self._generate(body, adapter, ids, sampling, chat=True)

    def _common(self, body: dict, default_max_tokens: int) -> tuple[str | None, Sampling]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required (GET /v1/models lists them)", "model")
        try:
            adapter = self.pool.adapter_of(model)
        except UnknownModel as e:
            raise ApiError(404, str(e), "model", "model_not_found") from None
        if body.get("n", 1) != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or default_max_tokens
        sampling = Sampling(
            max_tokens=_number(max_tokens, "max_tokens", int, 1),
            temperature=_number(body.get("temperature", 1.0), "temperature", float, 0.0, 2.0),
            top_p=_number(body.get("top_p", 1.0), "top_p", float, 0.0, 1.0),
            stop=stop,
            seed=None if body.get("seed") is None else _number(body["seed"], "seed", int),
        )
        return adapter, sampling

    def _generate(self, body: dict, adapter: str | None, ids: list[int], sampling: Sampling, chat: bool) -> None:
        model_name, created = body["model"], int(time.time())
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"
        stream = bool(body.get("stream"))
        with self.pool.use(adapter) as model:
            generation = Generation(model, self.pool.tokenizer, ids, sampling)
            if not stream:
                text = "".join(generation.pieces())
                choice = {"index": 0, "finish_reason": generation.finish_reason, "logprobs": None}
                choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
                usage = {
                    "prompt_tokens": len(ids),
                    "completion_tokens": generation.completion_tokens,
                    "total_tokens": len(ids) + generation.completion_tokens,
                }
                payload = {"id": ident, "object": kind, "created": created, "model": model_name}
                self._json(200, payload | {"choices": [choice], "usage": usage})
                return
            self._start_events()
            chunk = {"id": ident, "object": kind + (".chunk" if chat else ""), "created": created, "model": model_name}
            if chat:
                self._event(chunk | {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            for piece in generation.pieces():
                part = {"delta": {"content": piece}} if chat else {"text": piece, "logprobs": None}
                self._event(chunk | {"choices": [{"index": 0, "finish_reason": None} | part]})
            last = {"delta": {}} if chat else {"text": "", "logprobs": None}
            self._event(chunk | {"choices": [{"index": 0, "finish_reason": generation.finish_reason} | last]})
            self._send_chunk(b"data: [DONE]\n\n")
            self._send_chunk(b"")

    # ------------------------------------------------------------------ plumbing

    def _answer(self, work) -> None:
        self._headers_sent = False
        try:
            work()
        except ApiError as e:
            kind = "invalid_request_error" if e.status < 500 else "server_error"
            self._json(e.status, {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (e.g. stopped reading a stream)
        except Exception as e:  # our bug: the traceback goes to the log, the client still gets a JSON answer
            traceback.print_exc()
            if not self._headers_sent:
                self._json(500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error"}})

    def _no_route(self) -> None:
        routes = "GET /v1/models, POST /v1/completions, POST /v1/chat/completions"
        raise ApiError(404, f"no route {self.command} {self.path} (there are {routes})")

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            raise ApiError(400, "the request needs a JSON body (at most 16 MB)")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:  # the request body may be unread: do not reuse this connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _start_events(self) -> None:
        self._headers_sent = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _event(self, payload: dict) -> None:
        self._send_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts (the text parts are joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    raise ApiError(400, f"{where} must be a string or a list of text parts", "messages")


def _number(value, name: str, kind: type, low: float | None = None, high: float | None = None):
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise ApiError(400, f"'{name}' must be a {'whole ' if kind is int else ''}number", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(400, f"'{name}' must be between {low} and {high}", name)
    return kind(value)
