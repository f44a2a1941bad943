"""The training loop on a tiny random LLaMA: files produced, loss goes down, PEFT reload, exact resume."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import run_config, sum_records
from loratune import LoratuneError, train
from loratune.config import AdapterSpec

RECORDS = sum_records(range(1, 7), range(1, 5))
DATA_FILE = "pirate.jsonl"  # the conftest data_file fixture's name: a run without a name is named after it


def config(model, data, name="run", **train):
    options = dict(epochs=2, batch_size=8, micro_batch=4, lr=3e-3, save_every=3, seed=1)
    return run_config(model, data, name, AdapterSpec(rank=8, alpha=16, dropout=0.0), **{**options, **train})


def metrics(run_dir):
    """The training rows (an evaluation or the retention probe writes rows of its own)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_train_writes_a_peft_adapter_and_learns(tiny_model, data_file, home):
    cfg = config(tiny_model, data_file, epochs=10, lr=2e-2)
    cfg.adapter.targets = "all-linear"
    result = train(cfg, home=home, show_progress=False)
    run = home / "loras" / "run"
    assert result.run_dir == run and result.steps == 30  # 24 samples / 8 per step * 10 epochs
    for name in ("adapter_config.json", "adapter_model.safetensors", "loratune.yaml", "metrics.jsonl"):
        assert (run / name).is_file(), name
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], "loss did not go down on a tiny overfit run"
    checkpoints = sorted(p.name for p in run.glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{s:06d}" for s in range(3, 31, 3)]  # the final step 30 is one too
    assert all((run / c / "COMPLETE").is_file() for c in checkpoints)
    assert not list(run.glob(".*tmp*")), "temporary folders left behind"


def test_saved_adapter_reloads_with_plain_peft_to_identical_logits(tiny_model, data_file, home):
    result = train(config(tiny_model, data_file, max_steps=4), home=home, show_progress=False)
    ids = torch.tensor([[2, 40, 41, 42, 43, 3]])
    device, dtype = result.model.device, result.model.dtype  # bf16 on a GPU, fp32 on a CPU
    ids = ids.to(device)
    with torch.no_grad():
        in_memory = result.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype).to(device)
        reloaded = PeftModel.from_pretrained(base, result.run_dir)(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype).to(device)(input_ids=ids).logits
    torch.testing.assert_close(reloaded, in_memory, rtol=0, atol=1e-6)
    assert not torch.allclose(plain, in_memory, atol=1e-4), "the adapter changed nothing"


def test_every_checkpoint_is_a_loadable_adapter(tiny_model, data_file, home):
    result = train(config(tiny_model, data_file, max_steps=6), home=home, show_progress=False)
    checkpoint = result.run_dir / "checkpoint-000003"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), checkpoint)
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    assert model.peft_config["default"].r == 8


