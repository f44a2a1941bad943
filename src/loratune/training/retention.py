"""Retention: how far the adapter moved the model away from its base on general prompts, and `train.retain`'s replay.

At the start of a run the base model (the same model, adapter disabled: no second copy in memory) answers a fixed
probe greedily through the run's prompt contract: ~90 general prompts (facts, arithmetic, instructions, short chats,
a few in Chinese, Spanish, Portuguese and Korean; probes/general.jsonl), or for a raw-text run its continuations of
neutral openings. The answers are cached in the run folder (rundir.RETENTION) and reused on resume.

At each evaluation and at the end, with the adapter on, teacher-forced on the base's own answers (one forward pass:
the base's side, its TOP likeliest next tokens at each answer position, is recorded while it answers):
- `retention_kl`: the mean per-token KL(base || adapter) of the next-token distributions (0: nothing changed), over
  the base's TOP likeliest tokens and the rest of the vocabulary as one bucket (a lower bound of the full KL);
- `retention_same`: the share of short-answer items whose every greedy choice still equals the base's (teacher-forced,
  so the adapter's greedy answer is the base's exactly when all of them agree).

`train.retain` (a weight) adds a replay of the base's answers to other general prompts (probes/replay.jsonl) to each
step, with the KL to the base distribution as their loss (self-distillation): a task adapter then changes the task and
leaves the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from loratune.adapters.files import write_json
from loratune.errors import LoratuneError
from loratune.prompting import PromptContract, render_chat, render_completion, sampling_options
from loratune.rundir import RETENTION, read_json
from loratune.training.loss import decoder_and_frozen_head
from loratune.training.sharding import is_sharded

PROBES = Path(__file__).with_name("probes")
GENERAL, REPLAY = PROBES / "general.jsonl", PROBES / "replay.jsonl"
TOP = 32  # the base's likeliest next tokens kept per answer position; the rest of its probability is one bucket
SHARE = 0.06  # train.retention_items 0: the probe's share of the run's compute it may take (in token passes)
MIN_ITEMS = 32  # ... but never fewer items than this
BATCH_TOKENS = 4096  # prompt + answer tokens per generate() call or forward pass (batches by length, fewest calls)
LOGIT_FLOATS = 1 << 24  # full-vocabulary logits a measurement keeps at once (64 MB; a 150k vocabulary: 110 rows)


@dataclass
class Item:
    prompt: list[int]  # token ids, as the run's prompt contract renders the probe's prompt
    answer: list[int]  # the base model's greedy answer (with its stop token when it stopped)
    short: bool  # a short-answer item: counted in retention_same
    top_ids: list[list[int]] = field(default_factory=list)  # per answer position: the base's TOP likeliest tokens
    top_logp: list[list[float]] = field(default_factory=list)  # ... and their log-probabilities (likeliest first)


class TopTokens:
    """A logits processor that records the TOP likeliest next tokens of each row at each step (and changes nothing)."""

    def __init__(self):
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids, scores):
        logp, ids = F.log_softmax(scores.float(), dim=-1).topk(TOP, dim=-1)
        self.steps.append((ids.cpu(), logp.cpu()))
        return scores

    def of(self, row: int, length: int) -> tuple[list[list[int]], list[list[float]]]:
        ids = [self.steps[t][0][row].tolist() for t in range(length)]
        logp = [[round(x, 5) for x in self.steps[t][1][row].tolist()] for t in range(length)]
        return ids, logp


class Retention:
    """The probe of one run: `prepare` (reads it), `answer_as_base` (once), then `measure` and `replay_loss`.

    The base's answers to the probe are generated when the probe is first measured (the base is the model with the
    adapter disabled, the same at any step), so the first step does not wait for them; the replay's (train.retain)
    before the first step, which trains on them."""

    def __init__(self, probe, replay, key: str, tokens: int, pad_id: int, stops: list[int]):
        self.probe, self.replay = probe, replay  # (prompt ids, short) before the base answered, then Items
        self.key, self.tokens, self.pad_id, self.stops = key, tokens, pad_id, stops
        self.seconds = 0.0  # time spent on the probe in this process (for its cost against the training time)
        self.cpu_seconds = 0.0  # ... and the CPU time (a fairer cost on a machine other programs share)
        self.cpu_mark = time.process_time()  # the process's CPU clock when training began (after answer_as_base)
        self.unanswered: tuple | None = None  # (run_dir, write, say) until the base has answered the probe

    @classmethod
    def prepare(cls, config, ws, contract: PromptContract, tokenizer) -> Retention | None:
        """The run's probe (and replay prompts with train.retain), rendered; None with train.retention off.

        A bad probe file fails here, before anything is written."""
        tc = config.train
        if not tc.retention and not tc.retain:
            return None
        path = probe_path(tc.retention_prompts, ws)
        probe = read_probe(path, contract, tokenizer) if tc.retention else []
        replay = read_probe(REPLAY, contract, tokenizer, replay=True) if tc.retain else []
        parts = [path.read_bytes() if tc.retention else b"", REPLAY.read_bytes() if tc.retain else b"",
                 json.dumps(contract.__dict__, sort_keys=True).encode(), str(tc.retention_tokens).encode(),
                 config.model.source.encode(), f"top{TOP}".encode()]  # fmt: skip
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()
        stops = list(contract.stop_token_ids) or [tokenizer.eos_token_id]
        return cls(probe, replay, key, tc.retention_tokens, tokenizer.pad_token_id, stops)

    def fit(self, items: int, trained_tokens: int, measures: int) -> None:
        """Keep `items` probe items evenly spread over the probe (0: as many as cost at most SHARE of the run).

        `trained_tokens` (tokens of all the run's steps, each one forward and backward pass, about 3 forward passes)
        and `measures` (evaluations) size the automatic choice; generating an answer counts as 2 passes."""
        if not items:
            per_item = sum(len(p) + self.tokens for p, _ in self.probe) / max(len(self.probe), 1) * (2 + measures)
            items = max(MIN_ITEMS, int(SHARE * 3 * trained_tokens / per_item))
        n = len(self.probe)
        if items < n:
            self.probe = [self.probe[i * n // items] for i in range(items)]

    def answer_as_base(self, model, run_dir: Path, write: bool, say) -> None:
        """The base's answers: from the run folder's cache when it matches, else generated (and cached if `write`).

        A cached probe is reused as it is (a resume with another train.eval_every keeps its items)."""
        started, cpu = time.perf_counter(), time.process_time()
        cached = read_json(run_dir / RETENTION)
        if cached.get("key") == self.key:
            self.probe, self.replay = _items(cached["probe"]), _items(cached["replay"])
            say(f"retention: the base model's {len(self.probe) + len(self.replay)} probe answers from {RETENTION}")
        else:
            self.replay = self._generate(model, self.replay, keep_top=False)
            self.unanswered = (run_dir, write, say)
            if not self.probe:
                self.answer_probe(model)
            elif self.replay:
                say(f"retention: the base model answered {len(self.replay)} replay prompts")
        self.seconds += time.perf_counter() - started
        self.cpu_mark = time.process_time()
        self.cpu_seconds += self.cpu_mark - cpu

    def answer_probe(self, model) -> None:
        """The base's answers to the probe, unless it has them (and the cache of all its answers, written by the main
        process)."""
        if self.unanswered is None:
            return
        run_dir, write, say = self.unanswered
        started = time.perf_counter()
        self.probe = self._generate(model, self.probe, keep_top=True)
        if write:
            record = {"key": self.key, "probe": [i.__dict__ for i in self.probe],
                      "replay": [i.__dict__ for i in self.replay]}  # fmt: skip
            write_json(run_dir / RETENTION, record)
        if self.probe:
            say(f"retention: the base model answered {len(self.probe)} probe prompts in "
                f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        self.unanswered = None

    @torch.no_grad()
    def _generate(self, model, prompts: list[tuple[list[int], bool]], keep_top: bool) -> list[Item]:
        """Greedy answers of the base; with `keep_top`, its TOP likeliest next tokens at each answer position too
        (recorded while it generates, so measuring later needs no forward pass of the base)."""
        from transformers import LogitsProcessorList

        from loratune.generator import left_padded

        peft, items = _peft(model), [None] * len(prompts)
        sharded = is_sharded(peft)  # under FSDP every process generates: each step's forward pass until all are done
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))
        was_training = peft.training
        peft.eval()
        with peft.disable_adapter():
            for chunk in batches(order, lambda i: len(prompts[i][0]) + self.tokens):
                inputs = left_padded([prompts[i][0] for i in chunk], self.pad_id, peft.device)
                record = TopTokens()
                out = peft.generate(**inputs, **sampling_options(0.0), max_new_tokens=self.tokens,
                                    eos_token_id=self.stops, pad_token_id=self.pad_id, synced_gpus=sharded,
                                    logits_processor=LogitsProcessorList([record] if keep_top else []))  # fmt: skip
                for n, (i, row) in enumerate(zip(chunk, out[:, inputs["input_ids"].shape[1] :].tolist(), strict=True)):
                    ends = [t for t, token in enumerate(row) if token in self.stops]
                    answer = row[: ends[0] + 1] if ends else row
                    top = record.of(n, len(answer)) if keep_top else ([], [])
                    items[i] = Item(prompts[i][0], answer, prompts[i][1], *top)
        peft.train(was_training)
        return items

    @torch.no_grad()
    def measure(self, model) -> dict:
        """{retention_kl, retention_same, retention_s} of the adapter now (dropout off); same is None without
        short-answer items. One forward pass of the adapter: the base's side was recorded when it answered."""
        started, cpu = time.perf_counter(), time.process_time()
        self.answer_probe(model)
        peft = _peft(model)
        was_training = peft.training
        peft.eval()
        kl_sum, tokens, same, shorts = 0.0, 0, 0, 0
        ordered = sorted(self.probe, key=lambda i: len(i.prompt) + len(i.answer))
        rows = max(1, LOGIT_FLOATS // peft.get_output_embeddings().weight.shape[0])
        for chunk in batches(ordered, lambda i: len(i.prompt) + len(i.answer), lambda i: len(i.answer), rows):
            inputs, keep = teacher_forced(chunk, self.pad_id, peft.device)
            tuned = F.log_softmax(answer_logits(model, inputs, keep), dim=-1)
            top_ids = torch.tensor([t for i in chunk for t in i.top_ids], device=tuned.device)
            top_logp = torch.tensor([t for i in chunk for t in i.top_logp], device=tuned.device)
            kl_sum += top_kl(top_ids, top_logp, tuned).sum().item()
            tokens += tuned.shape[0]
            agree = (top_ids[:, 0] == tuned.argmax(-1)).split([len(i.answer) for i in chunk])
            same += sum(bool(a.all()) for a, i in zip(agree, chunk, strict=True) if i.short)
            shorts += sum(i.short for i in chunk)
        peft.train(was_training)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.cpu_seconds += time.process_time() - cpu
        return {
            "retention_kl": round(kl_sum / max(tokens, 1), 6),
            "retention_same": round(same / shorts, 4) if shorts else None,
            "retention_s": round(seconds, 2),
        }

    def replay_items(self, step: int, count: int, seed: int) -> list[Item]:
        """The replay items of optimizer step `step`: a fixed shuffle walked `count` at a time (same on resume)."""
        n = len(self.replay)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729)).tolist()
        return [self.replay[order[(step * count + j) % n]] for j in range(min(count, n))]


