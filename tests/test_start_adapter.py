"""adapter.init_from: a run that starts from another LoRA's weights (SFT, then DPO), whose reference for dpo / ipo / kto
is that starting adapter; its shape comes along, a resume needs nothing outside the run folder, bad starts are refused
in one line."""

from __future__ import annotations

import math
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_llama
from helpers import write_jsonl
from loratune import train
from loratune.errors import LoratuneError
from loratune.training.start_adapter import START
from test_preference import OPTIONS, RECORDS, rows

DATA_FILE = "pairs.jsonl"
SFT = {
    "train.max_steps": 6,
    "train.lr": 5e-3,
    "adapter.rank": 4,
    "adapter.alpha": 16,
    "adapter.targets": "q_proj,v_proj",
}


def sft_first(model, home, tmp_path, name="sft"):
    """An SFT run on the chosen answers: the starting adapter."""
    chosen = write_jsonl(tmp_path / "chosen.jsonl", [{"instruction": r["instruction"], "output": r["chosen"]}
                                                     for r in RECORDS])  # fmt: skip
    options = OPTIONS | SFT | {"train.save_every": 0}
    return train(model=str(model), data=str(chosen), name=name, home=home, show_progress=False, **options)


def dpo(model, data, home, name, **options):
    options = OPTIONS | {"train.method": "dpo", "adapter.init_from": "sft"} | options
    return train(model=str(model), data=str(data), name=name, home=home, show_progress=False, **options)


