"""Loading never runs code: weights and training states are safetensors (+ JSON); pickles planted in every place
loratune loads from never execute; a model's own Python code runs only with --model.trust_remote_code."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import sum_records
from loratune import LoratuneError, train

RECORDS = sum_records(range(8), range(1, 2), "Arr! It be {}.")
DATA_FILE = "d.jsonl"
FAST = {"train.batch_size": 4, "train.micro_batch": 4, "train.save_every": 1, "adapter.rank": 4}
SRC = Path(__file__).resolve().parent.parent / "src" / "loratune"


class Payload:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    """A real torch.save file (zip + pickle), whose pickle calls os.system when loaded without weights_only."""
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "CODE-RAN"


@pytest.fixture
def trained(tiny_model, data_file, home):
    """A finished 2-step run with checkpoint-000001."""
    return train(
        model=str(tiny_model),
        data=str(data_file),
        name="run",
        home=home,
        show_progress=False,
        **{**FAST, "train.max_steps": 2},
    ).run_dir


def resume(tiny_model, data_file, home):
    return train(
        model=str(tiny_model),
        data=str(data_file),
        name="run",
        home=home,
        show_progress=False,
        **{**FAST, "train.max_steps": 2, "train.resume": True},
    )


def stopped_at_step_1(run):
    """Make the finished run look stopped after checkpoint-000001, so a resume loads that checkpoint."""
    shutil.rmtree(run / "checkpoint-000002", ignore_errors=True)
    (run / "finished.json").unlink(missing_ok=True)


def test_the_planted_payload_really_runs_when_unpickled(tmp_path, marker):
    """The control: without weights_only, the same file does run its code, so the tests below prove something."""
    plant(tmp_path / "p.pt", marker)
    torch.load(tmp_path / "p.pt", weights_only=False)
    assert marker.exists()


def test_runs_write_no_pickle(trained):
    for file in trained.rglob("*"):
        if file.is_file():
            head = file.read_bytes()[:4]
            assert not head.startswith(b"\x80") and head != b"PK\x03\x04", f"{file} is a pickle or a torch zip"
    checkpoint = trained / "checkpoint-000001"
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith("training_state")) == [
        "training_state.json",
        "training_state.safetensors",
    ]


def test_torch_load_only_with_weights_only():
    calls = [(f, line) for f in SRC.rglob("*.py") for line in f.read_text().splitlines() if "torch.load(" in line]
    for file, line in calls:
        assert "weights_only=True" in line, f"{file}: {line.strip()}"
    assert not [
        f
        for f in SRC.rglob("*.py")
        if re.search(r"\bimport pickle\b.*|pickle\.loads?\(", f.read_text()) and "UnpicklingError" not in f.read_text()
    ]


def test_pickle_in_training_state_never_runs(tiny_model, data_file, home, trained, marker):
    checkpoint = trained / "checkpoint-000001"
    stopped_at_step_1(trained)
    plant(checkpoint / "training_state.pt", marker)  # beside the real state: never even opened
    assert resume(tiny_model, data_file, home).steps == 2
    assert not marker.exists()
    # A checkpoint whose only state is the planted pickle: refused in one line, the pickle never opened.
    for name in ("training_state.json", "training_state.safetensors"):
        (trained / "checkpoint-000001" / name).unlink(missing_ok=True)
    stopped_at_step_1(trained)
    with pytest.raises(LoratuneError, match=r"has no training_state.json or training_state.safetensors"):
        resume(tiny_model, data_file, home)
    assert not marker.exists()


def test_pickle_in_an_adapter_folder_never_runs(tiny_model, data_file, home, trained, marker):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from loratune import Generator

    checkpoint = trained / "checkpoint-000001"
    plant(checkpoint / "adapter_model.bin", marker)  # beside adapter_model.safetensors: ignored
    loaded = get_peft_model_state_dict(Generator(lora="run/checkpoint-000001", home=home).model)
    saved = load_file(checkpoint / "adapter_model.safetensors")  # the weights the generator must have taken
    assert loaded.keys() == saved.keys()
    for key, weight in saved.items():
        torch.testing.assert_close(loaded[key].cpu().to(weight.dtype), weight, rtol=0, atol=0)
    (checkpoint / "adapter_model.safetensors").unlink()  # now the pickle is the only weights file
    with pytest.raises(LoratuneError, match="has no adapter_model.safetensors; loratune loads adapter weights only"):
        Generator(lora="run/checkpoint-000001", home=home)
    stopped_at_step_1(trained)
    with pytest.raises(LoratuneError, match="has no adapter_model.safetensors"):
        resume(tiny_model, data_file, home)
    assert not marker.exists()


def test_pickle_weights_in_a_model_folder_never_run(tiny_model, data_file, home, tmp_path, marker):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    plant(model / "pytorch_model.bin", marker)
    with pytest.raises(LoratuneError, match=r"refused to load a pickle weights file .* could run code") as info:
        train(model=str(model), data=str(data_file), name="x", home=home, show_progress=False, **FAST)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    assert not (home / "loras").exists()


def test_remote_code_runs_only_with_the_flag(tiny_model, data_file, home, tmp_path, marker, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM, dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    # Loading the folder's code registers LlamaConfig / LlamaForCausalLM as its auto classes, for the whole process
    # (later save_pretrained calls would then copy their "custom" source files): undone when the test ends.
    monkeypatch.setattr(LlamaForCausalLM, "_auto_class", None)
    monkeypatch.setattr(LlamaConfig, "_auto_class", None)
    model = tmp_path / "custom"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "evil-llama"  # no class inside transformers: only the folder's own code could load it
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (model / "config.json").write_text(json.dumps(config))
    code = (
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom transformers import LlamaConfig as EvilConfig\n"
    )
    (model / "configuration_evil.py").write_text(code)
    (model / "modeling_evil.py").write_text(code + "from transformers import LlamaForCausalLM as Evil\n")
    with pytest.raises(LoratuneError, match="needs its own Python code to load; pass --model.trust_remote_code true"):
        train(model=str(model), data=str(data_file), name="x", home=home, show_progress=False, **FAST)
    assert not marker.exists()
    assert not (home / "loras").exists()
    with contextlib.suppress(Exception):  # whatever the custom code does next: that it ran is the point
        train(
            model=str(model),
            data=str(data_file),
            name="x",
            home=home,
            show_progress=False,
            **{**FAST, "model.trust_remote_code": True, "train.max_steps": 1},
        )
    assert marker.exists()
