"""Which modules get LoRA, per architecture: presets 'attention', 'attention+mlp', 'all-linear', or explicit names.

A name is a module-name suffix, as peft's `target_modules` reads it: 'q_proj' matches every '...self_attn.q_proj',
'attention.key' only RWKV's time-mixing key (not its channel-mixing 'feed_forward.key').
"""

from __future__ import annotations

from dataclasses import dataclass

from loratune.errors import LoratuneError


@dataclass(frozen=True)
class Family:
    name: str
    """What people call it (shown by `loratune models list`)."""
    attention: tuple[str, ...]
    """The 'attention' preset: the projections text-generation-webui and the LoRA paper adapt."""
    mlp: tuple[str, ...]
    """Added by 'attention+mlp' (the default)."""


_LLAMA_LIKE = (("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj"))
_FUSED_GATE_UP = (("q_proj", "v_proj"), ("gate_up_proj", "down_proj"))  # GLM's MLP keeps gate and up in one matrix

# config.json's model_type -> family
FAMILIES: dict[str, Family] = {
    "llama": Family("LLaMA", *_LLAMA_LIKE),
    "mistral": Family("Mistral", *_LLAMA_LIKE),
    "qwen2": Family("Qwen2", *_LLAMA_LIKE),
    "qwen3": Family("Qwen3", *_LLAMA_LIKE),
    "gemma": Family("Gemma", *_LLAMA_LIKE),
    "gemma2": Family("Gemma 2", *_LLAMA_LIKE),
    "gemma3_text": Family("Gemma 3", *_LLAMA_LIKE),
    "smollm3": Family("SmolLM3", *_LLAMA_LIKE),
    "exaone4": Family("EXAONE 4", *_LLAMA_LIKE),
    "phi": Family("Phi", ("q_proj", "v_proj"), ("fc1", "fc2")),
    "phi3": Family("Phi-3", ("qkv_proj",), ("gate_up_proj", "down_proj")),
    "opt": Family("OPT", ("q_proj", "v_proj"), ("fc1", "fc2")),
    "gptj": Family("GPT-J", ("q_proj", "v_proj"), ("fc_in", "fc_out")),
    "gpt_neox": Family("GPT-NeoX", ("query_key_value",), ("dense_h_to_4h", "dense_4h_to_h")),
    "gpt2": Family("GPT-2", ("c_attn",), ("c_fc", "mlp.c_proj")),  # attn.c_proj is the attention output
    "rwkv": Family(
        "RWKV",
        ("attention.key", "attention.value", "attention.receptance"),  # time mixing, RWKV's attention
        ("feed_forward.key", "feed_forward.value", "feed_forward.receptance"),  # channel mixing
    ),
    "glm": Family("GLM", *_FUSED_GATE_UP),
    "glm4": Family("GLM-4", *_FUSED_GATE_UP),
    # THUDM's original ChatGLM (remote code only): GPT-NeoX-like fused projections
    "chatglm": Family("ChatGLM", ("query_key_value",), ("dense_h_to_4h", "dense_4h_to_h")),
}
PRESETS = ("attention", "attention+mlp", "all-linear")

# MLP classes whose forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x)): training keeps two activations for
# them instead of three (training/fused_mlp.py); tests/test_fused_mlp.py checks each class's source.
SWIGLU_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "OlmoMLP", "Olmo2MLP", "GraniteMLP"}

# Families whose causal-LM head is exactly `lm_head(decoder(...).last_hidden_state)`: no logit scaling or soft-capping,
# so training's loss can project the head in chunks (training/loss.py) and the estimate counts only a chunk's logits.
PLAIN_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "gpt_neox", "gptj", "opt", "gpt2"}
HEAD_CHUNK = 256  # rows of logits that chunked loss keeps at once: 256 x 50k vocabulary x 4 bytes = 50 MB


def resolve_targets(model, targets: str) -> list[str] | str:
    """Module-name suffixes for peft's `target_modules` (or 'all-linear'), checked against the model."""
    if targets == "all-linear":
        return "all-linear"
    full_names = linear_module_paths(model)
    linear = linear_module_names(model)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if targets in ("attention", "attention+mlp"):
        family = FAMILIES.get(model_type) or _family_by_modules(full_names)
        if family is None:
            raise LoratuneError(
                f"no '{targets}' preset for model type '{model_type}'; pass module names with --adapter.targets "
                f"(linear modules in this model: {', '.join(linear)}) or use 'all-linear'"
            )
        names = list(family.attention) + (list(family.mlp) if targets == "attention+mlp" else [])
    else:
        names = [n.strip() for n in targets.split(",") if n.strip()]
    missing = [n for n in names if not _matches(n, full_names)]
    if missing:
        raise LoratuneError(
            f"target module(s) {', '.join(missing)} not found in this {model_type or 'model'}; "
            f"its linear modules are: {', '.join(linear)}"
        )
    return names


def linear_module_paths(model) -> list[str]:
    """Full names of the linear layers (nn.Linear and GPT-2's Conv1D), the LM head excluded."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        full
        for full, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and module is not head and _is_base_layer(full)
    ]


def linear_module_names(model) -> list[str]:
    """Distinct last name parts of the linear layers, the LM head excluded (e.g. q_proj, v_proj, ...)."""
    names = []
    for full in linear_module_paths(model):
        short = full.rsplit(".", 1)[-1]
        if short not in names:
            names.append(short)
    return names


def _is_base_layer(full: str) -> bool:
    """Not a layer peft added (lora_A/lora_B), so names read the same before and after wrapping."""
    return not any(part in ("lora_A", "lora_B", "base_layer") for part in full.split("."))


def _matches(name: str, full_names: list[str]) -> bool:
    return any(full == name or full.endswith("." + name) for full in full_names)


def _family_by_modules(full_names: list[str]) -> Family | None:
    """An architecture we have no entry for (often remote code) may still use familiar names: the first family whose
    attention names all exist (e.g. q_proj and v_proj) is the guess."""
    for family in FAMILIES.values():
        if all(_matches(n, full_names) for n in family.attention + family.mlp):
            return family
    return None
