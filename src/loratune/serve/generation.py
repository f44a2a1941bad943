"""One generation request: prompt token ids in, text pieces out (as they are produced), then why it stopped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0  # OpenAI's default; 0 means greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


class Generation:
    """Iterate `pieces()` for the text; afterwards `finish_reason` ('stop' or 'length') and `completion_tokens`."""

    def __init__(self, model, tokenizer, input_ids: list[int], sampling: Sampling):
        self.model, self.tokenizer, self.input_ids, self.sampling = model, tokenizer, input_ids, sampling
        self.finish_reason = "stop"
        self.completion_tokens = 0

    def pieces(self) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        s, tok = self.sampling, self.tokenizer
        if s.seed is not None:
            torch.manual_seed(s.seed)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        ids = torch.tensor([self.input_ids], device=self.model.device)
        sampling = (
            {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
            if s.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        result: dict = {}

        def run() -> None:  # generate() in a thread feeds the streamer; errors are re-raised below
            try:
                with torch.no_grad():
                    result["out"] = self.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=s.max_tokens,
                        pad_token_id=tok.pad_token_id,
                        streamer=streamer,
                        **({"stop_strings": s.stop, "tokenizer": tok} if s.stop else {}),
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
        for piece in streamer:
            text += piece
            cut = min((i for i in (text.find(x) for x in s.stop) if i >= 0), default=-1)
            if cut >= 0:
                if cut > sent:
                    yield text[sent:cut]
                stopped = True
                break
            if len(text) - hold > sent:
                yield text[sent : len(text) - hold]
                sent = len(text) - hold
        worker.join()
        if "error" in result:
            raise result["error"]
        if not stopped and len(text) > sent:
            yield text[sent:]
        generated = result["out"][0, len(self.input_ids) :]
        self.completion_tokens = int(generated.numel())
        ended = stopped or (self.completion_tokens and int(generated[-1]) in _eos_ids(self.model, tok))
        self.finish_reason = "length" if self.completion_tokens >= s.max_tokens and not ended else "stop"


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
