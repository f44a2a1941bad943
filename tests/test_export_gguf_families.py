"""GGUF adapter export for every family llama.cpp has a model for: the tensor names are those of the architecture's
gguf tensor map (what llama.cpp looks up), the shapes those llama.cpp checks, rows reordered where its converter
reorders them; families without a llama.cpp model are refused in one line naming the family."""

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGUFReader
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from loratune import LoratuneError
from loratune.adapters.export_gguf import ARCHITECTURES, gguf_tensors, split_qkv_rows, write_lora_gguf
from test_families import build, tiny_config

REPO = Path(__file__).resolve().parents[1]
VENDORED = REPO / "build/verify-gguf/llama_cpp_python-0.3.36/vendor/llama.cpp"
LLAMA_CPP = Path(os.environ.get("LORATUNE_LLAMA_CPP") or VENDORED)

# What each family's linear layers become in llama.cpp (fused weights stay fused, as the converter keeps)
EXPECTED = {
    "llama": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "mistral": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "qwen2": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "qwen3": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "gemma": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "gemma3_text": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "phi": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"},
    "phi3": {"attn_qkv", "attn_output", "ffn_up", "ffn_down"},
    "gpt_neox": {"attn_qkv", "attn_output", "ffn_up", "ffn_down"},
    "gpt2": {"attn_qkv", "attn_output", "ffn_up", "ffn_down"},
    "glm": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"},
    "glm4": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"},
}


def adapter_for(model_type: str, root: Path) -> tuple[Path, Path, dict]:
    """(base folder, PEFT adapter folder, base config) with random A and B on every linear layer but the head."""
    base = build(model_type, root / "base")
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(root / "adapter")
    return base, root / "adapter", json.loads((base / "config.json").read_text())


def module_shapes(base: Path) -> dict[str, tuple[int, int]]:
    """{module name: (out, in)} of the base's linear layers (Conv1D stores (in, out); llama.cpp's converter flips)."""
    from transformers.pytorch_utils import Conv1D

    model = AutoModelForCausalLM.from_pretrained(base)
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            shapes[name] = tuple(reversed(module.weight.shape))
        elif isinstance(module, torch.nn.Linear):
            shapes[name] = tuple(module.weight.shape)
    return shapes


@pytest.mark.parametrize("model_type", list(EXPECTED))
def test_gguf_adapter_names_and_shapes(model_type, tmp_path):
    base, adapter, base_config = adapter_for(model_type, tmp_path)
    target = tmp_path / "adapter.gguf"
    write_lora_gguf(adapter, base_config, target)
    reader = GGUFReader(target)
    arch_id = gguf.MODEL_ARCH[ARCHITECTURES[model_type][0]]
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == gguf.MODEL_ARCH_NAMES[arch_id]
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch_id]}  # the names llama.cpp loads for it
    kinds = set()
    for t in reader.tensors:
        block, layer, kind, weight, part = t.name.split(".")
        assert (block, weight, part in ("lora_a", "lora_b")) == ("blk", "weight", True), t.name
        assert "blk.{bid}." + kind in allowed, t.name
        kinds.add(kind)
    assert kinds == EXPECTED[model_type]
    assert len(reader.tensors) == 2 * 2 * len(EXPECTED[model_type])  # 2 layers x (A, B) x each weight once
    # Shapes as llama.cpp checks them against the base weight: lora_a ne = [in, r], lora_b ne = [r, out].
    shapes = module_shapes(base)
    names = gguf.get_tensor_name_map(arch_id, 2)
    by_gguf = {names.get_name(m + ".weight", try_suffixes=(".weight",)): s for m, s in shapes.items()}
    tensors = {t.name: t for t in reader.tensors}
    for name, t in tensors.items():
        out, inp = by_gguf[name.rsplit(".", 1)[0]]
        assert list(t.shape) == ([inp, 4] if name.endswith("lora_a") else [4, out]), name


def test_gpt_neox_fused_qkv_rows_follow_the_converter(tmp_path):
    """llama.cpp's GPTNeoXModel turns per-head (q, k, v) rows into q | k | v: lora_B's rows move the same way."""
    base, adapter, base_config = adapter_for("gpt_neox", tmp_path)
    _, _, tensors = gguf_tensors(adapter, base_config)
    from safetensors.torch import load_file

    peft = load_file(adapter / "adapter_model.safetensors")
    b = peft["base_model.model.gpt_neox.layers.0.attention.query_key_value.lora_B.weight"]
    heads, head_dim = 4, 16
    expected = torch.cat([b.reshape(heads, 3, head_dim, 4)[:, i].reshape(-1, 4) for i in range(3)])  # the converter's
    np.testing.assert_array_equal(tensors["blk.0.attn_qkv.weight.lora_b"], expected.numpy())
    np.testing.assert_array_equal(split_qkv_rows(b, heads).numpy(), expected.numpy())


@pytest.mark.parametrize("model_type, family", [("opt", "OPT"), ("gptj", "GPT-J"), ("rwkv", "RWKV-4")])
def test_families_llama_cpp_cannot_run_are_refused_in_one_line(model_type, family, tmp_path):
    _, adapter, base_config = adapter_for(model_type, tmp_path)
    with pytest.raises(
        LoratuneError, match=f"the base is a {family} model \\('{model_type}'\\), llama.cpp has no"
    ) as e:
        gguf_tensors(adapter, base_config)
    assert "\n" not in str(e.value)


@pytest.mark.long
@pytest.mark.skipif(not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(), reason="llama.cpp's converter is not here")
# Only LLaMA: the pinned converter cannot convert the other tiny configs themselves (measured 2026-12-02: qwen2's BPE
# pre-tokenizer hash is unknown to it, gemma / phi3 want a sentencepiece tokenizer.model, gpt2 wants n_ctx and
# gpt_neox rotary_pct, which current transformers no longer write into config.json).
@pytest.mark.parametrize("model_type", ["llama"])
def test_adapter_tensors_exist_in_the_converted_base(model_type, tmp_path, default_model_home):
    """The base converted by llama.cpp's own converter holds every weight the adapter names, in the shape it needs."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_home / "models" / "SmolLM2-135M-Instruct")  # a BPE it knows
    base = tmp_path / "base"
    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    config = tiny_config(model_type, tok)
    config.update(ids)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tok.save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    write_lora_gguf(tmp_path / "adapter", json.loads((base / "config.json").read_text()), tmp_path / "a.gguf")
    command = [sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(base), "--outtype", "f32"]
    env = {**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py")}
    done = subprocess.run([*command, "--outfile", str(tmp_path / "b.gguf")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    weights = {t.name: list(t.shape) for t in GGUFReader(tmp_path / "b.gguf").tensors}
    for t in GGUFReader(tmp_path / "a.gguf").tensors:
        name, part = t.name.rsplit(".", 1)
        assert name in weights, f"{t.name}: the base GGUF has no {name}"
        inp, out = weights[name]  # ne = [in, out]
        assert list(t.shape) == ([inp, 4] if part == "lora_a" else [4, out]), t.name
