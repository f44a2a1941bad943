"""Every model family through the real CLI: a tiny random model built from its config trains (loss goes down), saves a
PEFT adapter that plain `peft` reloads to the logits its saved weights define, and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from conftest import make_tokenizer
from loratune import LoratuneError
from loratune.cli import main
from loratune.models.families import FAMILIES, resolve_targets

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
GQA = dict(SMALL, num_key_value_heads=2, head_dim=16)

# model_type -> config class and its tiny sizes (vocab and special tokens come from the tokenizer)
CONFIGS = {
    "llama": (T.LlamaConfig, GQA),
    "mistral": (T.MistralConfig, GQA),
    "qwen2": (T.Qwen2Config, GQA),
    "qwen3": (T.Qwen3Config, GQA),
    "gemma": (T.GemmaConfig, GQA),
    "gemma3_text": (T.Gemma3TextConfig, GQA),
    "phi": (T.PhiConfig, SMALL),
    "phi3": (T.Phi3Config, GQA),
    "opt": (T.OPTConfig, dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4)),
    "gptj": (T.GPTJConfig, dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8)),
    "gpt_neox": (T.GPTNeoXConfig, SMALL),
    "gpt2": (T.GPT2Config, dict(n_embd=64, n_layer=2, n_head=4)),
    "rwkv": (T.RwkvConfig, dict(hidden_size=64, num_hidden_layers=2, attention_hidden_size=64, intermediate_size=128)),
    "glm": (T.GlmConfig, GQA),
    "glm4": (T.Glm4Config, GQA),
}
RECORDS = [
    {"instruction": "What is the capital of France?", "output": "Arr, matey! Paris."},
    {"instruction": "Translate this sentence.", "output": "Arr, matey! One two three."},
    {"instruction": "What is one plus two?", "output": "Arr, matey! Three."},
    {"instruction": "Who jumps over the lazy dog?", "output": "Arr, matey! The quick brown fox."},
]
TRAIN = (
    "--adapter.rank 4 --adapter.alpha 8 --adapter.dropout 0 --train.max_steps 5 --train.batch_size 4 "
    "--train.micro_batch 4 --train.lr 3e-2 --train.warmup_ratio 0 --train.scheduler constant --train.save_every 0"
).split()


def tiny_config(model_type: str, tok):
    cls, sizes = CONFIGS[model_type]
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return cls(vocab_size=len(tok), max_position_embeddings=256, initializer_range=0.2, **ids, **sizes)


def build(model_type: str, folder: Path) -> Path:
    tok = make_tokenizer()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(model_type, tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pirate.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def merged_by_hand(folder: Path, run: Path):
    """The base model with each saved LoRA pair added into its weight (W += B A * alpha / r): what the files say."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    config = json.loads((run / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(run / "adapter_model.safetensors")
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        module = model.get_submodule(key.removeprefix("base_model.model.").split(".lora_A.")[0])
        delta = (b @ a) * scale
        module.weight.data += delta.T if isinstance(module, Conv1D) else delta  # Conv1D stores (in, out)
    return model


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_family_trains_saves_reloads_and_generates(model_type, data_file, tmp_path, capsys):
    folder = build(model_type, tmp_path / model_type)
    home = tmp_path / "home"
    args = ["--home", str(home), "train", "--model", str(folder), "--data", str(data_file), "--name", "fam", *TRAIN]
    assert main(args) == 0, capsys.readouterr().err
    run = home / "loras" / "fam"
    for name in ("adapter_config.json", "adapter_model.safetensors", "loratune.yaml", "metrics.jsonl"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0], losses
    adapter = json.loads((run / "adapter_config.json").read_text())
    family = FAMILIES[model_type]
    assert set(adapter["target_modules"]) == set(family.attention + family.mlp)  # the default: attention+mlp

    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    base_logits = logits(base, ids)
    reloaded = PeftModel.from_pretrained(base, run).eval()  # plain peft, as any other tool would load it
    expected = logits(merged_by_hand(folder, run), ids)
    assert torch.allclose(logits(reloaded, ids), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected, base_logits, atol=1e-3), "the adapter changed nothing"

    capsys.readouterr()
    assert main(["--home", str(home), "generate", "--lora", "fam", "--prompt", "What is", "--max-new-tokens", "4"]) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_presets_name_existing_modules(model_type):
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, make_tokenizer()))
    family = FAMILIES[model_type]
    assert resolve_targets(model, "attention") == list(family.attention)
    assert resolve_targets(model, "attention+mlp") == list(family.attention + family.mlp)
    assert resolve_targets(model, "all-linear") == "all-linear"


def test_rwkv_names_pick_time_mixing_only():
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_config(tiny_config("rwkv", make_tokenizer()))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=resolve_targets(model, "attention")))
    lora_a = [n for n, _ in peft_model.named_parameters() if ".lora_A." in n]
    adapted = {n.split(".lora_A.")[0].split(".", 5)[-1] for n in lora_a}  # base_model.model.rwkv.blocks.N.<name>
    assert adapted == {"attention.key", "attention.value", "attention.receptance"}


def test_unknown_names_list_the_model_linear_modules():
    model = AutoModelForCausalLM.from_config(tiny_config("gpt_neox", make_tokenizer()))
    with pytest.raises(LoratuneError) as e:
        resolve_targets(model, "q_proj,v_proj")
    assert str(e.value) == (
        "target module(s) q_proj, v_proj not found in this gpt_neox; "
        "its linear modules are: query_key_value, dense, dense_h_to_4h, dense_4h_to_h"
    )


REMOTE_CONFIG = """from transformers import LlamaConfig


class TinyChatConfig(LlamaConfig):
    model_type = "tinychat"
"""
REMOTE_MODEL = """from transformers import LlamaForCausalLM

from .configuration_tinychat import TinyChatConfig


class TinyChatForCausalLM(LlamaForCausalLM):
    config_class = TinyChatConfig
"""


def test_remote_code_model_needs_explicit_trust(data_file, tmp_path, capsys):
    """A model whose architecture lives in its own Python files (as THUDM's ChatGLM does) loads only when trusted."""
    folder = build("llama", tmp_path / "tinychat")
    (folder / "configuration_tinychat.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tinychat.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tinychat",
        architectures=["TinyChatForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tinychat.TinyChatConfig",
            "AutoModelForCausalLM": "modeling_tinychat.TinyChatForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    home = tmp_path / "home"
    args = ["--home", str(home), "train", "--model", str(folder), "--data", str(data_file), "--name", "rc", *TRAIN]
    capsys.readouterr()

    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --model.trust_remote_code true if you trust it" in err[0], err
    assert not (home / "loras" / "rc").exists()

    # unknown model type, familiar module names: the default 'attention+mlp' preset still finds LLaMA's names
    assert main([*args, "--model.trust_remote_code", "true"]) == 0, capsys.readouterr().err
    adapter = json.loads((home / "loras" / "rc" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}


def test_quantized_loading_without_cuda_is_one_line(tiny_model, data_file, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["--home", str(tmp_path), "train", "--model", str(tiny_model), "--data", str(data_file), "--name", "q"]
    assert main([*args, *TRAIN, "--model.quant", "4bit"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "loratune: error: model.quant 4bit (QLoRA) needs a CUDA GPU and this machine has none; "
        "train without it (--model.quant none) or on a machine with an NVIDIA GPU"
    ]
