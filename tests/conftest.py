"""Shared fixtures: a tiny BPE tokenizer with a ChatML template, tiny random models built from config (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Arr, matey! What is the capital of France? Paris.\n"
    "A pirate answers every question. Translate this sentence. One two three four five six seven eight nine ten.\n"
) * 20


def make_tokenizer(chat_template: str | None = CHATML):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator([CORPUS], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


def make_tiny_llama(folder: Path, chat_template: str | None = CHATML, seed: int = 0, tokenizer=None) -> Path:
    """A 2-layer LLaMA saved in `folder`, with the tiny BPE tokenizer (or the given one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or make_tokenizer(chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer LLaMA with a ChatML chat template, saved as a plain transformers folder."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture
def home(tmp_path) -> Path:
    """An empty workspace."""
    return tmp_path / "home"


@pytest.fixture(scope="session")
def default_model_home(tmp_path_factory) -> Path:
    """A workspace holding the real default model (SmolLM2-135M-Instruct converted from its GGUF once per session)."""
    home = Path(os.environ.get("LORATUNE_TEST_HOME") or tmp_path_factory.mktemp("default-home"))
    from loratune.models.sources import resolve_model_path
    from loratune.workspace import Workspace

    resolve_model_path("default", Workspace.resolve(home))
    return home


def pytest_runtest_logreport(report):
    """LORATUNE_TEST_TIMES=<file>: append each test phase's duration as it ends (to find what makes the suite slow)."""
    path = os.environ.get("LORATUNE_TEST_TIMES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{report.duration:8.1f} {report.when:8} {report.outcome:7} {report.nodeid}\n")


@pytest.fixture
def data_file(request, tmp_path) -> Path:
    """The test module's RECORDS as a JSONL file, named by its DATA_FILE (default 'data.jsonl')."""
    from helpers import write_jsonl

    module = request.module
    return write_jsonl(tmp_path / getattr(module, "DATA_FILE", "data.jsonl"), module.RECORDS)