def test_dpo_from_an_sft_adapter_starts_at_it_and_takes_it_as_the_reference(tiny_model, data_file, home, tmp_path):
    sft = sft_first(tiny_model, home, tmp_path)
    # this run asks for rank 8 on all linear layers: the starting adapter's shape wins (its weights must fit); no
    # dropout, so that the first step's policy is the starting adapter exactly
    no_dropout = {"adapter.dropout": 0.0}
    run = dpo(tiny_model, data_file, home, "dpo", **no_dropout, **{"adapter.rank": 8, "adapter.targets": "all-linear"})
    config = (run.run_dir / "adapter_config.json").read_text()
    assert '"r": 4' in config and '"lora_alpha": 16' in config and "k_proj" not in config
    first = rows(run.run_dir)[0]
    # the policy starts as the SFT adapter and the reference is that adapter: every reward 0, loss log 2. Against the
    # bare base the SFT adapter's rewards would be far from 0 (it learned the chosen answers).
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["reward_chosen"] == pytest.approx(0, abs=1e-5) and first["reward_rejected"] == pytest.approx(
        0, abs=1e-5
    )
    last = rows(run.run_dir)[-1]
    assert last["accuracy"] == 1.0 and last["reward_margin"] > 0
    assert load_file(run.run_dir / START).keys() == load_file(sft.run_dir / "adapter_model.safetensors").keys()
    # a reference pass in every step (the starting weights swapped in) equals the log-probs computed once
    each = dpo(tiny_model, data_file, home, "each", **no_dropout, **{"train.precompute_reference": False})
    for a, b in zip(rows(run.run_dir), rows(each.run_dir), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["reward_margin"] == pytest.approx(b["reward_margin"], abs=1e-5)


def test_the_starting_adapter_is_measured_as_the_reference(tiny_model, tokenizer, data_file, home, tmp_path):
    """The SFT adapter against the base has large rewards; against itself (its weights swapped in) none."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loratune.config import DataSpec, TrainSpec
    from loratune.data import build_samples
    from loratune.training.preference import Options, Pairs, evaluate_pairs
    from loratune.training.start_adapter import start_weights_of
    from loratune.workspace import Workspace

    sft = sft_first(tiny_model, home, tmp_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), sft.run_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    pairs = Pairs(build_samples(DataSpec(path=str(data_file)), tokenizer, Workspace.resolve(home))[0])
    options = Options.of(TrainSpec(method="dpo"))
    start = start_weights_of(model, sft.run_dir / "adapter_model.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # the model's adapter untouched
    against_base = evaluate_pairs(model, list(pairs), options, 4, tokenizer.pad_token_id)
    against_itself = evaluate_pairs(model, list(pairs), options, 4, tokenizer.pad_token_id, start)
    assert against_base["eval_accuracy"] == 1.0 and against_base["eval_margin"] > 0.1
    assert against_itself["eval_margin"] == pytest.approx(0, abs=1e-6)
    assert against_itself["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_the_weights_are_the_starting_adapters(tiny_model, home, tmp_path):
    """SFT continued from an adapter with a vanishing learning rate ends where it started; ORPO (no reference) keeps
    no copy of the start."""
    sft = sft_first(tiny_model, home, tmp_path)
    chosen = tmp_path / "chosen.jsonl"
    again = train(model=str(tiny_model), data=str(chosen), name="again", home=home, show_progress=False,
                  **OPTIONS | {"train.max_steps": 1, "train.lr": 1e-12, "adapter.init_from": "sft"})  # fmt: skip
    start, end = (
        load_file(sft.run_dir / "adapter_model.safetensors"),
        load_file(again.run_dir / "adapter_model.safetensors"),
    )
    assert start.keys() == end.keys()
    assert max((start[k] - end[k]).abs().max().item() for k in start) < 1e-8
    assert any(start[k].abs().max() > 0 for k in start if "lora_B" in k)  # trained: not the fresh B = 0
    assert not (again.run_dir / START).exists()  # no reference: nothing to keep
    shutil.rmtree(sft.run_dir)  # a resume goes on from its checkpoint, whose shape its loratune.yaml records
    more = {"train.max_steps": 2, "train.lr": 1e-12, "adapter.init_from": "sft", "train.resume": True}
    longer = train(model=str(tiny_model), data=str(chosen), name="again", home=home, show_progress=False,
                   **OPTIONS | more)  # fmt: skip
    assert longer.steps == 2


def test_dpo_from_an_adapter_resumes_exactly_without_it(tiny_model, data_file, home, tmp_path):
    from test_resume import assert_same_adapter

    sft_first(tiny_model, home, tmp_path)
    straight = dpo(tiny_model, data_file, home, "straight")
    stop = threading.Event()  # stopped after step 3, between checkpoints (every 2 steps)
    cut = train(model=str(tiny_model), data=str(data_file), name="cut", home=home, show_progress=False, stop=stop,
                on_step=lambda row: row["step"] == 3 and stop.set(),
                **OPTIONS | {"train.method": "dpo", "adapter.init_from": "sft"})  # fmt: skip
    assert cut.stopped and cut.steps == 3
    shutil.rmtree(home / "loras" / "sft")  # the run folder keeps the reference's weights
    resumed = dpo(tiny_model, data_file, home, "cut", **{"train.resume": True})
    assert resumed.steps == 6
    assert [r["loss"] for r in rows(cut.run_dir)] == pytest.approx([r["loss"] for r in rows(straight.run_dir)],
                                                                   abs=1e-5)  # fmt: skip
    assert_same_adapter(straight.run_dir, cut.run_dir)


def test_bad_starts_are_refused_in_one_line(tiny_model, data_file, home, tmp_path):
    with pytest.raises(LoratuneError, match="no adapter at 'nothing-here'"):
        dpo(tiny_model, data_file, home, "dpo", **{"adapter.init_from": "nothing-here"})
    sft_first(tiny_model, home, tmp_path)
    with pytest.raises(LoratuneError, match="copy_from and adapter.init_from both set"):
        dpo(tiny_model, data_file, home, "dpo", **{"adapter.copy_from": "sft"})
    with pytest.raises(LoratuneError, match="this run's own folder"):
        dpo(tiny_model, data_file, home, "sft", **{"train.overwrite": True})
    other = make_tiny_llama(tmp_path / "wider", seed=1)  # the same family, another hidden size: the weights do not fit
    config = other / "config.json"
    config.write_text(config.read_text().replace('"hidden_size": 64', '"hidden_size": 96'))
    torch.manual_seed(0)
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(other)).save_pretrained(other)
    with pytest.raises(LoratuneError, match=r"does not fit this model's adapter"):
        dpo(other, data_file, home, "dpo")
