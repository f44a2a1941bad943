"""Attention for padding-free packed rows: each sample attends only to itself, at the cost of its own length.

transformers can already train on packed rows: with `position_ids` that restart at 0 and no attention mask, its
masking code detects the samples and builds a block-diagonal causal mask. But SDPA then computes the whole
(row x row) score matrix and masks most of it away: for 16 samples of 80 tokens in one row that is 16 times the
attention work of the samples themselves. Here each sample runs its own causal SDPA call (the fast causal kernel,
no mask), so a packed row costs exactly what its samples cost one by one, without a single padding token.

`use_packed_attention(model)` registers the function under its own name and switches the model to it. Without
`packed_bounds` in the call (generation, evaluation, unpacked batches) it is the stock SDPA path, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "loratune_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query (1, heads, total, dim), key/value (1, kv_heads, total, dim) -> output (1, total, heads, dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("packed_bounds", None)
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    too_long_for_window = window is not None and bounds is not None and any(e - s > window for s, e in bounds)
    if bounds is None or kwargs.get("softcap") is not None or too_long_for_window:
        # The mask transformers built from the position ids is exact here, only slower.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    # (1, heads, total, dim) is a transposed view of (total, heads, dim): a run of k samples of one length L is a
    # free view (k, heads, L, dim) of it, so one batched call covers them (raw text in full windows: the whole row).
    # One split per tensor, not a slice per run: a slice's backward writes a zero tensor of the whole row, so k
    # slices cost k rows of zeros and additions per layer; a split's backward is one concatenation.
    runs = equal_length_runs(bounds)
    sizes = [e - s for s, e, _ in runs]
    parts = []
    for (_, _, k), q, kv, v in zip(runs, *(x[0].split(sizes, dim=1) for x in (query, key, value)), strict=True):
        q, kv, v = (as_samples(x, k) for x in (q, kv, v))
        out = F.scaled_dot_product_attention(q, kv, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
        parts.append(out.transpose(1, 2).flatten(0, 1))  # (k, heads, n, dim) -> (k * n, heads, dim)
    return torch.cat(parts).unsqueeze(0), None


def as_samples(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (heads, k * length, dim), k samples of one length end to end, as (k, heads, length, dim)."""
    return x.transpose(0, 1).unflatten(0, (k, x.shape[1] // k)).transpose(1, 2)


def equal_length_runs(bounds) -> list[tuple[int, int, int]]:
    """(start, end, samples) of each run of consecutive samples of one length in `bounds` [(start, end), ...]."""
    runs = []
    for s, e in bounds:
        if runs and e - s == (runs[-1][1] - runs[-1][0]) // runs[-1][2] and s == runs[-1][1]:
            start, _, k = runs[-1]
            runs[-1] = (start, e, k + 1)
        else:
            runs.append((s, e, 1))
    return runs


def use_packed_attention(model) -> None:
    """Switch `model` (a transformers model, or a PEFT model around one) to `packed_sdpa`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)
