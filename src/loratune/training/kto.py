"""KTO (train.method kto; Ethayarajh et al. 2024, arXiv:2402.01306): unpaired completions, each labelled desirable
or undesirable, in the passes and with the reference of the pair methods (training.preference).

A KTO record is one sample that carries its label (data.shapes.kto_side); `LabelledSamples` views the samples as
items. The KL term is estimated on mismatched samples: each item's prompt followed by the completion of the item
before it in the step (the first item's by the last's). With r = log pi(y|x) - log pi_ref(y|x) summed over the
completion's tokens (pi_ref: the base with the adapter disabled) and beta = train.beta (0: the paper's 0.1):

    z_ref = max(0, mean over the step's items of log pi(y'|x) - log pi_ref(y'|x)), y' the mismatched completion
    loss  = lambda_D (1 - sigmoid(beta (r - z_ref)))  for a desirable completion  (train.kto_desirable_weight)
            lambda_U (1 - sigmoid(beta (z_ref - r)))  for an undesirable one      (train.kto_undesirable_weight)

a step's loss the mean over its items. z_ref is the paper's estimate of KL(pi || pi_ref) from mismatched
prompt/completion pairs as TRL's KTOTrainer makes them, completions rotated by one within the batch, so the
mismatched completions are the batch's own (TRL: "for best results"): detached (no gradient flows through it) and,
here, over the whole optimizer step (all its passes and processes, by forward passes without gradients before the
backward passes), so it does not depend on micro_batch or packing. A mismatched sample is cut to the longer of the
two samples it comes from. The reference's log-probs of the items are precomputed once (train.precompute_reference);
those of the mismatched samples, paired anew each step as the batches are drawn, take a pass of the base per step.

Logged per step as the pair methods' rewards are: reward_chosen / reward_rejected, the mean beta r of the step's
desirable / undesirable samples (TRL's rewards/chosen and rewards/rejected; absent from a step that has none),
reward_margin their difference, kl the step's z_ref. A step with one class only trains as any other.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from loratune.data.samples import IGNORE, Sample
from loratune.errors import LoratuneError
from loratune.training.allocator import each_pass
from loratune.training.preference import Items, Options, Reference, pass_groups, sequence_logps


@dataclass(frozen=True)
class Labelled:
    index: int  # the sample's place in the data (its reference log-probs' row when precomputed); -1: a mismatched one
    sample: Sample
    desirable: bool

    @property
    def sides(self) -> tuple[Sample]:  # one sample: its passes and its reference table's one column
        return (self.sample,)

    @property
    def input_ids(self) -> list[int]:  # what the loop counts as a step's tokens: the data's own
        return self.sample.input_ids


class LabelledSamples(Items):
    """KTO samples seen as items with their labels."""

    @property
    def total(self) -> int:
        return len(self.samples)

    def item(self, i: int) -> Labelled:
        at = self.indices[i]
        own = self.samples[at]
        if own.desirable is None:  # an eval file of other records (training data is checked by its shapes)
            raise LoratuneError("train.method kto needs labelled records (prompt, completion, label) in all its data")
        return Labelled(at, own, own.desirable)


def mismatched_items(items: list[Labelled]) -> list[Labelled]:
    """Each item's prompt with the completion of the item before it (the first's with the last's): TRL's rotation."""
    return [Labelled(-1, mismatched(item.sample, items[i - 1].sample), item.desirable) for i, item in enumerate(items)]


def mismatched(own: Sample, other: Sample) -> Sample:
    """`own`'s prompt (its tokens before the first trained one), then `other`'s completion (from its first trained
    token on), cut to the longer of the two samples (so a pass holds no more than training's own samples)."""
    p, q = _first_trained(own), _first_trained(other)
    longest = max(len(own.input_ids), len(other.input_ids))
    ids = (own.input_ids[:p] + other.input_ids[q:])[:longest]
    labels = ([IGNORE] * p + other.labels[q:])[:longest]
    return Sample(ids, labels)


def _first_trained(sample: Sample) -> int:
    return next((i for i, label in enumerate(sample.labels) if label != IGNORE), len(sample.labels))


def kto_losses(o: Options, logps, ref, kl: float, desirable) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, reward beta r) per sample; `desirable` a bool tensor, `kl` the step's z_ref."""
    r = logps - ref
    loss = torch.where(
        desirable,
        o.kto_desirable_weight * (1 - torch.sigmoid(o.beta * (r - kl))),
        o.kto_undesirable_weight * (1 - torch.sigmoid(o.beta * (kl - r))),
    )
    return loss, o.beta * r.detach()


