"""An OpenAI-compatible HTTP API on the standard library's http.server (no web framework to install).

GET /v1/models, POST /v1/completions, POST /v1/chat/completions, with `"stream": true` as server-sent events, and
vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter ({lora_name, lora_path}) to add adapters at run time.
Errors are JSON in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status for bad requests.
A request is checked in the order that costs the server least: the API key, the body's size, its fields and limits,
the prompt's length (tokenized, outside the model's queue); only then does it wait for its place in the batch.
"""

from __future__ import annotations

import hmac
import io
import json
import socket
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler

from loratune.errors import LoratuneError
from loratune.prompting import render_chat, render_completion
from loratune.sampling import Sampling
from loratune.serve.connections import LimitedServer, RequestReader, client_gone
from loratune.serve.generation import Generation
from loratune.serve.limits import ClientGone, Limits, TimedOut
from loratune.serve.models import AdapterRefused, ModelPool, UnknownModel
from loratune.serve.queue import QueueFull
from loratune.serve.request import ApiError, check_prompt, read_sampling, text_of


def make_server(
    pool: ModelPool,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    api_key: str | None = None,
) -> LimitedServer:
    limits = limits or Limits()
    handler = type("Handler", (Handler,), {"pool": pool, "limits": limits, "api_key": api_key or None})
    return LimitedServer((host, port), handler, limits)


