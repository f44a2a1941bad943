"""One generation request: prompt token ids in, text pieces out (as the batcher produces its tokens), then why it
stopped.

The batcher (serve/batcher.py) runs many requests as rows of one batch and puts each new token of a row on that
row's `events`; the request's own thread reads them in `pieces()`, turns them into text, cuts it at a stop string
and watches its client and deadline. Cancelling a request (its client left, its time is up, a stop string came,
a write failed) takes its row out of the batch at the next step, so the others go on without it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

from loratune.sampling import Sampling
from loratune.serve.limits import ClientGone, TimedOut

POLL_SECONDS = 0.2  # how often a request asks whether its client is still there


class Generation:
    """Iterate `pieces()` for the text; afterwards `finish_reason` ('stop' or 'length') and `completion_tokens`.

    Args:
        options: the row's generate keyword arguments (loratune.sampling.generate_kwargs): sampling, stop ids and
            texts, max_new_tokens.
        adapter: the adapter the row runs with (None: the base model), as the pool names it; `peft_name` is the
            name peft knows it by.
    """

    def __init__(
        self,
        tokenizer,
        input_ids: list[int],
        sampling: Sampling,
        options: dict,
        adapter: str | None = None,
        peft_name: str | None = None,
    ):
        self.tokenizer, self.input_ids, self.sampling, self.options = tokenizer, input_ids, sampling, options
        self.adapter, self.peft_name = adapter, peft_name
        self.eos_ids = set(options.get("eos_token_id") or [])
        self.stop_texts = [*options.get("stop_strings", [])]
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # token ids, then a finish reason or an exception
        self.cancelled = threading.Event()
        self.cancel_reason: str | None = None  # 'client', 'timeout', 'stop' or 'closed'
        self.finish_reason = "stop"
        self.completion_tokens = 0  # tokens this request has read so far
        # the batcher's side of the row
        self.started: float | None = None  # time.monotonic() when it joined the batch
        self.tokens: list[int] = []
        self.done = False
        self.rng = None  # a torch.Generator for a sampled row
        self.length = len(input_ids)  # tokens of the row in the model's cache (padding not counted)
        self.pending: int | None = None  # the last token chosen, fed to the model at the next step

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancelled.set()

    def pieces(self, client_gone: Callable[[], bool] | None = None, deadline: float | None = None) -> Iterator[str]:
        # Text that could be the start of a stop string is held back until it is clearly not one.
        hold = max((len(x) for x in self.stop_texts), default=1) - 1
        text, sent, finished = Detokenizer(self.tokenizer), 0, False
        last_poll = time.monotonic()
        try:
            while True:
                try:
                    event = self.events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    event = None
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    self.cancel("timeout")
                    if self.started is None:
                        raise TimedOut("the request waited for the model longer than --request-timeout")
                    raise TimedOut(f"the generation ran past --request-timeout after {len(text.text)} characters")
                if client_gone is not None and (event is None or now - last_poll >= POLL_SECONDS):
                    last_poll = now
                    if client_gone():
                        self.cancel("client")
                        raise ClientGone()
                if event is None:
                    continue
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, str):
                    self.finish_reason = event
                    break
                self.completion_tokens += 1
                text.add(event)
                # a stop string cannot start before `sent`: it would have been found when that text was held back
                found = (text.text.find(x, max(0, sent - hold)) for x in self.stop_texts)
                cut = min((i for i in found if i >= 0), default=-1)
                if cut >= 0:
                    if cut > sent:
                        yield text.text[sent:cut]
                    self.finish_reason = "stop"
                    finished = True
                    self.cancel("stop")
                    return
                if len(text.text) - hold > sent:
                    yield text.text[sent : len(text.text) - hold]
                    sent = len(text.text) - hold
            finished = True
            text.flush()
            if len(text.text) > sent:
                yield text.text[sent:]
        finally:
            if not finished:
                self.cancel("closed")  # a failed write closed this iterator: free the row


class Detokenizer:
    """Token ids to text as they come: each new token's text is the decoded tail from a few tokens back (a token
    alone may decode differently, or to half a character), so the work per token stays small."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # the text so far (a half character at the end waits for its next token)
        self.prefix = self.read = 0  # ids[prefix:read] decoded to the text just before the unread tokens

    def add(self, token: int) -> None:
        self.ids.append(token)
        self._decode(final=False)

    def flush(self) -> None:
        self._decode(final=True)

    def _decode(self, final: bool) -> None:
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        before = decode(self.ids[self.prefix : self.read])
        now = decode(self.ids[self.prefix :])
        if now.endswith("\ufffd") and not final:  # an unfinished UTF-8 character: wait for its next bytes
            return
        self.text += now[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