@torch.no_grad()
def kl_sums(model, items: list[Labelled], start: dict | None, micro_batch: int, pad_id: int, packed: int, device,
            rank: int = 0, world: int = 1) -> torch.Tensor:  # fmt: skip
    """(sum of log pi(y'|x) - log pi_ref(y'|x) over this process's share of the items' mismatched samples, their
    count): z_ref is max(0, the first over the second), summed over the processes."""
    inner = getattr(model, "module", model)  # DDP's module: no gradients here, so nothing to synchronise
    reference = Reference(True, start)  # a pass each time: the mismatched samples are new every step
    sums = torch.zeros(2, dtype=torch.float64)
    for tensors, group, weight in pass_groups(mismatched_items(items), micro_batch, pad_id, packed, rank, world):
        ref = reference.of(inner, tensors, group, device)[:, 0]
        logps, _ = sequence_logps(inner, _on(tensors, device))
        sums += weight * torch.tensor([(logps - ref).sum().item(), len(group)], dtype=torch.float64)
    return sums


def kto_step(run, batch: list[Labelled], reference: Reference) -> tuple[float, dict]:
    """The backward passes of one optimizer step on `batch`; returns its mean loss and its rewards and z_ref."""
    tc, accelerator, model = run.config.train, run.accelerator, run.model
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    options = Options.of(tc)
    pad_id, packed = run.tokenizer.pad_token_id, run.config.packed_tokens()
    sums = kl_sums(model, batch, reference.start, tc.micro_batch, pad_id, packed, device, rank, world)
    if world > 1:
        sums = accelerator.reduce(sums.to(device), "sum").cpu()
    kl = max(0.0, sums[0].item() / max(sums[1].item(), 1))
    passes = pass_groups(batch, tc.micro_batch, pad_id, packed, rank, world)
    totals = torch.zeros(5, dtype=torch.float64)  # loss, desirable rewards and count, undesirable rewards and count
    for i, (tensors, group, weight) in enumerate(each_pass(passes, device)):
        with accelerator.no_sync(model) if i < len(passes) - 1 else nullcontext():
            loss, rewards, desirable = _losses(model, tensors, group, reference, options, kl, device)
            accelerator.backward(loss.sum() * (weight * world / len(batch)))
        totals += weight * _sums(loss, rewards, desirable)
    if world > 1:
        totals = accelerator.reduce(totals.to(device), "sum").cpu()
    return totals[0].item() / max(totals[2].item() + totals[4].item(), 1), _figures(totals) | {"kl": round(kl, 6)}


@torch.no_grad()
def evaluate_labelled(model, items: list[Labelled], options: Options, micro_batch: int, pad_id: int,
                      start: dict | None = None) -> dict:  # fmt: skip
    """The eval samples' mean loss, reward margin and z_ref (theirs, dropout off), as training measures them; the
    reference is the base, or the base with the adapter weights `start` (Reference)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    reference = Reference(True, start)
    sums = kl_sums(model, items, start, micro_batch, pad_id, 0, device)  # the eval set as one batch
    kl = max(0.0, sums[0].item() / max(sums[1].item(), 1))
    totals = torch.zeros(5, dtype=torch.float64)
    for tensors, group, _ in pass_groups(items, micro_batch, pad_id, 0):
        totals += _sums(*_losses(model, tensors, group, reference, options, kl, device))
    model.train(was_training)
    row = {"eval_loss": round(totals[0].item() / max(len(items), 1), 6)}
    margin = _figures(totals).get("reward_margin")
    return row | ({"eval_margin": margin} if margin is not None else {}) | {"eval_kl": round(kl, 6)}


def _losses(model, tensors, group: list[Labelled], reference: Reference, options: Options, kl: float, device):
    """(loss, reward, desirable) per sample of a pass of the items' own samples."""
    ref = reference.of(model, tensors, group, device)[:, 0]
    logps, _ = sequence_logps(model, _on(tensors, device))
    desirable = torch.tensor([item.desirable for item in group], device=logps.device)
    loss, rewards = kto_losses(options, logps, ref, kl, desirable)
    return loss, rewards, desirable


def _sums(loss, rewards, desirable) -> torch.Tensor:
    sums = [loss.sum(), rewards[desirable].sum(), desirable.sum(), rewards[~desirable].sum(), (~desirable).sum()]
    return torch.tensor([x.item() for x in sums], dtype=torch.float64)


def _figures(totals: torch.Tensor) -> dict:
    """Mean rewards of the desirable (reward_chosen) and undesirable (reward_rejected) samples, and their margin."""
    _, chosen, n_chosen, rejected, n_rejected = totals.tolist()
    figures = {}
    if n_chosen:
        figures["reward_chosen"] = round(chosen / n_chosen, 6)
    if n_rejected:
        figures["reward_rejected"] = round(rejected / n_rejected, 6)
    if n_chosen and n_rejected:
        figures["reward_margin"] = round(chosen / n_chosen - rejected / n_rejected, 6)
    return figures


def _on(tensors: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in tensors.items()}
