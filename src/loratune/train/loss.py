"""Next-token cross-entropy on trained tokens only, without computing logits for the positions that carry no loss.

With short responses after long prompts most positions are masked; projecting only the kept hidden states onto the
(often 50k-150k wide) vocabulary saves most of the LM head's compute and memory.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from loratune.data.build import IGNORE


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens) for one micro-batch."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE  # position p predicts token p+1
    # input_ids with attention_mask (padded rows) or position_ids and packed_bounds (packed rows)
    inputs = {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}  # no KV cache in training
    wanted = targets[keep[:, :-1]]
    if not accepts_logits_to_keep(model):
        logits = model(**inputs).logits[keep]
    elif MASK_SUPPORTED:
        logits = model(**inputs, logits_to_keep=keep).logits  # (n_kept, vocab)
    else:  # older transformers 5.x: keep the union of the rows' positions, then pick each row's own
        positions = keep.any(0).nonzero().squeeze(1)
        logits = model(**inputs, logits_to_keep=positions).logits[keep[:, positions]]
    loss = F.cross_entropy(logits.float(), wanted, reduction="sum")
    return loss, int(wanted.numel())


def _mask_supported() -> bool:
    """transformers >= 5.2x accepts a boolean (batch, positions) mask for `logits_to_keep`."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


MASK_SUPPORTED = _mask_supported()


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