def batches(items: list, length, rows=None, most_rows: int = 0) -> list[list]:
    """`items` (sorted by length) in consecutive runs of at most BATCH_TOKENS padded tokens (and, with `rows`, at
    most `most_rows` rows of logits: the answer positions a measurement keeps)."""
    found, chunk, widest, used = [], [], 0, 0
    for item in items:
        widest = max(widest, length(item))
        over = rows is not None and used + rows(item) > most_rows
        if chunk and (widest * (len(chunk) + 1) > BATCH_TOKENS or over):
            found.append(chunk)
            chunk, widest, used = [], length(item), 0
        chunk.append(item)
        used += rows(item) if rows is not None else 0
    return found + ([chunk] if chunk else [])


def replay_loss(model, items: list[Item], pad_id: int) -> tuple[torch.Tensor, int]:
    """(sum over the answers' tokens of KL(base || adapter), number of tokens): train.retain's loss on the replay.

    The base distribution comes from the same model with the adapter disabled, without dropout and without gradient;
    the adapter's in the model's current mode, with gradient."""
    peft = _peft(model)
    inputs, keep = teacher_forced(items, pad_id, peft.device)
    was_training = peft.training
    peft.eval()
    with torch.no_grad(), peft.disable_adapter():
        base = F.log_softmax(answer_logits(model, inputs, keep), dim=-1)
    peft.train(was_training)
    tuned = F.log_softmax(answer_logits(model, inputs, keep), dim=-1)
    return kl_per_token(base, tuned).sum(), base.shape[0]


