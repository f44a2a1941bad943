"""`loratune serve` in a subprocess, driven by the official openai client: models, completions, chat, streaming,
adapters loaded on demand (a run and one of its checkpoints), and 4xx JSON errors for bad requests."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loratune import RunConfig, train
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """A workspace with adapter 'pirate' (and its checkpoint-000002) trained on the tiny model, and the server."""
    root = tmp_path_factory.mktemp("serve")
    data = root / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": PROMPT, "output": "Arr, Paris it be."}) + "\n" for _ in range(8))
    )
    config = RunConfig(
        name="pirate",
        model=ModelSpec(source=str(tiny_model)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0),
        data=DataSpec(path=str(data)),
        train=TrainSpec(max_steps=4, batch_size=8, micro_batch=8, lr=3e-2, save_every=2, warmup_ratio=0.0),
    )
    home = root / "home"
    train(config, home=home, show_progress=False)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "loratune.cli",
        "--home",
        str(home),
        "serve",
        "--model",
        str(tiny_model),
        "--port",
        "0",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving tiny-llama"), line
        url = line.split(" on ")[1].split()[0]
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        yield client, url, home, tiny_model
    finally:
        server.terminate()
        server.wait(timeout=30)


def expected(tiny_model, home, adapter, prompt, max_new_tokens=8, chat=False):
    """What transformers + peft generate greedily for the same request, in this process."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    if adapter:
        model = PeftModel.from_pretrained(model, home / "loras" / adapter)
    if chat:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    else:
        ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_models_lists_the_base_and_its_adapters(served):
    client, _, home, tiny_model = served
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-llama0", "pirate"]
    assert [m.parent for m in models] == [None, "tiny-llama0"]  # vLLM's fields: the base of each adapter
    assert models[1].root == str((home / "loras" / "pirate").resolve()) and models[0].root == str(tiny_model)


def test_completions_with_and_without_adapters(served):
    client, _, home, tiny_model = served
    for model, adapter in (
        ("tiny-llama0+pirate", "pirate"),
        ("tiny-llama0+pirate/checkpoint-000002", "pirate/checkpoint-000002"),  # a second adapter, loaded on demand
        ("tiny-llama0", None),  # the base again after adapters were loaded: they must be off
        ("tiny-llama0+pirate", "pirate"),  # cached, switched back
        ("pirate", "pirate"),  # the bare name, as vLLM and LoRAX take it
        ("pirate/checkpoint-000002", "pirate/checkpoint-000002"),
    ):
        answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        assert answer.choices[0].text == expected(tiny_model, home, adapter, PROMPT), model
        assert answer.model == model and answer.usage.completion_tokens <= 8
        assert answer.choices[0].finish_reason in ("stop", "length")
    base = client.completions.create(model="tiny-llama0", prompt=PROMPT, max_tokens=8, temperature=0)
    lora = client.completions.create(model="tiny-llama0+pirate", prompt=PROMPT, max_tokens=8, temperature=0)
    assert base.choices[0].text != lora.choices[0].text, "the adapter changed nothing"


def test_chat_and_streaming(served):
    client, _, home, tiny_model = served
    messages = [{"role": "user", "content": PROMPT}]
    want = expected(tiny_model, home, "pirate", PROMPT, max_new_tokens=12, chat=True)
    answer = client.chat.completions.create(model="tiny-llama0+pirate", messages=messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content == want

    chunks = list(
        client.chat.completions.create(
            model="tiny-llama0+pirate", messages=messages, max_tokens=12, temperature=0, stream=True
        )
    )
    assert len(chunks) >= 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    pieces = list(
        client.completions.create(model="tiny-llama0", prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
    )
    assert "".join(p.choices[0].text for p in pieces) == expected(tiny_model, home, None, PROMPT)


def test_stop_strings_cut_the_text(served):
    client, _, home, tiny_model = served
    full = expected(tiny_model, home, "pirate", PROMPT, max_new_tokens=12)
    stop = full.strip()[2:4]
    want = full[: full.find(stop)]
    for stream in (False, True):
        answer = client.completions.create(
            model="tiny-llama0+pirate", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop], stream=stream
        )
        chunks = list(answer) if stream else [answer]
        assert "".join(c.choices[0].text for c in chunks) == want
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_bad_requests_get_4xx_json_errors(served):
    client, url, *_ = served
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="tiny-llama0+nope", prompt="hi", max_tokens=2)
    assert unknown.value.status_code == 404 and "tiny-llama0+nope" in unknown.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-llama0", prompt="hi", max_tokens=2, temperature=7)
    assert bad.value.body["param"] == "temperature"

    def post(path, data):
        request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=60)
        return error.value.code, json.loads(error.value.read())

    code, body = post("/completions", b'{"model": "tiny-llama0", "prompt": ')
    assert code == 400 and "not valid JSON" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    code, body = post("/chat/completions", json.dumps({"model": "tiny-llama0", "messages": []}).encode())
    assert code == 400 and body["error"]["param"] == "messages"
    code, body = post("/embeddings", b"{}")
    assert code == 404 and "no route" in body["error"]["message"]


