"""`loratune loras verify`: the exports of a tiny LLaMA adapter checked against transformers + peft; a corrupted
merged weight is caught, named in the table and makes the command exit 1."""

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from loratune import RunConfig, train
from loratune.adapters.verify import verify
from loratune.cli import main
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

REPO = Path(__file__).resolve().parents[1]
GREEDY = REPO / "build/verify-gguf/greedy"
LLAMA_CPP = REPO / "build/verify-gguf/llama_cpp_python-0.3.36/vendor/llama.cpp"


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("verify")
    records = [{"instruction": f"Say {i}", "output": f"Arr {i}"} for i in range(8)]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    config = RunConfig(
        name="pirate",
        model=ModelSpec(source=str(tiny_model)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0, targets="all-linear"),
        data=DataSpec(path=str(root / "d.jsonl"), eval_path=str(root / "eval.jsonl")),
        train=TrainSpec(max_steps=2, batch_size=8, micro_batch=8, lr=1e-2, save_every=0),
    )
    train(config, home=root / "home", show_progress=False)
    return root / "home"


def rows(output: str) -> dict[tuple[str, str], str]:
    """{(artifact, check): result} of the printed table."""
    table = [line.strip("|").split(" | ") for line in output.splitlines() if line.startswith("| ")]
    return {(a.strip(), c.strip()): r.strip() for a, c, r in table[1:]}


def test_merged_folder_and_rendering_pass_and_missing_llama_cpp_is_said(home, capsys):
    assert main(["--home", str(home), "loras", "verify", "pirate", "--tokens", "8"]) == 0
    table = rows(capsys.readouterr().out)
    assert table[("prompts", "source")].startswith("note: 3 held-out prompts of data.eval_path eval.jsonl")
    merged = "merged folder (merged for the check)"
    assert table[(merged, "logits vs base + adapter")].startswith("ok: max abs diff")
    assert table[(merged, "greedy tokens, own generation_config")].startswith("ok: 3 / 3 answers identical")
    assert table[(merged, "prompt contract in the folder")].startswith("ok:")
    skipped = table[("GGUF adapter and merged GGUF", "llama.cpp runs")]
    assert skipped.startswith("skipped: no llama.cpp driver given (--greedy BIN")
    ollama = [r for (a, _), r in table.items() if a.startswith("Ollama")]
    assert ollama == (["ok: 3 / 3 prompts same token ids"] if shutil.which("go") else [ollama[0]])
    assert shutil.which("go") or ollama[0].startswith("skipped: Go is not installed")
    assert not [p for p in (home / "loras/pirate").iterdir() if "verify-merged" in p.name], "temporary left"


def test_a_corrupted_merged_weight_fails_and_is_named(home, capsys):
    assert main(["--home", str(home), "loras", "merge", "pirate", "--out", "pirate-merged"]) == 0
    weights = home / "models/pirate-merged/model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if "layers.1.mlp.down_proj" in k)
    tensors[key] = tensors[key] + 0.01  # one projection off by 1e-2: what a wrong merge (or scale) would leave
    save_file(tensors, weights, metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["--home", str(home), "loras", "verify", "pirate", "--tokens", "4"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "logits vs base + adapter" in line)
    assert line.startswith("| merged folder models/pirate-merged | logits vs base + adapter | FAIL: max abs diff")
    shutil.rmtree(home / "models/pirate-merged")


def test_prompts_file_and_export_verify(home, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say 1\n\nSay 7\n")
    checks = verify("pirate", home, prompts_file=prompts, tokens=4)
    assert checks[0].result.startswith("2 prompts from")
    code = main(["--home", str(home), "loras", "export", "pirate", "--verify", "--prompts-file", str(prompts)])
    out = capsys.readouterr().out
    assert code == 0 and "adapter.gguf" in out and "| merged folder (merged for the check) |" in out


@pytest.mark.long
@pytest.mark.skipif(not (GREEDY.is_file() and LLAMA_CPP.is_dir()), reason="llama.cpp not built (make verify-gguf)")
def test_gguf_files_in_llama_cpp(tmp_path, default_model_home):
    """The tiny LLaMA with the real SmolLM2 tokenizer (one llama.cpp's converter knows): f32 adapter and merged f16."""
    from transformers import AutoTokenizer

    from conftest import make_tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(default_model_home / "models" / "SmolLM2-135M-Instruct")
    model_dir = make_tiny_llama(tmp_path / "tiny-smol", tokenizer=tokenizer)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"Arr {i}"}) + "\n" for i in range(8)))
    run = RunConfig(
        name="p",
        model=ModelSpec(source=str(model_dir)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0, targets="all-linear"),
        data=DataSpec(path=str(data)),
        train=TrainSpec(max_steps=2, batch_size=8, micro_batch=8, lr=1e-2, save_every=0),
    )
    train(run, home=tmp_path / "home", show_progress=False)
    os.environ.pop("LORATUNE_LLAMA_CPP", None)
    checks = verify("p", tmp_path / "home", llama_cpp=LLAMA_CPP, greedy=GREEDY, tokens=8, limit=3)
    table = {(c.artifact, c.check): c for c in checks}
    assert table[("GGUF adapter on base f32 GGUF", "greedy tokens (up to 8)")].status == "ok"
    assert table[("merged GGUF model-f16.gguf", "greedy tokens (up to 8)")].status == "ok"
    assert table[("merged GGUF model-f16.gguf", "prompt: llama.cpp Jinja of the GGUF's template")].status == "ok"