def test_resume_continues_exactly(tiny_model, data_file, home):
    """N steps straight == k steps, then resume from checkpoint-k for N-k steps (gradient accumulation on)."""
    straight = train(config(tiny_model, data_file, name="straight", epochs=3), home=home, show_progress=False)
    # The interrupted run: the same run folder as it was right after checkpoint-000006 was written.
    cut = home / "loras" / "cut"
    shutil.copytree(straight.run_dir / "checkpoint-000006", cut / "checkpoint-000006")
    rows = metrics(straight.run_dir)
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))  # 2 rows past the checkpoint
    resumed = train(config(tiny_model, data_file, name="cut", epochs=3, resume=True), home=home, show_progress=False)
    assert resumed.steps == straight.steps == 9
    assert [r["loss"] for r in metrics(cut)] == pytest.approx([r["loss"] for r in rows], abs=1e-5)
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(cut / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_existing_run_is_not_overwritten_unless_asked(tiny_model, data_file, home):
    train(config(tiny_model, data_file, max_steps=1), home=home, show_progress=False)
    with pytest.raises(LoratuneError, match="already exists"):
        train(config(tiny_model, data_file, max_steps=1), home=home, show_progress=False)
    train(config(tiny_model, data_file, max_steps=1, overwrite=True), home=home, show_progress=False)


def test_resume_without_checkpoint_is_refused(tiny_model, data_file, home):
    with pytest.raises(LoratuneError, match="nothing to resume"):
        train(config(tiny_model, data_file, resume=True), home=home, show_progress=False)


def test_wrong_target_module_lists_what_the_model_has(tiny_model, data_file, home):
    cfg = config(tiny_model, data_file)
    cfg.adapter.targets = "query_key_value"
    with pytest.raises(LoratuneError, match="q_proj"):
        train(cfg, home=home, show_progress=False)


def test_overwrite_with_bad_data_keeps_the_old_adapter(tiny_model, data_file, home, tmp_path):
    train(config(tiny_model, data_file, max_steps=1), home=home, show_progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "no output here"}\n')
    with pytest.raises(LoratuneError, match="record 1"):
        train(config(tiny_model, bad, max_steps=1, overwrite=True), home=home, show_progress=False)
    assert (home / "loras" / "run" / "adapter_model.safetensors").is_file()


def test_keyword_options_like_the_command_line(tiny_model, data_file, home):
    result = train(
        model=str(tiny_model),
        data=str(data_file),
        home=home,
        show_progress=False,
        train={"max_steps": 2, "batch_size": 4},
        **{"adapter.rank": 4},
    )
    assert result.run_dir == home / "loras" / "pirate"  # named after the data file
    saved = (result.run_dir / "loratune.yaml").read_text()
    assert "rank: 4" in saved and "max_steps: 2" in saved and str(data_file) in saved


def test_generation_skips_the_chat_template_for_raw_text_loras(tiny_model, data_file, home, tmp_path):
    from loratune import Generator

    story = tmp_path / "story.txt"
    story.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    train(
        model=str(tiny_model), data=str(story), home=home, show_progress=False, train={"max_steps": 2, "save_every": 1}
    )
    train(model=str(tiny_model), data=str(data_file), home=home, show_progress=False, train={"max_steps": 1})
    story = Generator(lora="story", home=home)
    assert story.raw_text_lora
    assert Generator(lora="story/checkpoint-000001", home=home).raw_text_lora
    chat = Generator(lora="pirate", home=home)
    assert not chat.raw_text_lora
    # What each sends: the raw-text LoRA the bare question, the instruction LoRA the ChatML turn it was trained on.
    question = "What is 2 plus 2?"
    assert story.tokenizer.decode(story.prompt_ids(question)) == question
    chatml = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    assert chat.tokenizer.decode(chat.prompt_ids(question)) == chatml


def test_each_phase_says_when_it_begins(tiny_model, data_file, home, capsys):
    train(config(tiny_model, data_file, max_steps=2), home=home)
    out = capsys.readouterr().out
    starts = [line.split(":")[0] for line in out.splitlines() if line.startswith(("setup:", "training:", "finish:"))]
    assert starts == ["setup", "training", "finish"], out
    assert "training: 2 steps, 1 to 2" in out and "finish: saving the adapter of step 2" in out


class Payload:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_weights_are_refused_where_the_model_is_loaded(tiny_model, data_file, home, tmp_path):
    """A folder whose weights are a pickle beside an unrelated safetensors file passes the folder check, so it is
    transformers (loading with weights_only) that refuses the pickle: load_base turns that into one line."""
    from safetensors.torch import save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    save_file({"unrelated": torch.zeros(1)}, model / "extra.safetensors")
    marker = tmp_path / "CODE-RAN"
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, model / "pytorch_model.bin")
    with pytest.raises(LoratuneError, match=r"refused to load a pickle weights file .* could run code") as info:
        train(config(model, data_file, max_steps=1), home=home, show_progress=False)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    assert not (home / "loras" / "run").exists()
