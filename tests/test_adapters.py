"""Adapters library and `loratune loras`: list with losses, promote, delete, merge (merged logits = base + adapter)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import sum_records
from loratune import LoratuneError, RunConfig, train
from loratune.adapters import delete, get_adapter, list_adapters, merge, promote, undo_promote
from loratune.cli import main
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

RECORDS = sum_records(range(4), range(4), "Arr, it be {}.")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """One 4-step run with checkpoints at steps 2 (and the final adapter at 4), copied fresh for each test."""
    root = tmp_path_factory.mktemp("adapters")
    data = root / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = RunConfig(
        name="sums",
        model=ModelSpec(source=str(tiny_model)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0, targets="attention+mlp"),
        data=DataSpec(path=str(data)),
        train=TrainSpec(max_steps=4, batch_size=8, micro_batch=8, lr=1e-2, save_every=2),
    )
    train(config, home=root / "home", show_progress=False)
    return root / "home"


@pytest.fixture
def ws(trained, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    return home


def losses(home):
    rows = [json.loads(line) for line in (home / "loras/sums/metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_list_shows_the_adapter_its_checkpoints_and_losses(ws, tiny_model):
    (ws / "loras" / "empty-folder").mkdir()  # not a run: ignored
    [info] = list_adapters(ws)
    logged = losses(ws)
    assert info.name == "sums" and info.has_adapter and info.rank == 4 and info.alpha == 8
    assert info.step == 4 and info.loss == logged[4] and info.promoted_from is None
    assert info.base_model == str(tiny_model)
    assert [(c.name, c.step, c.loss, c.complete) for c in info.checkpoints] == [
        ("checkpoint-000002", 2, logged[2], True),
        ("checkpoint-000004", 4, logged[4], True),  # the final step is a checkpoint too
    ]
    assert {"q_proj", "v_proj", "gate_proj"} <= set(info.targets)


def test_promote_makes_a_checkpoint_the_adapter(ws):
    run = ws / "loras" / "sums"
    before = load_file(run / "adapter_model.safetensors")
    info = promote("sums", "2", ws)
    assert info.promoted_from == "checkpoint-000002" and info.step == 2 and info.loss == losses(ws)[2]
    promoted = load_file(run / "adapter_model.safetensors")
    checkpoint = load_file(run / "checkpoint-000002" / "adapter_model.safetensors")
    assert promoted.keys() == checkpoint.keys() and all(torch.equal(promoted[k], checkpoint[k]) for k in promoted)
    assert any(not torch.equal(before[k], promoted[k]) for k in before)
    # a later rewrite of the adapter (e.g. training resumed) is no longer reported as the promoted checkpoint
    (run / "adapter_model.safetensors").write_bytes((run / "checkpoint-000002" / "COMPLETE").read_bytes())
    assert get_adapter("sums", ws).promoted_from is None


def test_promote_refuses_incomplete_or_missing_checkpoints(ws):
    (ws / "loras/sums/checkpoint-000002/COMPLETE").unlink()
    with pytest.raises(LoratuneError, match="not a complete checkpoint"):
        promote("sums", "checkpoint-000002", ws)
    with pytest.raises(
        LoratuneError, match="no checkpoint 'checkpoint-000009'.*have: checkpoint-000002, checkpoint-000004"
    ):
        promote("sums", "9", ws)


def test_names_stay_inside_their_folders(ws):
    for bad in ("../sums", "/etc", "sums/../../x", ""):
        with pytest.raises(LoratuneError):
            delete(bad, ws)
    with pytest.raises(LoratuneError):
        promote("sums", "../../models", ws)
    with pytest.raises(LoratuneError):
        merge("sums", "models/../../escape", ws)
    with pytest.raises(LoratuneError, match="no adapter named 'nope'"):
        get_adapter("nope", ws)
    assert (ws / "loras" / "sums" / "adapter_model.safetensors").is_file()


def test_delete_a_checkpoint_then_the_run(ws):
    assert delete("sums", ws, checkpoint="checkpoint-000002").name == "checkpoint-000002"
    assert [c.name for c in get_adapter("sums", ws).checkpoints] == ["checkpoint-000004"]
    delete("sums", ws)
    assert list_adapters(ws) == []


def test_merged_model_gives_the_logits_of_base_plus_adapter(ws, tiny_model):
    out = merge("sums", "models/sums-merged", ws)
    assert out == ws / "models" / "sums-merged"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not any(out.glob("adapter_*")), "a merged folder is a plain model, not an adapter"
    ids = AutoTokenizer.from_pretrained(out)("What is 2 plus 3?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        plain = base(input_ids=ids).logits
        with_adapter = PeftModel.from_pretrained(base, ws / "loras" / "sums")(input_ids=ids).logits
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)
    assert (with_adapter - plain).abs().max() > 1e-3, "the adapter changed nothing"
    with pytest.raises(LoratuneError, match="already exists"):
        merge("sums", "sums-merged", ws)


def test_loras_cli(ws, capsys):
    assert main(["--home", str(ws), "loras", "list"]) == 0
    out = capsys.readouterr().out
    assert "sums" in out and "checkpoint-000002" in out and f"{losses(ws)[4]:.4f}" in out
    assert main(["--home", str(ws), "loras", "promote", "sums", "checkpoint-000002"]) == 0
    assert "checkpoint-000002" in capsys.readouterr().out
    assert main(["--home", str(ws), "loras", "delete", "sums/checkpoint-000002", "--yes"]) == 0
    assert not (ws / "loras/sums/checkpoint-000002").exists()
    assert main(["--home", str(ws), "loras", "delete", "../x", "--yes"]) == 1
    assert "invalid adapter name" in capsys.readouterr().err


def test_training_writes_a_model_card(ws, tiny_model):
    card = (ws / "loras" / "sums" / "README.md").read_text()
    final = losses(ws)[4]
    assert card.startswith("---\nlibrary_name: peft\n")
    for expected in (
        f"final loss | {final:.4f}",
        str(tiny_model),
        "rank 4, alpha 8",
        "4 optimizer steps",
        'PeftModel.from_pretrained(base, "loras/sums")',
        "text-generation-webui",
        "--lora loras/sums/adapter.gguf",
        "sums.jsonl",
    ):
        assert expected in card, expected


def weights(folder):
    return load_file(folder / "adapter_model.safetensors")


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_final_adapter_is_also_a_checkpoint_and_promote_can_be_undone(ws, capsys):
    run = ws / "loras" / "sums"
    final = weights(run)
    assert (run / "checkpoint-000004" / "COMPLETE").is_file() and same(final, weights(run / "checkpoint-000004"))
    assert json.loads((run / "adapter_step.json").read_text())["step"] == 4
    assert main(["--home", str(ws), "loras", "promote", "sums", "2"]) == 0
    assert "undo with: loratune loras promote sums --undo" in capsys.readouterr().out
    promote("sums", "2", ws)  # promoting twice keeps the way back to the trained adapter
    assert get_adapter("sums", ws).step == 2
    assert main(["--home", str(ws), "loras", "promote", "sums", "--undo"]) == 0
    assert "back to the one of step 4" in capsys.readouterr().out
    info = get_adapter("sums", ws)
    assert info.step == 4 and info.promoted_from is None and info.loss == losses(ws)[4]
    assert same(weights(run), final)
    assert main(["--home", str(ws), "loras", "promote", "sums", "--undo"]) == 1
    assert "nothing to undo" in capsys.readouterr().err


def test_promote_on_a_run_without_a_final_checkpoint_keeps_a_copy_to_undo(ws):
    """Runs trained before the final step became a checkpoint: promote first copies the adapter aside."""
    run = ws / "loras" / "sums"
    shutil.rmtree(run / "checkpoint-000004")
    final = weights(run)
    promote("sums", "2", ws)
    assert same(weights(run / "adapter-before-promote"), final)
    assert get_adapter("sums", ws).step == 2
    promote("sums", "2", ws)
    info = undo_promote("sums", ws)
    assert same(weights(run), final) and info.step == 4
    assert not (run / "adapter-before-promote").exists(), "the copy is removed once it is back in place"


def test_the_list_shows_the_step_the_adapter_was_saved_at_not_the_last_logged(ws):
    """A resumed run logs steps past its adapter's: the recorded step wins (was max(metrics) = 6 here)."""
    run = ws / "loras" / "sums"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.5}\n{"step": 6, "loss": 0.4}\n')
    assert get_adapter("sums", ws).step == 4
    (run / "adapter_step.json").unlink()  # an older run: the checkpoint with the same weights tells the step
    assert get_adapter("sums", ws).step == 4


