"""Micro-batches: padded rows (dynamic padding) or padding-free packed rows.

Padded: each micro-batch is a (samples, longest) matrix; short samples are padded to the longest one.
Packed: the step's samples are laid end to end in one row (no padding at all), with position ids that restart at 0 for
every sample and the sample bounds, so attention never crosses from one sample into another
(see `loratune.training.packing`). A packed row holds at most `max_tokens` tokens (a long sample gets a row of its own).
"""

from __future__ import annotations

import torch

from loratune.data.samples import IGNORE, Sample


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_rows(batch: list[Sample], max_tokens: int) -> list[list[Sample]]:
    """Split a step's samples into rows of at most `max_tokens` tokens, in their order (so a step is reproducible)."""
    rows: list[list[Sample]] = []
    used = max_tokens  # forces a new row for the first sample
    for s in batch:
        if used + len(s.input_ids) > max_tokens:
            rows.append([])
            used = 0
        rows[-1].append(s)
        used += len(s.input_ids)
    return rows


def collate_packed(samples: list[Sample]) -> dict:
    """One (1, total) row of samples end to end; `packed_bounds` are the (start, end) of each sample in it."""
    ids, labels, positions, bounds = [], [], [], []
    for s in samples:
        start = len(ids)
        ids += s.input_ids
        # The first token of a sample is never predicted from the previous sample's last token.
        labels += [IGNORE] + list(s.labels[1:])
        positions += range(len(s.input_ids))
        bounds.append((start, len(ids)))
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "packed_bounds": tuple(bounds),
    }


def step_groups(
    batch: list[Sample], micro_batch: int, packed_tokens: int = 0, rank: int = 0, world: int = 1
) -> tuple[list[list[Sample]], list[float]]:
    """This process's samples of one optimizer step, grouped into forward passes, and each pass's loss weight.

    packed_tokens > 0: packed rows of up to that many tokens. Otherwise groups of `micro_batch` samples of similar
    lengths (sorted first), so dynamic padding wastes little. Under `accelerate launch` each of the `world` processes
    takes every world-th sample by length; all run the same number of passes, as DDP synchronises gradients on the
    last one, so a process with fewer repeats its last pass with weight 0. One process: the whole step, weights 1.
    """
    ordered = sorted(batch, key=lambda s: len(s.input_ids))
    shares = [batch] if world == 1 else [ordered[r::world] for r in range(world)]

    def groups(share: list[Sample]) -> list[list[Sample]]:
        if packed_tokens > 0:
            return pack_rows(share, packed_tokens)
        share = sorted(share, key=lambda s: len(s.input_ids))
        return [share[i : i + micro_batch] for i in range(0, len(share), micro_batch)]

    every = [groups(share) for share in shares]  # every process's, so all agree on the count without talking
    mine = every[rank if world > 1 else 0]
    count = max(len(g) for g in every)
    weights = [1.0] * len(mine) + [0.0] * (count - len(mine))
    return mine + [mine[-1] if mine else ordered[:1]] * (count - len(mine)), weights


def micro_batches(
    batch: list[Sample], micro_batch: int, pad_id: int, packed_tokens: int = 0, rank: int = 0, world: int = 1
) -> tuple[list[dict], list[float]]:
    """The collated forward passes of one optimizer step for this process, and their loss weights (see step_groups)."""
    groups, weights = step_groups(batch, micro_batch, packed_tokens, rank, world)
    if packed_tokens > 0:
        return [collate_packed(g) for g in groups], weights
    return [collate(g, pad_id) for g in groups], weights
