"""GGUF LoRA export: read the file back with gguf's reader and check every tensor and key against the PEFT adapter."""

import json

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors.torch import load_file

from loratune import LoratuneError, RunConfig, train
from loratune.adapters.export_gguf import export_gguf, gguf_tensors
from loratune.cli import main
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("export")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"Arr {i}"}) + "\n" for i in range(8)))
    config = RunConfig(
        name="pirate",
        model=ModelSpec(source=str(tiny_model)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0, targets="all-linear"),
        data=DataSpec(path=str(data)),
        train=TrainSpec(max_steps=2, batch_size=8, micro_batch=8, lr=1e-2, save_every=0),
    )
    train(config, home=root / "home", show_progress=False)
    return root / "home"


def field_value(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else value.item()


def llama_cpp_row(row: int, head_dim: int) -> int:
    """Where llama.cpp's converter puts HF row `row` of q/k: per head, the two rotary halves interleave."""
    head, within = divmod(row, head_dim)
    half = head_dim // 2
    return head * head_dim + (2 * within if within < half else 2 * (within - half) + 1)


def test_gguf_file_matches_the_peft_adapter(home, tiny_model):
    path = export_gguf("pirate", home)
    assert path == home / "loras" / "pirate" / "adapter.gguf"
    reader = GGUFReader(path)
    assert field_value(reader, "general.type") == "adapter"
    assert field_value(reader, "adapter.type") == "lora"
    assert field_value(reader, "general.architecture") == "llama"
    assert field_value(reader, "adapter.lora.alpha") == 8.0

    base = json.loads((tiny_model / "config.json").read_text())
    head_dim = base["hidden_size"] // base["num_attention_heads"]
    peft = load_file(home / "loras" / "pirate" / "adapter_model.safetensors")
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(peft) == 2 * 2 * 7  # 2 layers x 7 modules x (A, B)
    for key, value in peft.items():
        layer = int(key.split(".layers.")[1].split(".")[0])
        module = next(m for m in HF_TO_GGUF if f".{m}.lora_" in key)
        part = "lora_a" if ".lora_A." in key else "lora_b"
        t = tensors[f"blk.{layer}.{HF_TO_GGUF[module]}.weight.{part}"]
        expected = value.numpy()
        if part == "lora_b" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            permuted = np.empty_like(expected)
            for row in range(expected.shape[0]):
                permuted[llama_cpp_row(row, head_dim)] = expected[row]
            expected = permuted
        # ggml's ne lists the fastest dimension first: lora_a is ne=[in, r], lora_b ne=[r, out], as llama.cpp checks
        assert list(t.shape) == list(reversed(expected.shape)), t.name
        assert t.tensor_type.name == "F32"
        np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected, err_msg=t.name)
    assert any(np.abs(peft[k].numpy()).max() > 0 for k in peft if "lora_B" in k), "B is all zeros: nothing trained"


def test_export_cli_and_refusals(home, tiny_model, capsys):
    assert main(["--home", str(home), "loras", "export", "pirate", "--format", "gguf", "--out", "p.gguf"]) == 0
    assert "--lora" in capsys.readouterr().out and (home / "loras/pirate/p.gguf").is_file()
    assert main(["--home", str(home), "loras", "export", "pirate", "--out", "../../escape.gguf"]) == 1
    assert "invalid output file name" in capsys.readouterr().err
    with pytest.raises(LoratuneError, match="the base is a OPT model"):
        gguf_tensors(home / "loras" / "pirate", {"model_type": "opt"})
