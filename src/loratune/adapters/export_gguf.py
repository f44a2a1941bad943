"""Export a PEFT LoRA adapter as a GGUF adapter file that llama.cpp loads with `--lora`.

The layout follows llama.cpp's own convert_lora_to_gguf.py: metadata general.type = "adapter", adapter.type = "lora",
adapter.lora.alpha and general.architecture (which must equal the base GGUF's); for each adapted weight
`blk.N.attn_q.weight.lora_a` = PEFT lora_A (r x in) and `.lora_b` = lora_B (out x r), because a numpy (rows, cols)
array is a ggml tensor with ne = [cols, rows], exactly the shapes llama.cpp checks. Tensor names come from the `gguf`
package's TensorNameMap for the architecture llama.cpp's converter (convert_hf_to_gguf.py) gives the model type.
Where that converter reorders a weight's rows, lora_B's rows get the same reordering (rows of B @ A are rows of B):
LLaMA / Mistral q_proj and k_proj (rotary layout), GPT-NeoX's fused query_key_value (per head q,k,v -> q | k | v).
GPT-2's Conv1D weights are transposed by the converter, which makes them (out, in) like a Linear's: PEFT's A and B
already have that layout.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.adapters.files import clean_stale, fsync_dir, normal_permissions, temporary
from loratune.errors import LoratuneError
from loratune.training.pause import pause_point
from loratune.workspace import Workspace, check_name, inside

# transformers model_type -> (gguf.MODEL_ARCH member, the converter's row reordering of lora_B or None), as
# llama.cpp's converter registers these models (its conversion/*.py: LlamaModel, Qwen2Model, GemmaModel, ...).
ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "llama": ("LLAMA", "rotary-pairs"),
    "mistral": ("LLAMA", "rotary-pairs"),
    "qwen2": ("QWEN2", None),
    "qwen3": ("QWEN3", None),
    "gemma": ("GEMMA", None),
    "gemma3_text": ("GEMMA3", None),
    "phi": ("PHI2", None),
    "phi3": ("PHI3", None),
    "gpt_neox": ("GPTNEOX", "qkv-per-head"),
    "gpt2": ("GPT2", None),
    "glm": ("CHATGLM", None),
    "glm4": ("GLM4", None),
}
# Families loratune trains that llama.cpp has no model for (no converter class, no graph), so no base GGUF exists.
NO_LLAMA_CPP_MODEL = {"opt": "OPT", "gptj": "GPT-J", "rwkv": "RWKV-4"}
PEFT_PREFIX = "base_model.model."


def export_gguf(
    lora: str, home: str | Path | Workspace | None = None, out: str | None = None, overwrite: bool = True
) -> Path:
    """Write `lora` (a name or 'name/checkpoint-N') as `<adapter folder>/<out or adapter.gguf>`; returns the file."""
    ws = home if isinstance(home, Workspace) else Workspace.resolve(home)
    folder = adapter_path(lora, ws)
    target = inside(folder, check_name(out or "adapter.gguf", "output file name"))
    clean_stale(folder)
    if target.exists() and not overwrite:
        raise LoratuneError(f"{target} already exists")
    base_config = json.loads((base_model_path(folder, ws) / "config.json").read_text(encoding="utf-8"))
    write_lora_gguf(folder, base_config, target)
    return target


def gguf_tensors(adapter: Path, base_config: dict) -> tuple[str, float, dict[str, object]]:
    """(architecture, alpha for llama.cpp, {gguf tensor name: float32 numpy array}) for a PEFT adapter folder."""
    import gguf
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    model_type = base_config.get("model_type", "")
    if model_type not in ARCHITECTURES:
        family = NO_LLAMA_CPP_MODEL.get(model_type) or model_type
        reason = "llama.cpp has no model for it" if model_type in NO_LLAMA_CPP_MODEL else "not mapped by loratune"
        raise LoratuneError(
            f"GGUF adapter export: the base is a {family} model ('{model_type}'), {reason}; GGUF adapters are "
            f"written for {', '.join(ARCHITECTURES)} (use the PEFT adapter or `loras merge` for this one)"
        )
    if config.get("use_dora") or config.get("modules_to_save"):
        raise LoratuneError(f"{adapter}: DoRA adapters and modules_to_save cannot be expressed as a llama.cpp LoRA")
    arch_member, reorder = ARCHITECTURES[model_type]
    rank = int(config["r"])
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # llama.cpp scales by alpha / r; rsLoRA by alpha / sqrt(r)
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise LoratuneError(f"{adapter}: per-module ranks or alphas cannot be written into one GGUF alpha")

    arch_id = gguf.MODEL_ARCH[arch_member]
    arch = gguf.MODEL_ARCH_NAMES[arch_id]
    n_layers = _config_value(base_config, "num_hidden_layers", "n_layer", "num_layers")
    n_head = _config_value(base_config, "num_attention_heads", "n_head")
    n_kv_head = base_config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(arch_id, n_layers)
    weights = load_file(adapter / "adapter_model.safetensors")
    tensors = {}
    for key, value in sorted(weights.items()):
        module, sep, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if not sep or part not in ("A.weight", "B.weight"):
            raise LoratuneError(f"{adapter}: tensor {key} is not a LoRA A/B weight; it cannot go into a GGUF adapter")
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None or module.endswith(("lm_head", "embed_tokens")):
            raise LoratuneError(f"{adapter}: llama.cpp has no LoRA slot for {module}")
        value = value.float()
        if part == "B.weight" and reorder == "rotary-pairs" and module.endswith(("q_proj", "k_proj")):
            value = permute_rows(value, n_head if module.endswith("q_proj") else n_kv_head)
        if part == "B.weight" and reorder == "qkv-per-head" and module.endswith("query_key_value"):
            value = split_qkv_rows(value, n_head)
        suffix = ".lora_a" if part == "A.weight" else ".lora_b"
        tensors[target + suffix] = value.contiguous().numpy()
    return arch, alpha, tensors


def permute_rows(weight, heads: int):
    """llama.cpp's LlamaModel.permute on the output rows: each head's two rotary halves become interleaved pairs."""
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def split_qkv_rows(weight, heads: int):
    """llama.cpp's GPTNeoXModel on fused qkv rows: per head (q, k, v) becomes all q, then all k, then all v."""
    per_head = weight.reshape(heads, 3, weight.shape[0] // heads // 3, *weight.shape[1:])
    return per_head.swapaxes(0, 1).reshape(weight.shape)


def _config_value(config: dict, *keys: str) -> int:
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    raise LoratuneError(f"the base model's config.json has none of {', '.join(keys)}; GGUF export needs it")


def write_lora_gguf(adapter: Path, base_config: dict, target: Path) -> None:
    import gguf

    arch, alpha, tensors = gguf_tensors(adapter, base_config)
    tmp = temporary(target, "tmp")
    try:
        _write(gguf, tmp, arch, alpha, adapter, tensors)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    normal_permissions(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    pause_point("export-written")
    os.replace(tmp, target)
    fsync_dir(target.parent)


def _write(gguf, tmp: Path, arch: str, alpha: float, adapter: Path, tensors: dict) -> None:
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    is_checkpoint = adapter.name.startswith("checkpoint-")
    writer.add_name(f"{adapter.parent.name}-{adapter.name}" if is_checkpoint else adapter.name)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
