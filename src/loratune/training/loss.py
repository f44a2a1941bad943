"""Next-token cross-entropy on trained tokens only, without computing logits for the positions that carry no loss.

With short responses after long prompts most positions are masked; projecting only the kept hidden states onto the
(often 50k-150k wide) vocabulary saves most of the LM head's compute and memory.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from loratune.data.build import IGNORE
from loratune.models.families import HEAD_CHUNK, PLAIN_HEAD_FAMILIES
from loratune.training.sharding import is_sharded


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens) for one micro-batch."""
    keep, wanted, inputs = trained_positions(batch)
    parts = decoder_and_frozen_head(model)
    if parts is not None:  # the LM head and the cross-entropy in chunks, never a full (positions x vocab) tensor
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state[keep]
        return ChunkedHeadCrossEntropy.apply(hidden, head.weight, wanted), int(wanted.numel())
    loss = F.cross_entropy(kept_logits(model, inputs, keep).float(), wanted, reduction="sum")
    return loss, int(wanted.numel())


def trained_positions(batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(keep: the (rows, positions) whose next token is trained, those next tokens, the model's inputs)."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE  # position p predicts token p+1
    # input_ids with attention_mask (padded rows) or position_ids and packed_bounds (packed rows)
    inputs = {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}  # no KV cache in training
    return keep, targets[keep[:, :-1]], inputs


def kept_logits(model, inputs: dict, keep: torch.Tensor) -> torch.Tensor:
    """The logits at the `keep` positions only, (n_kept, vocab), in row-major order of `keep`."""
    if not accepts_logits_to_keep(model):
        return model(**inputs).logits[keep]
    if mask_supported():
        return model(**inputs, logits_to_keep=keep).logits
    # older transformers 5.x: keep the union of the rows' positions, then pick each row's own
    positions = keep.any(0).nonzero().squeeze(1)
    return model(**inputs, logits_to_keep=positions).logits[keep[:, positions]]


@functools.cache  # asked at the first loss, not at import: importing this module loads no transformers modeling code
def mask_supported() -> bool:
    """transformers >= 5.2x accepts a boolean (batch, positions) mask for `logits_to_keep`."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


def unwrapped(model):
    """The PeftModel (or plain model) inside DistributedDataParallel, for looking at it (not for calling it)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def accepts_logits_to_keep(model) -> bool:
    base = unwrapped(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


CHUNK = HEAD_CHUNK  # rows of logits alive at once (the estimate counts the same)


def decoder_and_frozen_head(model):
    """(decoder, lm_head) when the chunked loss applies: a plain-head family with a frozen, bias-free linear head.

    Not under DistributedDataParallel or FSDP: calling the decoder directly would skip DDP's forward, which its
    gradient synchronisation needs, or FSDP's root forward (and the head's weight is a shard there); both run the
    whole model with `logits_to_keep`.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or is_sharded(model):
        return None
    base = unwrapped(model)
    head = base.get_output_embeddings()
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_FAMILIES or type(head) is not torch.nn.Linear:
        return None
    if head.bias is not None or head.weight.requires_grad:
        return None
    return base.get_decoder(), head


class ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of `hidden @ weight.T` against `targets`, `CHUNK` rows at a time.

    The gradient with respect to `hidden` is computed during the forward pass, chunk by chunk, and kept (positions x
    hidden size) instead of the (positions x vocabulary) logits and probabilities autograd would otherwise keep. The
    head is frozen (no gradient for `weight`), so nothing else is needed in the backward pass.

    Every chunk's logits go into one buffer, turned into probabilities in place: a (CHUNK x vocabulary) tensor is
    larger than glibc's mmap threshold, so a fresh one per chunk (and logsumexp's temporary) was mapped and faulted in
    each time; with the buffer, a chunk reads and writes its logits five times (max, exp, sum, divide, gradient).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        fp32 = hidden.dtype == weight.dtype == torch.float32
        buffer = hidden.new_empty((min(CHUNK, hidden.shape[0]), weight.shape[0])) if fp32 else None
        for i in range(0, hidden.shape[0], CHUNK):
            rows_in, target = hidden[i : i + CHUNK], targets[i : i + CHUNK]
            if fp32:
                logits = torch.mm(rows_in, weight.T, out=buffer[: rows_in.shape[0]])
            else:
                logits = (rows_in @ weight.T).float()
            rows = torch.arange(logits.shape[0], device=logits.device)
            picked = logits[rows, target]
            peak = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # softmax numerators, in place
            total = probs.sum(dim=-1, keepdim=True)
            loss += (total.log() + peak - picked[:, None]).sum()  # logsumexp - the target's logit
            if grad is not None:  # d loss / d logits = softmax - one-hot
                probs.div_(total)
                probs[rows, target] -= 1
                grad[i : i + CHUNK] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None
