"""The server's batcher in-process on the tiny model: a request answers the same alone and inside a batch of other
requests (mixed prompt lengths, rows joining a running batch, other adapters, other sampling options), a row that
leaves does not disturb the others, and an adapter removed while in use lets its running request finish."""

import json
import time

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from loratune.sampling import Sampling
from loratune.serve.models import ModelPool, UnknownModel

PROMPTS = ["Hello there", "What is the capital of France? Tell me", "a", "Once upon a time, by the sea, there lived a"]


@pytest.fixture(scope="module")
def pool(tiny_model, tmp_path_factory):
    """A pool on the tiny model, with 'rand': a LoRA with random (non-zero) weights in loras/."""
    home = tmp_path_factory.mktemp("batching")
    torch.manual_seed(1)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(home / "loras" / "rand")
    config = home / "loras" / "rand" / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"base_model_name_or_path": str(tiny_model)}))
    return ModelPool(str(tiny_model), home, max_batch=8)


def solo(pool, adapter, prompt, max_new_tokens=12, **options):
    """What transformers (+ peft) generate for one prompt alone, in this process."""
    model = AutoModelForCausalLM.from_pretrained(pool.base_path).eval()
    if adapter:
        model = PeftModel.from_pretrained(model, pool.ws.loras / adapter).eval()
    ids = pool.tokenizer(prompt)["input_ids"]
    eos = pool.tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, pad_token_id=eos, eos_token_id=eos, **options
        )
    return out[0, len(ids) :].tolist()


def submit_together(pool, requests):
    """Rows that enter the batch at the same step: (adapter, prompt, Sampling) each."""
    with pool.batcher.cond:  # the batcher cannot take any of them before all are in line
        return [pool.submit(a, pool.tokenizer(p)["input_ids"], s) for a, p, s in requests]


def answer(row) -> list[int]:
    "".join(row.pieces())
    return row.tokens


def wait_for_tokens(row, n: int) -> None:
    end = time.monotonic() + 60
    while len(row.tokens) < n:
        assert time.monotonic() < end, "the row made no progress"
        time.sleep(0.01)


def test_greedy_rows_answer_as_they_would_alone(pool):
    want = [solo(pool, None, p) for p in PROMPTS]
    rows = submit_together(pool, [(None, p, Sampling(max_new_tokens=12)) for p in PROMPTS])
    assert [answer(r) for r in rows] == want

    first = pool.submit(None, pool.tokenizer(PROMPTS[3])["input_ids"], Sampling(max_new_tokens=40))
    wait_for_tokens(first, 3)
    late = [pool.submit(None, pool.tokenizer(p)["input_ids"], Sampling(max_new_tokens=12)) for p in PROMPTS[:3]]
    assert [answer(r) for r in late] == want[:3]  # joined a running batch, padded on the left
    assert answer(first) == solo(pool, None, PROMPTS[3], 40)
    assert not pool.batcher.rows and pool.batcher.cache is None


def test_adapters_and_the_base_share_a_batch(pool):
    want = [solo(pool, "rand", PROMPTS[1]), solo(pool, None, PROMPTS[1]), solo(pool, "rand", PROMPTS[0])]
    assert want[0] != want[1], "the adapter changes nothing"
    rows = submit_together(
        pool,
        [
            (a, p, Sampling(max_new_tokens=12))
            for a, p in (("rand", PROMPTS[1]), (None, PROMPTS[1]), ("rand", PROMPTS[0]))
        ],
    )
    assert [answer(r) for r in rows] == want


def test_sampling_options_are_per_row(pool):
    seeded = Sampling(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=20, seed=7)
    alone = answer(pool.submit(None, pool.tokenizer(PROMPTS[0])["input_ids"], seeded))
    penalised = Sampling(max_new_tokens=12, repetition_penalty=1.5)
    rows = submit_together(
        pool,
        [(None, PROMPTS[0], seeded), (None, PROMPTS[2], Sampling(max_new_tokens=12)), (None, PROMPTS[2], penalised)],
    )
    got = [answer(r) for r in rows]
    assert got[0] == alone  # its own seeded generator: the same draw inside a batch
    assert got[1] == solo(pool, None, PROMPTS[2])
    assert got[2] == solo(pool, None, PROMPTS[2], repetition_penalty=1.5) != got[1]


def test_a_cancelled_row_leaves_and_the_others_go_on(pool):
    rows = submit_together(
        pool, [(None, p, Sampling(max_new_tokens=n)) for p, n in zip(PROMPTS[:3], (30, 400, 30), strict=True)]
    )
    wait_for_tokens(rows[1], 2)
    rows[1].cancel("client")
    assert answer(rows[0]) == solo(pool, None, PROMPTS[0], 30)
    assert answer(rows[2]) == solo(pool, None, PROMPTS[2], 30)
    assert len(rows[1].tokens) < 400


def test_an_adapter_removed_while_in_use_finishes_its_request(pool):
    pool.add("rand2", str(pool.ws.loras / "rand"))
    row = pool.submit("rand2", pool.tokenizer(PROMPTS[1])["input_ids"], Sampling(max_new_tokens=40))
    wait_for_tokens(row, 2)
    name = row.peft_name
    pool.remove("rand2")
    with pytest.raises(UnknownModel):
        pool.adapter_of("rand2")
    assert answer(row) == solo(pool, "rand", PROMPTS[1], 40)
    end = time.monotonic() + 10
    while name in pool.model.peft_config and time.monotonic() < end:  # deleted once its last request left
        time.sleep(0.01)
    assert name not in pool.model.peft_config
    assert answer(pool.submit(None, pool.tokenizer(PROMPTS[0])["input_ids"], Sampling(max_new_tokens=12))) == solo(
        pool, None, PROMPTS[0]
    )