def test_an_unset_max_tokens_is_shortened_to_fit_the_context(served):
    client, _, _, tiny_model = served
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = ""
    while len(tok(prompt + "Arr ")["input_ids"]) <= 508:  # the tiny model's context is 512 positions
        prompt += "Arr "
    size = len(tok(prompt)["input_ids"])
    answer = client.completions.create(model="tiny-llama0", prompt=prompt, temperature=0)  # 16 tokens by default
    assert answer.usage.prompt_tokens == size and answer.usage.completion_tokens <= 512 - size
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny-llama0", prompt=prompt, temperature=0, max_tokens=16)
    assert "context of 512 tokens" in too_long.value.body["message"]


def adapter_route(url, route, body):
    """POST to vLLM's adapter routes; returns (status, text)."""
    request = urllib.request.Request(
        f"{url}/{route}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]["message"]


def test_adapters_are_loaded_and_unloaded_at_run_time(served, tmp_path):
    client, url, home, tiny_model = served
    folder = home / "loras" / "pirate" / "checkpoint-000002"
    status, text = adapter_route(url, "load_lora_adapter", {"lora_name": "parrot", "lora_path": str(folder)})
    assert status == 200 and "parrot" in text, text
    listed = {m.id: m for m in client.models.list().data}
    assert listed["parrot"].parent == "tiny-llama0" and listed["parrot"].root == str(folder.resolve())
    want = expected(tiny_model, home, "pirate/checkpoint-000002", PROMPT)
    for model in ("parrot", "tiny-llama0+parrot"):
        answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        assert answer.choices[0].text == want, model
    relative = {"lora_name": "parrot2", "lora_path": "loras/pirate"}  # inside the workspace
    assert adapter_route(url, "load_lora_adapter", relative)[0] == 200

    (tmp_path / "empty").mkdir()
    for body, says in (
        ({"lora_name": "parrot", "lora_path": str(folder)}, "already served"),
        ({"lora_name": "pirate", "lora_path": str(folder)}, "already served"),
        ({"lora_name": "../x", "lora_path": str(folder)}, "invalid lora_name"),
        ({"lora_name": "crow", "lora_path": str(tmp_path / "empty")}, "not an adapter folder"),
        ({"lora_name": "crow", "lora_path": "../outside"}, "outside"),
        ({"lora_name": "crow"}, "must be given"),
    ):
        status, message = adapter_route(url, "load_lora_adapter", body)
        assert status == 400 and says in message and "\n" not in message, (body, message)

    assert adapter_route(url, "unload_lora_adapter", {"lora_name": "parrot"})[0] == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="parrot", prompt=PROMPT, max_tokens=2)
    assert "parrot" not in [m.id for m in client.models.list()]
    assert adapter_route(url, "unload_lora_adapter", {"lora_name": "parrot"})[0] == 404
    status, message = adapter_route(url, "unload_lora_adapter", {"lora_name": "pirate"})
    assert status == 400 and "loras/" in message
    assert adapter_route(url, "unload_lora_adapter", {"lora_name": "parrot2"})[0] == 200
    answer = client.completions.create(model="pirate", prompt=PROMPT, max_tokens=8, temperature=0)
    assert answer.choices[0].text == expected(tiny_model, home, "pirate", PROMPT)  # the others are untouched