def top_kl(top_ids: torch.Tensor, top_logp: torch.Tensor, tuned_logp: torch.Tensor) -> torch.Tensor:
    """KL(base || tuned) per row, over the base's TOP likeliest tokens plus the rest as one bucket.

    Grouping tokens can only lower a KL, so this is a lower bound of the full one, and equal to it when the adapter
    leaves the shape of the base's unlikely tail alone; 0 exactly when the two distributions agree."""
    tuned_top = tuned_logp.gather(-1, top_ids)
    p = top_logp.exp()
    rest_p = (1 - p.sum(-1)).clamp_min(1e-12)
    rest_q = (1 - tuned_top.exp().sum(-1)).clamp_min(1e-12)
    return (p * (top_logp - tuned_top)).sum(-1) + rest_p * (rest_p.log() - rest_q.log())


def kl_per_token(base_logp: torch.Tensor, tuned_logp: torch.Tensor) -> torch.Tensor:
    """KL(base || tuned) of each row of log-probabilities."""
    return (base_logp.exp() * (base_logp - tuned_logp)).sum(-1)


def teacher_forced(items: list[Item], pad_id: int, device) -> tuple[dict, torch.Tensor]:
    """Right-padded prompt + answer rows, and the mask of the positions that predict an answer token."""
    width = max(len(i.prompt) + len(i.answer) for i in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    keep = torch.zeros((len(items), width), dtype=torch.bool)
    for n, item in enumerate(items):
        row = item.prompt + item.answer
        ids[n, : len(row)] = torch.tensor(row)
        mask[n, : len(row)] = 1
        keep[n, len(item.prompt) - 1 : len(row) - 1] = True  # position p predicts token p + 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, keep.to(device)


def answer_logits(model, inputs: dict, keep: torch.Tensor) -> torch.Tensor:
    """float32 logits at the `keep` positions only (n_kept, vocab); the LM head sees only those when it can."""
    parts = decoder_and_frozen_head(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**inputs, use_cache=False).last_hidden_state[keep]
        return (hidden @ head.weight.T).float()
    return model(**inputs, use_cache=False).logits[keep].float()


def probe_path(given: str, ws) -> Path:
    """train.retention_prompts as given, else inside datasets/; the shipped probe when empty."""
    if not given:
        return GENERAL
    path = Path(given).expanduser()
    if not path.is_file() and not path.is_absolute() and (ws.datasets / given).is_file():
        path = ws.datasets / given
    if not path.is_file():
        raise LoratuneError(f"train.retention_prompts: no file {given} (a .jsonl or a .txt of prompts)")
    return path


def read_probe(path: Path, contract: PromptContract, tokenizer, replay: bool = False) -> list[tuple[list[int], bool]]:
    """(prompt ids, short) of each probe item that fits the run: prompts and chats for an instruction run, openings
    for a raw-text one (a .txt file's lines are either). A replay file's prompts are bare text in a raw-text run."""
    raw = contract.kind == "raw"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LoratuneError(f"train.retention_prompts: cannot read {path} ({e})") from None
    found = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(line, path, n)
        short = bool(record.get("short"))
        if raw and (record.get("opening") or (replay and record.get("prompt"))):
            found.append((render_completion(contract, tokenizer, record.get("opening") or record["prompt"]), short))
        elif not raw and (record.get("prompt") or record.get("messages")):
            messages = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
            found.append((render_chat(contract, tokenizer, messages), short))
    if not found:
        kind = 'openings ("opening")' if raw else 'prompts ("prompt" or "messages")'
        raise LoratuneError(f"train.retention_prompts: {path} has no {kind} for this run's prompt contract")
    return found


def _record(line: str, path: Path, n: int) -> dict:
    if path.suffix != ".jsonl":
        return {"prompt": line.strip(), "opening": line.strip()}
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    ok = isinstance(record, dict) and any(
        isinstance(record.get(k), str | list) for k in ("prompt", "messages", "opening")
    )
    if not ok:
        raise LoratuneError(
            f'train.retention_prompts: {path} line {n}: expected a JSON object with "prompt", "messages" or '
            '"opening" (and "short": true for a short-answer item)'
        )
    return record


def _items(rows: list[dict]) -> list[Item]:
    return [Item(r["prompt"], r["answer"], r["short"], r.get("top_ids", []), r.get("top_logp", [])) for r in rows]


def _peft(model):
    """The PeftModel inside DistributedDataParallel (disable_adapter and generate live there)."""
    return getattr(model, "module", model)