class Handler(BaseHTTPRequestHandler):
    pool: ModelPool
    limits: Limits
    api_key: str | None
    generation: Generation | None = None  # the request's generation, once it has its turn at the model
    protocol_version = "HTTP/1.1"
    server_version = "loratune"
    _headers_sent = False
    body_read = True  # False while a POST's body is still unread (then it is drained before closing)

    def setup(self):
        super().setup()
        self.rfile.close()  # the standard reader: closed, or the socket's file descriptor would outlive it
        self.reader = RequestReader(self.connection, self.limits, lambda: self.server.mark(self.connection, False))
        self.rfile = io.BufferedReader(self.reader, 64 * 1024)

    def handle_one_request(self):
        self.reader.next_request()
        self.server.mark(self.connection, waiting=True)
        super().handle_one_request()

    def do_GET(self):
        self._answer(lambda: self._models() if self.path.rstrip("/") == "/v1/models" else self._no_route())

    def finish(self):
        super().finish()
        if getattr(self, "command", None) == "POST" and not self.body_read:
            self._drain()

    def _drain(self) -> None:
        """Read (and drop) what the client is still sending of a body we refused before closing: closing a socket
        with unread input resets the connection, and the client might never see our answer."""
        budget, end = max(self.limits.max_body, 1 << 20), time.monotonic() + 2
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while budget > 0 and time.monotonic() < end:
                self.connection.settimeout(max(0.01, end - time.monotonic()))
                data = self.connection.recv(min(budget, 65536))
                if not data:
                    break
                budget -= len(data)
        except OSError:
            pass

    def do_POST(self):
        self.body_read = False
        routes = {
            "/v1/completions": self._completion,
            "/v1/chat/completions": self._chat,
            "/v1/load_lora_adapter": self._load_lora,
            "/v1/unload_lora_adapter": self._unload_lora,
        }
        route = routes.get(self.path.rstrip("/"))
        self._answer(lambda: route(self._body()) if route else self._no_route())

    # ------------------------------------------------------------------ endpoints

    def _models(self) -> None:
        created = int(time.time())
        data = [{"object": "model", "created": created, "owned_by": "loratune"} | m for m in self.pool.models()]
        self._json(200, {"object": "list", "data": data})

    def _load_lora(self, body: dict) -> None:
        try:
            self.pool.add(body.get("lora_name"), body.get("lora_path"))
        except LoratuneError as e:
            raise ApiError(400, str(e).splitlines()[0], "lora_path" if "lora_path" in str(e) else "lora_name") from None
        self._text(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    def _unload_lora(self, body: dict) -> None:
        try:
            self.pool.remove(body.get("lora_name"))
        except UnknownModel as e:
            raise ApiError(404, str(e), "lora_name", "model_not_found") from None
        except LoratuneError as e:
            raise ApiError(400, str(e), "lora_name") from None
        self._text(200, f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

    def _completion(self, body: dict) -> None:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (one prompt per request)", "prompt")
        adapter, sampling, given = self._common(body, default_max_tokens=16)
        self._refuse_far_too_long(prompt)
        ids = render_completion(self.pool.contract(adapter), self.pool.tokenizer, prompt)  # bare text, BOS as trained
        self._generate(body, adapter, ids, sampling, given, chat=False)

    def _chat(self, body: dict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, f"messages[{i}] needs a 'role' and a 'content'", "messages")
            turns.append({"role": m["role"], "content": text_of(m.get("content"), f"messages[{i}].content")})
        adapter, sampling, given = self._common(body, default_max_tokens=256)
        self._refuse_far_too_long("".join(t["content"] for t in turns))
        try:  # through the adapter's prompt contract: its chat template, or its format file, as it was trained
            ids = render_chat(self.pool.contract(adapter), self.pool.tokenizer, turns)
        except LoratuneError as e:  # a raw-text adapter, a model without a chat template, a turn the format lacks
            raise ApiError(400, f"{e}; use /v1/completions", "messages") from None
        self._generate(body, adapter, ids, sampling, given, chat=True)

    def _common(self, body: dict, default_max_tokens: int) -> tuple[str | None, Sampling, bool]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required (GET /v1/models lists them)", "model")
        try:
            adapter = self.pool.adapter_of(model)
        except UnknownModel as e:
            raise ApiError(404, str(e), "model", "model_not_found") from None
        except AdapterRefused as e:
            raise ApiError(400, str(e), "model", "model_not_usable") from None
        sampling, given = read_sampling(body, self.limits, default_max_tokens)
        return adapter, sampling, given

    def _max_prompt_tokens(self) -> int:
        return min(self.limits.max_prompt_tokens or self.pool.context, self.pool.context)

    def _refuse_far_too_long(self, text: str) -> None:
        """Refuse a text far over --max-prompt-tokens after tokenizing only its start: a 1 MB prompt costs ~45 MB
        and seconds of CPU to tokenize whole, for an answer known from its first few thousand characters."""
        limit = self._max_prompt_tokens()
        head = 8 * limit  # characters; English runs ~4 per token
        if len(text) > head and len(self.pool.tokenizer(text[:head])["input_ids"]) > limit:
            raise ApiError(
                400,
                f"the prompt has more than {limit} tokens; this server allows at most {limit} (--max-prompt-tokens)",
            )

    def _generate(
        self, body: dict, adapter: str | None, ids: list[int], sampling: Sampling, given: bool, chat: bool
    ) -> None:
        check_prompt(ids, sampling, given, self._max_prompt_tokens(), self.pool.context)
        model_name, created = body["model"], int(time.time())
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"
        gone = lambda: client_gone(self.connection)  # noqa: E731
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            generation = self.generation = self.pool.submit(adapter, ids, sampling)
            pieces = generation.pieces(gone, deadline)
            if not body.get("stream"):
                text = "".join(pieces)
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
            self._stream(generation, pieces, ident, kind, created, model_name, chat)
        except QueueFull as e:
            error = ApiError(503, str(e), None, "server_busy")
            error.headers["Retry-After"] = str(e.retry_after)
            raise error from None
        except UnknownModel as e:  # an added adapter, removed since the request was checked
            raise ApiError(404, str(e), "model", "model_not_found") from None
        except AdapterRefused as e:
            raise ApiError(400, str(e), "model", "model_not_usable") from None
        except TimedOut as e:
            if not self._headers_sent:
                raise ApiError(503, str(e), None, "timeout") from None
            self._event({"error": {"message": str(e), "type": "server_error", "param": None, "code": "timeout"}})
            self._end_stream()

    def _stream(self, generation: Generation, pieces, ident: str, kind: str, created: int, model_name: str, chat: bool):
        self._start_events()
        chunk = {"id": ident, "object": kind + (".chunk" if chat else ""), "created": created, "model": model_name}
        if chat:
            self._event(chunk | {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        try:
            for piece in pieces:
                part = {"delta": {"content": piece}} if chat else {"text": piece, "logprobs": None}
                self._event(chunk | {"choices": [{"index": 0, "finish_reason": None} | part]})
        finally:
            pieces.close()  # a failed write ends the loop: stop the generation now, not when it is collected
        last = {"delta": {}} if chat else {"text": "", "logprobs": None}
        self._event(chunk | {"choices": [{"index": 0, "finish_reason": generation.finish_reason} | last]})
        self._end_stream()

    # ------------------------------------------------------------------ plumbing

    def _answer(self, work) -> None:
        self._headers_sent, self.generation = False, None
        self.server.mark(self.connection, waiting=False)
        try:
            if not self._authorized():
                error = ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'", None)
                error.code = "invalid_api_key"
                error.headers["WWW-Authenticate"] = "Bearer"
                raise error
            work()
        except ApiError as e:
            kind = "invalid_request_error" if e.status < 500 else "server_error"
            self._json(
                e.status, {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}}, e.headers
            )
        except (ClientGone, ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away, or stopped reading: nobody to answer
            g = self.generation
            done = g and f"its generation stopped after {g.completion_tokens} of {g.sampling.max_new_tokens} tokens"
            self.log_message("%s", f"the client left; {done or 'nothing was generated for it'}")
        except Exception as e:  # our bug: the traceback goes to the log, the client still gets a JSON answer
            traceback.print_exc()
            if not self._headers_sent:
                self._json(500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error"}})
            self.close_connection = True

    def _authorized(self) -> bool:
        if not self.api_key:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        # header values arrive decoded as latin-1: encoding back gives the client's bytes; compared in constant time
        given = token.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.api_key.encode())

    def _no_route(self) -> None:
        routes = (
            "GET /v1/models, POST /v1/completions, POST /v1/chat/completions, POST /v1/load_lora_adapter, "
            "POST /v1/unload_lora_adapter"
        )
        raise ApiError(404, f"no route {self.command} {self.path} (there are {routes})")

    def _body(self) -> dict:
        text = (self.headers.get("Content-Length") or "").strip()
        if not text.isdigit():
            raise ApiError(400, f"the request needs a JSON body with a Content-Length in bytes (got {text[:20]!r})")
        length = int(text)
        if length == 0:
            raise ApiError(400, "the request needs a JSON body")
        if length > self.limits.max_body:
            raise ApiError(
                400, f"the body has {length} bytes; this server takes at most {self.limits.max_body} (--max-body)"
            )
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ClientGone()
        self.body_read = True
        self.reader.request_read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _text(self, status: int, text: str) -> None:  # vLLM answers the adapter routes in plain text
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
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

    def _end_stream(self) -> None:
        self._send_chunk(b"data: [DONE]\n\n")
        self._send_chunk(b"")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
