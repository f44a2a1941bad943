"""Merged GGUF export (`loras export --format gguf-model`): made by llama.cpp's own converter, read back with gguf.

The converter comes from a llama.cpp source tree: LORATUNE_LLAMA_CPP, or the one `make verify-gguf` unpacks into
build/verify-gguf/. Without either the tests are skipped (fetching the ~77 MB sdist is not part of `make test`);
`make verify-gguf` runs the exported files in the real llama.cpp.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from loratune import LoratuneError, RunConfig, train
from loratune.adapters.export_gguf_model import export_gguf_model
from loratune.cli import main
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

REPO = Path(__file__).resolve().parents[1]
VENDORED = REPO / "build/verify-gguf/llama_cpp_python-0.3.36/vendor/llama.cpp"
LLAMA_CPP = Path(os.environ.get("LORATUNE_LLAMA_CPP") or VENDORED)
pytestmark = pytest.mark.skipif(
    not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(),
    reason="llama.cpp's converter is not here (set LORATUNE_LLAMA_CPP or run make verify-gguf once)",
)


@pytest.fixture(scope="module")
def home(tmp_path_factory, default_model_home):
    """A tiny LLaMA with the real SmolLM2 tokenizer (a BPE llama.cpp's converter recognises), and a trained adapter."""
    from transformers import AutoTokenizer

    from conftest import make_tiny_llama

    root = tmp_path_factory.mktemp("export-model")
    tokenizer = AutoTokenizer.from_pretrained(default_model_home / "models" / "SmolLM2-135M-Instruct")
    model_dir = make_tiny_llama(root / "tiny-smol", tokenizer=tokenizer)
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"Arr {i}"}) + "\n" for i in range(8)))
    run = RunConfig(
        name="pirate",
        model=ModelSpec(source=str(model_dir)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0, targets="all-linear"),
        data=DataSpec(path=str(data)),
        train=TrainSpec(max_steps=2, batch_size=8, micro_batch=8, lr=1e-2, save_every=0),
    )
    train(run, home=root / "home", show_progress=False)
    return root / "home"


def field_value(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else value.item()


def test_merged_gguf_holds_the_merged_weights_and_the_prompt_metadata(home):
    from gguf import GGUFReader
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = export_gguf_model("pirate", home, quant="f32", llama_cpp=LLAMA_CPP)
    assert path == home / "loras" / "pirate" / "model-f32.gguf"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") and p.name != ".lock"], "temporaries left"

    adapter = home / "loras" / "pirate"
    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    plain_v = base.model.layers[1].self_attn.v_proj.weight.detach().clone()
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged_v = merged.model.layers[1].self_attn.v_proj.weight.detach()
    assert not torch.allclose(plain_v, merged_v, atol=1e-4), "the adapter changed nothing: the check would be empty"

    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert field_value(reader, "general.architecture") == "llama"
    # v_proj is not permuted by llama.cpp's LLaMA conversion, so its rows compare directly.
    torch.testing.assert_close(torch.from_numpy(tensors["blk.1.attn_v.weight"].data.copy()), merged_v)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    assert field_value(reader, "tokenizer.chat_template") == tokenizer.chat_template
    assert field_value(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id


def test_cli_export_gguf_model_q8_and_refusals(home, capsys):
    assert main(["--home", str(home), "loras", "export", "pirate", "--format", "gguf-model", "--quant", "q8_0",
                 "--llama-cpp", str(LLAMA_CPP)]) == 0  # fmt: skip
    assert "model-q8_0.gguf" in capsys.readouterr().out
    assert (home / "loras" / "pirate" / "model-q8_0.gguf").stat().st_size > 0
    with pytest.raises(LoratuneError, match="not a llama.cpp checkout"):
        export_gguf_model("pirate", home, quant="f16", llama_cpp=home)
    if shutil.which("llama-quantize") is None:
        with pytest.raises(LoratuneError, match="k-quants need llama.cpp's llama-quantize"):
            export_gguf_model("pirate", home, quant="q4_k_m", llama_cpp=LLAMA_CPP)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