def test_written_files_get_the_permissions_of_the_umask(ws):
    from loratune.adapters.export_gguf import export_gguf

    mask = os.umask(0o022)
    try:
        merged = merge("sums", "sums-merged", ws)
        export_gguf("sums", ws)
        promote("sums", "2", ws)
    finally:
        os.umask(mask)
    run = ws / "loras" / "sums"
    expected = 0o666 & ~mask  # what training wrote (under the test's umask) as well
    files = [*run.rglob("*.safetensors"), *run.rglob("*.json"), *merged.rglob("*"), run / "adapter.gguf"]
    files = [f for f in files if f.is_file()]
    assert {oct(f.stat().st_mode & 0o777) for f in files if f.parent != merged} == {oct(expected)}
    assert {oct(f.stat().st_mode & 0o777) for f in files if f.parent == merged} == {"0o644"}
    assert len(files) > 10


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_commands_are_never_listed_and_the_next_command_cleans_them(ws, capsys):
    run, models = ws / "loras" / "sums", ws / "models"
    pid = dead_pid()
    shutil.copytree(run, models / f".sums-merged.merging-{pid}")  # holds a config.json, like a killed merge's
    (run / f".adapter_model.safetensors.promote-{pid}").write_bytes(b"half")
    (run / "checkpoint-000002" / f".adapter.gguf.tmp-{pid}").write_bytes(b"half")
    shutil.copytree(run / "checkpoint-000002", ws / "loras" / f".gone.deleting-{pid}")
    live = run / f".adapter.gguf.tmp-{os.getpid()}"  # a command still writing it: kept
    live.write_bytes(b"being written")
    assert main(["--home", str(ws), "models", "list"]) == 0
    assert "merging" not in capsys.readouterr().out
    assert [a.name for a in list_adapters(ws)] == ["sums"]
    cache = ws / "datasets" / ".cache"  # the samples cache training keeps (its leftovers: tests/test_data_cache.py)
    left = [p.name for p in ws.rglob(".*") if p.name != ".lock" and cache not in (p, *p.parents)]
    assert left == [live.name]
