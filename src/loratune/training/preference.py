"""Preference tuning (train.method dpo / ipo / simpo / orpo; kto in training.kto, on these passes and this reference)
in the same loop as supervised fine-tuning.

A preference record becomes two samples side by side in the data (chosen, then rejected: see
data.shapes.preference_sides); `Pairs` views them as pairs, and a step's pairs are trained in passes that hold whole
pairs, so each pair's loss sees both of its sides. A sample's log-probability is the sum of its trained tokens'.

The losses, as the papers write them (p: the adapter's sequence log-probs, r: the reference's, the base model with the
adapter disabled, so no second copy is held; beta: train.beta, 0 taking the method's default):
- DPO (Rafailov et al. 2023, arXiv:2305.18290): -log sigmoid(beta * ((p_c - r_c) - (p_r - r_r))); with
  train.label_smoothing e, the conservative DPO of Mitchell 2023: -(1 - e) log sigmoid(h) - e log sigmoid(-h).
- IPO (Azar et al. 2023, arXiv:2310.12036): ((p_c - r_c) - (p_r - r_r) - 1 / (2 beta))^2 on summed log-probs.
- SimPO (Meng et al. 2024, arXiv:2405.14734), no reference: -log sigmoid(beta * (p_c / |c| - p_r / |r|) - gamma).
- ORPO (Hong et al. 2024, arXiv:2403.07691), no reference: the chosen side's mean token NLL plus
  lambda * -log sigmoid(log odds_c - log odds_r), odds = P / (1 - P) with P the mean-token probability exp(p / |y|).
A step's loss is the mean over its pairs; the rewards logged are the implicit ones of each method (DPO / IPO:
beta (p - r); SimPO: beta p / |y|; ORPO: the mean token log-prob), accuracy the share of pairs whose chosen reward
is the higher.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from loratune.data.batching import collate, collate_packed
from loratune.data.samples import Sample
from loratune.errors import LoratuneError
from loratune.training.allocator import each_pass
from loratune.training.loss import kept_logits, trained_positions

NEEDS_REFERENCE = ("dpo", "ipo", "kto")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}  # the papers' (ORPO: lambda, its own)


@dataclass(frozen=True)
class Pair:
    index: int  # the pair's place in the data (its reference log-probs' row when precomputed)
    chosen: Sample
    rejected: Sample

    @property
    def sides(self) -> tuple[Sample, Sample]:  # the samples of an item that passes and the reference table hold
        return self.chosen, self.rejected

    @property
    def input_ids(self) -> list[int]:  # what the loop counts as a step's tokens: both sides'
        return self.chosen.input_ids + self.rejected.input_ids


class Items(Sequence):
    """The training items of a preference method over its samples (pairs; KTO's labelled samples, training.kto), by
    their index in the data; `total` items in all of it (the reference table's rows)."""

    def __init__(self, samples: Sequence[Sample], indices: list[int] | None = None):
        self.samples = samples
        self.indices = indices if indices is not None else list(range(self.total))

    @property
    @abstractmethod
    def total(self) -> int: ...

    @abstractmethod
    def item(self, i: int):
        """The item at position `i` of this view."""

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.item(i)

    def subset(self, positions: list[int]) -> Items:
        return type(self)(self.samples, [self.indices[p] for p in positions])

    def fingerprint(self) -> str:
        digest = hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes())
        if hasattr(self.samples, "fingerprint"):  # a data.store.SampleSet: its stores' digests
            digest.update(self.samples.fingerprint().encode())
        else:
            for s in self.samples:
                digest.update(np.asarray(s.input_ids + s.labels, dtype=np.int64).tobytes())
                digest.update(repr(s.desirable).encode() if s.desirable is not None else b"")
        return digest.hexdigest()[:16]


class Pairs(Items):
    """Samples laid out chosen, rejected, chosen, rejected ... seen as pairs."""

    def __init__(self, samples: Sequence[Sample], indices: list[int] | None = None):
        if len(samples) % 2:
            raise LoratuneError(f"preference data gave {len(samples)} samples, not whole pairs")
        super().__init__(samples, indices)

    @property
    def total(self) -> int:
        return len(self.samples) // 2

    def item(self, i: int) -> Pair:
        at = self.indices[i]
        return Pair(at, self.samples[2 * at], self.samples[2 * at + 1])


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of trained tokens' log-probs, number of trained tokens) per sample of a collated pass, in sample order.

    Padded passes hold a sample per row; packed ones one row of samples end to end (`packed_bounds`)."""
    keep, wanted, inputs = trained_positions(batch)
    logits = kept_logits(model, inputs, keep)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    token_logps = -F.cross_entropy(logits, wanted, reduction="none")
    rows, columns = keep.nonzero(as_tuple=True)
    if "packed_bounds" in batch:
        starts = torch.tensor([s for s, _ in batch["packed_bounds"]], device=columns.device)
        owner = torch.searchsorted(starts, columns, right=True) - 1
        n = len(batch["packed_bounds"])
    else:
        owner, n = rows, keep.shape[0]
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, owner, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
    return sums, counts


@dataclass
class Options:
    method: str
    beta: float
    label_smoothing: float = 0.0
    simpo_gamma: float = 1.0
    orpo_lambda: float = 0.1
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0

    @classmethod
    def of(cls, tc) -> Options:
        beta = tc.beta or DEFAULT_BETA[tc.method]
        return cls(tc.method, beta, tc.label_smoothing, tc.simpo_gamma, tc.orpo_lambda, tc.kto_desirable_weight,
                   tc.kto_undesirable_weight)  # fmt: skip


def pair_losses(o: Options, logps, counts, ref=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen reward, rejected reward) per pair; `logps` / `counts` / `ref` are (pairs, 2): chosen, rejected."""
    pc, pr = logps[:, 0], logps[:, 1]
    if o.method in NEEDS_REFERENCE:
        dc, dr = pc - ref[:, 0], pr - ref[:, 1]
        if o.method == "dpo":
            h = o.beta * (dc - dr)
            loss = -(1 - o.label_smoothing) * F.logsigmoid(h) - o.label_smoothing * F.logsigmoid(-h)
        else:
            loss = (dc - dr - 1 / (2 * o.beta)) ** 2
        return loss, o.beta * dc.detach(), o.beta * dr.detach()
    mc, mr = pc / counts[:, 0].clamp(min=1), pr / counts[:, 1].clamp(min=1)
    if o.method == "simpo":
        loss = -F.logsigmoid(o.beta * (mc - mr) - o.simpo_gamma)
        return loss, o.beta * mc.detach(), o.beta * mr.detach()
    # ORPO: log odds = log P - log(1 - P), with P = exp(mean token log-prob) < 1
    log_odds = (mc - mr) - (_log1m_exp(mc) - _log1m_exp(mr))
    loss = -mc - o.orpo_lambda * F.logsigmoid(log_odds)
    return loss, mc.detach(), mr.detach()


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, kept finite where x rounds to 0."""
    return torch.log1p(-torch.exp(x).clamp(max=1 - 1e-7))


def pass_groups(items: list, micro_batch: int, pad_id: int, packed_tokens: int, rank: int = 0, world: int = 1):
    """This process's share of a step's items (pairs; KTO's samples) as collated passes of whole items, each with its
    items and its weight (each pass's samples: the items' sides in turn, chosen, rejected, ...).

    Pairs go micro_batch / 2 to a padded pass (a pair at least), KTO's samples micro_batch, or into packed rows of up
    to `packed_tokens`. Under `accelerate launch` every process runs as many passes (DDP synchronises on the last):
    one with fewer repeats its last with weight 0."""
    every = [_groups(items[r::world], micro_batch, packed_tokens) for r in range(world)]
    mine, count = every[rank], max(len(g) for g in every)
    weights = [1.0] * len(mine) + [0.0] * (count - len(mine))
    mine = mine + [mine[-1] if mine else items[:1]] * (count - len(mine))
    passes = []
    for group, weight in zip(mine, weights, strict=True):
        samples = [s for item in group for s in item.sides]
        collated = collate_packed(samples) if packed_tokens > 0 else collate(samples, pad_id)
        passes.append((collated, group, weight))
    return passes


def _groups(items: list, micro_batch: int, packed_tokens: int) -> list[list]:
    per_pass = max(1, micro_batch // len(items[0].sides)) if items else 1
    groups, current, used = [], [], 0
    for item in items:
        size = sum(len(s.input_ids) for s in item.sides)
        full = used + size > packed_tokens if packed_tokens > 0 else len(current) >= per_pass
        if current and full:
            groups.append(current)
            current, used = [], 0
        current.append(item)
        used += size
    return groups + [current] if current else groups


class Reference:
    """The reference model's sequence log-probs: the base with the adapter disabled (no second copy in memory), or,
    for a run started from another adapter (adapter.init_from), the base with that adapter's weights swapped in;
    computed per pass, or once for all items before training (train.precompute_reference) and looked up."""

    def __init__(self, needed: bool, start: dict[str, torch.Tensor] | None = None):
        self.needed = needed
        self.start = start  # the starting adapter's weights by parameter name; None: the bare base
        self.table: torch.Tensor | None = None  # (items, sides), by the item's index, when precomputed

    @torch.no_grad()
    def precompute(self, model, items: Items, micro_batch: int, pad_id: int, device, packed_tokens: int = 0) -> None:
        """Every item's reference log-probs, in passes as training makes them (packed rows when training packs)."""
        every = [items[i] for i in range(len(items))]
        width = len(every[0].sides) if every else 2
        table = torch.full((items.total, width), float("nan"), dtype=torch.float64)
        for tensors, group, _ in pass_groups(every, micro_batch, pad_id, packed_tokens):
            logps = self._logps(model, tensors, device)
            for k, item in enumerate(group):
                table[item.index] = logps[width * k : width * (k + 1)].double().cpu()
        self.table = table

    def of(self, model, tensors, group: list, device) -> torch.Tensor | None:
        """The reference log-probs of a pass's items, (items, sides)."""
        if not self.needed:
            return None
        if self.table is not None:
            rows = [self.table[p.index] for p in group]
            if not any(torch.isnan(r).any() for r in rows):
                return torch.stack(rows).to(device=device, dtype=torch.float32)
        with torch.no_grad():
            return self._logps(model, tensors, device).view(len(group), -1)

    def _logps(self, model, tensors, device) -> torch.Tensor:
        from loratune.training.start_adapter import swapped_in

        tensors = {k: v.to(device) if torch.is_tensor(v) else v for k, v in tensors.items()}
        inner = getattr(model, "module", model)  # DDP's module: the PeftModel
        was_training = inner.training
        inner.eval()  # the reference has no dropout, precomputed or not
        try:
            with inner.disable_adapter() if self.start is None else swapped_in(inner, self.start):
                logps, _ = sequence_logps(inner, tensors)
        finally:
            inner.train(was_training)
        return logps


def preference_step(run, batch: list[Pair], reference: Reference) -> tuple[float, dict]:
    """The backward passes of one optimizer step on `batch` (pairs); returns its mean loss and the pair metrics."""
    tc, accelerator, model = run.config.train, run.accelerator, run.model
    world = accelerator.num_processes
    options = Options.of(tc)
    pad_id, packed = run.tokenizer.pad_token_id, run.config.packed_tokens()
    passes = pass_groups(batch, tc.micro_batch, pad_id, packed, accelerator.process_index, world)
    totals = torch.zeros(5, dtype=torch.float64)  # loss, chosen reward, rejected reward, correct, pairs
    for i, (tensors, group, weight) in enumerate(each_pass(passes, accelerator.device)):
        ref = reference.of(model, tensors, group, accelerator.device)
        tensors = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in tensors.items()}
        with accelerator.no_sync(model) if i < len(passes) - 1 else nullcontext():
            logps, counts = sequence_logps(model, tensors)
            loss, chosen, rejected = pair_losses(options, logps.view(-1, 2), counts.view(-1, 2), ref)
            accelerator.backward(loss.sum() * (weight * world / len(batch)))
        correct = (chosen > rejected).sum().item()
        sums = [loss.sum().item(), chosen.sum().item(), rejected.sum().item(), correct, len(group)]
        totals += weight * torch.tensor(sums, dtype=torch.float64)
    if world > 1:
        totals = accelerator.reduce(totals.to(accelerator.device), "sum").cpu()
    n = max(totals[4].item(), 1)
    loss, chosen, rejected, correct = (totals[:4] / n).tolist()
    metrics = {
        "reward_chosen": round(chosen, 6),
        "reward_rejected": round(rejected, 6),
        "reward_margin": round(chosen - rejected, 6),
        "accuracy": round(correct, 4),
    }
    return loss, metrics


@torch.no_grad()
def evaluate_pairs(model, pairs: list[Pair], options: Options, micro_batch: int, pad_id: int,
                   start: dict | None = None) -> dict:  # fmt: skip
    """The eval pairs' mean loss and preference accuracy (dropout off), as training measures them; the reference is
    the base, or the base with the adapter weights `start` (Reference)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    reference = Reference(options.method in NEEDS_REFERENCE, start)
    loss = correct = margin = 0.0
    for tensors, group, _ in pass_groups(list(pairs), micro_batch, pad_id, 0):
        ref = reference.of(model, tensors, group, device)
        tensors = {k: v.to(device) if torch.is_tensor(v) else v for k, v in tensors.items()}
        logps, counts = sequence_logps(model, tensors)
        losses, chosen, rejected = pair_losses(options, logps.view(-1, 2), counts.view(-1, 2), ref)
        loss += losses.sum().item()
        correct += (chosen > rejected).sum().item()
        margin += (chosen - rejected).sum().item()
    model.train(was_training)
    n = max(len(pairs), 1)
    return {
        "eval_loss": round(loss / n, 6),
        "eval_accuracy": round(correct / n, 4),
        "eval_margin": round(margin / n, 6),
    }
