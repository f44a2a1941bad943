"""One generation request: prompt token ids in, text pieces out (as they are produced), then why it stopped.

A generation can be cut short from outside: its client left (checked every few steps by a stopping criterion, and by
the request thread when a write fails) or it ran past its deadline. Either way model.generate() returns at its next
step, so the model is free for the next request within one token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from transformers import StoppingCriteria

from loratune.prompting import PromptContract, sampling_options
from loratune.serve.limits import ClientGone, TimedOut

POLL_SECONDS = 0.2  # how often the generation asks whether its client is still there


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0  # OpenAI's default; 0 means greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


class Generation:
    """Iterate `pieces()` for the text; afterwards `finish_reason` ('stop' or 'length') and `completion_tokens`.

    Args:
        client_gone: called every POLL_SECONDS during generation; True stops it and `pieces()` raises ClientGone.
        deadline: a time.monotonic() past which generation stops and `pieces()` raises TimedOut.
    """

    def __init__(
        self,
        model,
        tokenizer,
        input_ids: list[int],
        sampling: Sampling,
        client_gone: Callable[[], bool] | None = None,
        deadline: float | None = None,
        contract: PromptContract | None = None,
    ):
        self.model, self.tokenizer, self.input_ids, self.sampling = model, tokenizer, input_ids, sampling
        # The prompt contract's stop ids: where the adapter was trained to end its answer.
        self.eos_ids = set(contract.stop_token_ids if contract else []) or _eos_ids(model, tokenizer)
        self.client_gone, self.deadline = client_gone, deadline
        self.finish_reason = "stop"
        self.completion_tokens = 0
        self.cancelled = threading.Event()
        self.cancel_reason: str | None = None  # 'client' or 'timeout'

    def cancel(self, reason: str | None = None) -> None:
        if reason and self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancelled.set()

    def pieces(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        s, tok = self.sampling, self.tokenizer
        if s.seed is not None:
            torch.manual_seed(s.seed)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        ids = torch.tensor([self.input_ids], device=self.model.device)
        sampling = sampling_options(s.temperature, s.top_p)
        criteria = [_Cancelled(self)] + ([_StopText(tok, s.stop, len(self.input_ids))] if s.stop else [])
        result: dict = {}

        def run() -> None:  # generate() in a thread feeds the streamer; errors are re-raised below
            try:
                with torch.no_grad():
                    result["out"] = self.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=s.max_tokens,
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=sorted(self.eos_ids),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList(criteria),
                        **sampling,
                    )
            except BaseException as e:  # noqa: BLE001 - handed to the request thread
                result["error"] = e
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        # Text that could be the start of a stop string is held back until it is clearly not one.
        hold = max((len(x) for x in s.stop), default=1) - 1
        text, sent, stopped = "", 0, False
        try:
            for piece in streamer:
                text += piece
                # a stop string cannot start before `sent`: it would have been found when that text was held back
                cut = min((i for i in (text.find(x, max(0, sent - hold)) for x in s.stop) if i >= 0), default=-1)
                if cut >= 0:
                    if cut > sent:
                        yield text[sent:cut]
                    stopped = True
                    break
                if len(text) - hold > sent:
                    yield text[sent : len(text) - hold]
                    sent = len(text) - hold
        finally:
            # Whatever ended the loop (a stop string, a failed write, an exception), the model is free only when
            # generate() has returned: the caller's turn at the model ends right after this.
            if worker.is_alive():
                self.cancel()
            worker.join()
            if "out" in result:
                self.completion_tokens = int(result["out"].shape[1]) - len(self.input_ids)
        if "error" in result:
            raise result["error"]
        if self.cancel_reason == "client":
            raise ClientGone()
        if self.cancel_reason == "timeout":
            raise TimedOut(f"the generation ran past --request-timeout after {len(text)} characters")
        if not stopped and len(text) > sent:
            yield text[sent:]
        generated = result["out"][0, len(self.input_ids) :]
        ended = stopped or (self.completion_tokens and int(generated[-1]) in self.eos_ids)
        self.finish_reason = "length" if self.completion_tokens >= s.max_tokens and not ended else "stop"


class _Cancelled(StoppingCriteria):
    """A stopping criterion: stop when the generation is cancelled, its deadline passes or its client left."""

    def __init__(self, generation: Generation):
        self.generation = generation
        self.last_poll = time.monotonic()

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        g = self.generation
        now = time.monotonic()
        if not g.cancelled.is_set():
            if g.deadline is not None and now > g.deadline:
                g.cancel("timeout")
            elif g.client_gone is not None and now - self.last_poll >= POLL_SECONDS:
                self.last_poll = now
                if g.client_gone():
                    g.cancel("client")
        return torch.full((input_ids.shape[0],), g.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)


class _StopText(StoppingCriteria):
    """A stopping criterion: stop once the generated text contains a stop string.

    transformers' StopStringCriteria precomputes a (vocabulary x stop length) table for every new set of stop strings
    (1.5-2.5 s of CPU for 4 strings on a 49k vocabulary, and 183 GiB for one 1 MB string); decoding the last few
    tokens at each step costs microseconds. A string of n characters spans at most 4n tokens (one byte each) plus one
    that overhangs its start.
    """

    def __init__(self, tokenizer, stop: list[str], prompt_length: int):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, stop, prompt_length
        self.window = 4 * max(len(x) for x in stop) + 1

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tail = self.tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
        done = any(x in tail for x in self.stop)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
