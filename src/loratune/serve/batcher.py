"""Continuous batching: concurrent requests generate together, one token per row per step of one model forward.

One thread owns the model's forward passes. At each step it lets waiting requests into the batch (up to --max-batch
rows): their prompts, left-padded, go through one prefill forward, and the new rows' key/value cache is padded on
the left and joined to the running batch's. Then one decode forward gives every row its next token, chosen with the
row's own sampling options (greedy, temperature / top-k / top-p with the row's own seeded generator, repetition
penalty), and handed to the row's request thread. A row leaves the batch when it ends (a stop token, its
max_tokens) or is cancelled (its client left, its time ran out, a stop string came), and the others go on.

Rows with different adapters share a batch: peft applies each row's LoRA through `adapter_names=` (the base model's
rows are "__base__"). Padding changes nothing for a row: its positions count only its own tokens and the attention
mask hides the padding, so a greedy row answers as it would alone.

A model whose cache is not made of plain growing layers (sliding-window, recurrent) gets new rows only when the
batch is empty (one batch at a time); a model without position ids (RWKV, Mamba: padding would change their state)
answers one request at a time.
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback

import torch

from loratune.generator import left_padded
from loratune.serve.generation import Generation
from loratune.serve.queue import WaitingLine

BASE = "__base__"  # peft's adapter name for "no adapter" in a mixed batch


class Batcher:
    def __init__(self, pool, max_batch: int, max_queue: int):
        self.pool = pool
        params = inspect.signature(pool.model.forward).parameters
        # the forward's cache argument (and output field): `cache` in transformers 5, RWKV's recurrent `state`
        self.cache_arg = next((n for n in ("cache", "past_key_values", "state") if n in params), "cache")
        # a model without position ids cannot be left-padded (RWKV, Mamba): one request at a time
        self.recurrent = self.cache_arg == "state" or "position_ids" not in params
        self.max_batch = 1 if self.recurrent else max_batch
        self.joinable = not self.recurrent  # known after the first prefill: can new rows join a running batch?
        self.line = WaitingLine(max_queue, self.max_batch)
        self.cond = threading.Condition()
        self.rows: list[Generation] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        threading.Thread(target=self._run, name="batcher", daemon=True).start()

    def submit(self, row: Generation) -> None:
        """Put a request in line for the batch (QueueFull when the line is full)."""
        with self.cond:
            free = self.max_batch - len(self.rows) if (self.joinable or not self.rows) else 0
            self.line.add(row, max(0, free))
            self.cond.notify()

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception as e:  # our bug, or out of memory: every row gets the error, the server goes on
                traceback.print_exc()
                for row in self.rows:
                    row.events.put(e)
                    self._leave(row)
                self.rows, self.cache, self.mask = [], None, None

    def _step(self) -> None:
        with self.cond:
            while not self.rows and not self.line:
                self.cond.wait()
            for row in self.line.drop(lambda r: not r.cancelled.is_set()):
                self.pool.release(row)
            places = self.max_batch - len(self.rows) if (self.joinable or not self.rows) else 0
            new = self.line.take(places)
        with self.pool.lock, torch.no_grad():
            self._drop_finished()
            if new:
                try:
                    self._prefill(new)
                except Exception as e:  # e.g. out of memory for these prompts: they fail, the running rows go on
                    traceback.print_exc()
                    for row in new:
                        if row not in self.rows:
                            row.events.put(e)
                            self.pool.release(row)
            if self.rows:
                self._decode()

    # ------------------------------------------------------------------ the model

    def _forward(self, rows: list[Generation], ids: torch.Tensor, mask, positions, cache):
        model = self.pool.model
        kwargs = {self.cache_arg: cache, "use_cache": True}
        if not self.recurrent:
            kwargs |= {"attention_mask": mask, "position_ids": positions, "logits_to_keep": 1}
        if getattr(model, "peft_config", None):  # a PeftModel: each row with its own adapter, or none
            kwargs["adapter_names"] = [row.peft_name or BASE for row in rows]
        out = model(input_ids=ids, **kwargs)
        return out.logits[:, -1], getattr(out, self.cache_arg)

    def _prefill(self, new: list[Generation]) -> None:
        device = self.pool.model.device
        inputs = left_padded([r.input_ids for r in new], self.pool.pad_id, device)
        mask = inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts only its own tokens
        logits, cache = self._forward(new, inputs["input_ids"], mask, positions, None)
        if self.rows:
            self._join(cache, mask)
        else:
            self.cache, self.mask = cache, mask
            self.joinable = not self.recurrent and _growing_layers(cache)
        now = time.monotonic()
        for row in new:
            row.started = now
            if row.options.get("do_sample"):
                row.rng = torch.Generator(device=logits.device)
                if row.sampling.seed is None:
                    row.rng.seed()
                else:
                    row.rng.manual_seed(row.sampling.seed % 2**64)
        self.rows.extend(new)
        self._choose(new, logits)

    def _decode(self) -> None:
        rows, device = self.rows, self.pool.model.device
        ids = torch.tensor([[r.pending] for r in rows], device=device)
        if not self.recurrent:
            self.mask = torch.cat([self.mask, torch.ones((len(rows), 1), dtype=self.mask.dtype, device=device)], 1)
        positions = torch.tensor([[r.length] for r in rows], device=device)
        logits, self.cache = self._forward(rows, ids, self.mask, positions, self.cache)
        for r in rows:
            r.length += 1
        self._choose(rows, logits)

    def _join(self, cache, mask: torch.Tensor) -> None:
        """The new rows' cache and mask below the running ones, the shorter padded on the left."""
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)])
            old.values = torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not (r.done or r.cancelled.is_set())]
        if len(keep) == len(self.rows):
            return
        for i, row in enumerate(self.rows):
            if i not in keep:
                self._leave(row)
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = self.mask = None
            return
        if self.recurrent:
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        if self.joinable:  # columns that are padding in every row left: cut them
            first = int(self.mask.any(0).nonzero()[0])
            if first:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
                self.mask = self.mask[:, first:]

    def _leave(self, row: Generation) -> None:
        if row.started is not None:
            self.line.request_took(time.monotonic() - row.started)
        self.pool.release(row)

    # ------------------------------------------------------------------ choosing tokens

    def _choose(self, rows: list[Generation], logits: torch.Tensor) -> None:
        logits = logits.float()
        picks = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            o = row.options
            if o.get("do_sample") or o.get("repetition_penalty"):
                picks[i] = _pick(logits[i], row)
        for row, token in zip(rows, picks, strict=True):
            row.tokens.append(token)
            row.pending = token
            row.events.put(token)
            if token in row.eos_ids:
                row.done = True
                row.events.put("stop")
            elif len(row.tokens) >= row.sampling.max_new_tokens:
                row.done = True
                row.events.put("length")


def _pick(scores: torch.Tensor, row: Generation) -> int:
    """One row's next token as transformers' generate() picks it: repetition penalty, then temperature, top-k,
    top-p, then a draw from the row's own generator (or the likeliest token when greedy)."""
    o = row.options
    penalty = o.get("repetition_penalty")
    if penalty:
        seen = torch.tensor(row.input_ids + row.tokens, device=scores.device).unique()
        s = scores[seen]
        scores = scores.clone()
        scores[seen] = torch.where(s < 0, s * penalty, s / penalty)
    if not o.get("do_sample"):
        return int(scores.argmax())
    scores = scores / o["temperature"]
    if o.get("top_k"):
        kth = torch.topk(scores, min(o["top_k"], scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if o.get("top_p") is not None and o["top_p"] < 1.0:
        ordered, index = torch.sort(scores)  # ascending, as transformers' TopPLogitsWarper
        cumulative = ordered.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - o["top_p"]
        remove[-1] = False  # the likeliest token always stays
        scores = scores.masked_fill(remove.scatter(0, index, remove), -float("inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=row.rng))


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if not missing:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)


def _growing_layers(cache) -> bool:
    """Is the cache made only of plain growing key/value layers (which can be padded and joined)?"""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
