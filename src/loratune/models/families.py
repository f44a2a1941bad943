"""Which modules get LoRA, per architecture: presets 'attention', 'attention+mlp', 'all-linear', or explicit names."""

from __future__ import annotations

from torch import nn

from loratune.errors import LoratuneError

# model_type -> (attention projections to adapt by default, MLP projections)
_LLAMA_LIKE = (["q_proj", "v_proj"], ["gate_proj", "up_proj", "down_proj"])
PRESETS: dict[str, tuple[list[str], list[str]]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": (["qkv_proj"], ["gate_up_proj", "down_proj"]),
    "phi": (["q_proj", "v_proj"], ["fc1", "fc2"]),
    "opt": (["q_proj", "v_proj"], ["fc1", "fc2"]),
    "gptj": (["q_proj", "v_proj"], ["fc_in", "fc_out"]),
    "gpt_neox": (["query_key_value"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "gpt2": (["c_attn"], ["c_fc", "c_proj"]),
}


def resolve_targets(model: nn.Module, targets: str) -> list[str] | str:
    """Module-name suffixes for peft's `target_modules` (or 'all-linear'), checked against the model."""
    linear = linear_module_names(model)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if targets == "all-linear":
        return "all-linear"
    if targets in ("attention", "attention+mlp"):
        if model_type not in PRESETS:
            raise LoratuneError(
                f"no '{targets}' preset for model type '{model_type}'; pass module names with --adapter.targets "
                f"(linear modules in this model: {', '.join(linear)}) or use 'all-linear'"
            )
        attention, mlp = PRESETS[model_type]
        names = attention + (mlp if targets == "attention+mlp" else [])
    else:
        names = [n.strip() for n in targets.split(",") if n.strip()]
    missing = [n for n in names if n not in linear]
    if missing:
        raise LoratuneError(
            f"target module(s) {', '.join(missing)} not found in this {model_type or 'model'}; "
            f"its linear modules are: {', '.join(linear)}"
        )
    return names


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last name parts of the linear layers, the LM head excluded (e.g. q_proj, v_proj, ...)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for full, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and module is not head:
            short = full.rsplit(".", 1)[-1]
            if short not in names:
                names.append(short)
    return names
