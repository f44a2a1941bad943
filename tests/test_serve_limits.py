"""`loratune serve` against hostile clients, each case on a real server subprocess (tiny model, short limits).

The served model is the tiny LLaMA with its context raised to 65,536 positions, so a 50,000-token generation is
possible and runs for minutes: what these tests show is that it does not, once its client is gone.
"""

import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file

from conftest import make_tiny_llama
from loratune import RunConfig, train
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

pytestmark = pytest.mark.long  # a real server per case family, hostile clients: make test-long

KEY = "test-key-0123456789"
LONG = 50_000  # tokens: minutes of generation on the tiny model
LIMITS = [
    *("--max-tokens", "65530", "--max-prompt-tokens", "300", "--max-stop-strings", "2", "--max-stop-length", "10"),
    *("--max-body", "20000", "--request-timeout", "15", "--idle-timeout", "2", "--max-queue", "2"),
    *("--max-connections", "8"),
    *("--max-batch", "1"),  # one request generates at a time, so a long one holds the model and the line fills up
]
OPEN_FILES = 160  # the server's file limit: more idle connections than that must not stop it


def long_context_model(folder: Path, seed: int) -> Path:
    make_tiny_llama(folder, seed=seed)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 65536
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_adapter(name: str, model: Path, home: Path, data: Path) -> None:
    config = RunConfig(
        name=name,
        model=ModelSpec(source=str(model)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0),
        data=DataSpec(path=str(data)),
        train=TrainSpec(max_steps=2, batch_size=4, micro_batch=4, lr=1e-2, save_every=100, warmup_ratio=0.0),
    )
    train(config, home=home, show_progress=False)


def start(home: Path, model: Path, *flags: str, env: dict | None = None, files: int | None = None):
    """`loratune serve` in a subprocess on a free port; returns (process, base url, log file)."""
    log = home / f"serve-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "loratune.cli", "--home", str(home), "serve", "--model", str(model), "--port", "0"]

    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    server = subprocess.Popen(
        cmd + list(flags),
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        preexec_fn=limit_files if files else None,
    )
    line = server.stdout.readline()
    assert line.startswith("serving "), line + log.read_text()
    port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])
    return server, f"http://127.0.0.1:{port}/v1", log


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Adapters 'pirate' (on the served model), 'other' (a model of the same shapes, other weights) and 'pickled'
    (pirate's weights as adapter_model.bin only); the server binds every interface with an API key from the
    environment."""
    root = tmp_path_factory.mktemp("limits")
    model = long_context_model(root / "tiny-long", seed=0)
    other = long_context_model(root / "tiny-other", seed=1)
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Hi?", "output": "Arr."}) + "\n" for _ in range(4)))
    home = root / "home"
    train_adapter("pirate", model, home, data)
    train_adapter("other", other, home, data)
    pickled = home / "loras" / "pickled"
    shutil.copytree(home / "loras" / "pirate", pickled)
    import torch

    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()

    server, url, log = start(home, model, "--host", "0.0.0.0", *LIMITS, env={"LORATUNE_API_KEY": KEY}, files=OPEN_FILES)
    try:
        yield url, log, model
    finally:
        server.terminate()
        server.wait(timeout=30)


def client(url: str, key: str = KEY, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=timeout)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def raw(url: str, request: bytes, timeout: float = 60) -> tuple[int, dict, bytes]:
    """Send bytes as they are; returns (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def post(url: str, body, path: str = "/completions", key: str | None = KEY, length: str | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {length if length is not None else len(data)}\r\nConnection: close\r\n\r\n"
    )
    status, headers, answer = raw(url, head.encode() + data)
    return status, headers, json.loads(answer) if answer else {}


def small(**fields) -> dict:
    return {"model": "tiny-long", "prompt": "Hi?", "max_tokens": 2, "temperature": 0} | fields


def test_a_non_loopback_host_needs_an_api_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LORATUNE_API_KEY"}
    cmd = [sys.executable, "-m", "loratune.cli", "--home", str(tmp_path), "serve", "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "--api-key" in done.stderr and "LORATUNE_API_KEY" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_requests_without_the_key_get_401(served):
    url, log, _ = served
    for key in (None, "wrong", KEY + "x"):
        status, headers, body = post(url, small(), key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key" and headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    assert [m.id for m in client(url).models.list()] == ["tiny-long", "pirate"]
    assert client(url).completions.create(**small()).usage.completion_tokens <= 2


@pytest.mark.parametrize(
    "body, param, names",
    [
        (small(max_tokens=10**9), "max_tokens", "--max-tokens"),
        (small(prompt="Arr " * 400), None, "--max-prompt-tokens"),
        (small(prompt="Arr " * 800), None, "--max-prompt-tokens"),  # refused from its start, not tokenized whole
        (small(stop=["a", "b", "c"]), "stop", "--max-stop-strings"),
        (small(stop="x" * 11), "stop", "--max-stop-length"),
        (small(prompt="x" * 20001), None, "--max-body"),
        (small(prompt="Arr " * 100, max_tokens=65500), "max_tokens", "context of 65536"),
        (small(max_tokens=0), "max_tokens", "at least 1"),
        (small(seed=2**64), "seed", "between"),
        (small(stream="false"), "stream", "true or false"),
        (small(n=2), "n", "n=1"),
        (b'{"model": "tiny-long", "prompt": "Hi", "max_tokens": 1e999}', "max_tokens", "finite"),
        (b'{"model": "tiny-long", "prompt": "Hi", "max_tokens": 2, "temperature": NaN}', "temperature", "finite"),
        (b'{"model": "tiny-long", "prompt": "Hi", "max_tokens": 2, "top_p": NaN}', "top_p", "finite"),
        (b"[" * 5000 + b"]" * 5000, None, "not valid JSON"),
    ],
)
def test_each_limit_and_bad_field_is_a_400_naming_it(served, body, param, names):
    url, *_ = served
    status, _, answer = post(url, body)
    assert status == 400, answer
    assert names in answer["error"]["message"] and answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error"


def test_a_chat_over_the_prompt_limit_is_a_400(served):
    url, *_ = served
    for words in (400, 800):
        chat = {"model": "tiny-long", "messages": [{"role": "user", "content": "Arr " * words}], "max_tokens": 2}
        status, _, answer = post(url, chat, path="/chat/completions")
        assert status == 400 and "--max-prompt-tokens" in answer["error"]["message"], answer


def test_bad_content_lengths_are_400s_and_nothing_crashes(served):
    url, log, _ = served
    for length in ("abc", "-5", "1e3", ""):
        status, _, answer = post(url, small(), length=length)
        assert status == 400 and "Content-Length" in answer["error"]["message"], (length, answer)
    status, _, answer = post(url, small(), length="99999999")  # over --max-body: refused before it is read
    assert status == 400 and "--max-body" in answer["error"]["message"]
    assert client(url).completions.create(**small()).choices[0].finish_reason in ("stop", "length")
    assert "Traceback" not in log.read_text()


def wait_for(log: Path, text: str, after: int, seconds: float = 60) -> str:
    """The first log line containing `text` written after offset `after` (the test fails if none comes)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for line in log.read_text()[after:].splitlines():
            if text in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the server log: {log.read_text()[after:][-2000:]}")


def tokens_stopped_at(line: str) -> int:
    return int(line.split("stopped after ")[1].split()[0])


def test_a_client_that_leaves_a_non_streamed_request_frees_the_model(served):
    url, log, _ = served
    mark = len(log.read_text())
    body = json.dumps(small(max_tokens=LONG)).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(body)}"
    s = socket.create_connection(("127.0.0.1", port_of(url)))
    s.sendall(head.encode() + b"\r\n\r\n" + body)
    time.sleep(1.5)  # generating: the server sends nothing until it is done
    s.close()
    line = wait_for(log, "the client left", mark)
    assert 0 < tokens_stopped_at(line) < LONG, line
    assert client(url).completions.create(**small()).usage.completion_tokens <= 2


def test_a_client_that_leaves_a_stream_frees_the_model(served):
    url, log, _ = served
    mark = len(log.read_text())
    stream = client(url).completions.create(**small(max_tokens=LONG, stream=True))
    for n, _ in enumerate(stream):
        if n == 0:  # text is flowing: the generation runs
            break
    stream.close()
    line = wait_for(log, "the client left", mark)
    assert 1 <= tokens_stopped_at(line) < LONG, line
    assert client(url).completions.create(**small()).usage.completion_tokens <= 2


def test_a_generation_past_the_request_timeout_is_stopped(served, tmp_path):
    # A server of its own with a 1 s timeout: the batching server makes thousands of tokens in the shared one's 15 s,
    # enough for the tiny model's greedy answer to reach a stop before the deadline.
    _, _, model = served
    (tmp_path / "home").mkdir()
    flags = ("--request-timeout", "1", "--max-tokens", "65530")
    server, url, log = start(tmp_path / "home", model, *flags, env={"LORATUNE_API_KEY": KEY})
    try:
        status, _, answer = post(url, small(max_tokens=LONG))
        assert status == 503 and answer["error"]["code"] == "timeout"
        assert "--request-timeout" in answer["error"]["message"]
        assert client(url).completions.create(**small()).usage.completion_tokens <= 2
        assert "Traceback" not in log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)


def send(url: str, body: dict) -> socket.socket:
    """A request sent whole on a raw socket; its answer is read later with `answer_of`."""
    data = json.dumps(body).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(data)}"
    s = socket.create_connection(("127.0.0.1", port_of(url)), timeout=120)
    s.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + data)
    return s


def test_a_full_queue_gets_503_and_retry_after_and_the_line_is_first_come_first_served(served):
    url, *_ = served
    holder = client(url).completions.create(**small(max_tokens=LONG, stream=True))  # headers sent: it has the model
    first = send(url, small(max_tokens=1))
    time.sleep(2)  # so that they join the line in this order
    second = send(url, small(max_tokens=1))
    time.sleep(2)
    status, headers, answer = post(url, small())  # --max-queue 2: the line is full
    assert status == 503 and answer["error"]["code"] == "server_busy" and "--max-queue" in answer["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    holder.close()
    answered = []
    while len(answered) < 2:
        ready, _, _ = select.select([s for s in (first, second) if s not in answered], [], [], 120)
        assert ready, "no answer for the requests in the line"
        answered.extend(ready)
    assert answered == [first, second]
    for s in (first, second):
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        s.close()


def test_idle_and_trickling_connections_are_closed(served):
    url, *_ = served
    idle = socket.create_connection(("127.0.0.1", port_of(url)), timeout=60)
    assert idle.recv(1) == b""  # closed by the server after --idle-timeout, not held forever

    slow = socket.create_connection(("127.0.0.1", port_of(url)), timeout=60)
    request = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n" + "X-Pad: y\r\n" * 40
    closed = False
    for byte in request.encode():  # one byte every 0.25 s: each gap is shorter than the idle timeout
        try:
            slow.send(bytes([byte]))
        except OSError:
            closed = True
            break
        time.sleep(0.25)
    assert closed or slow.recv(1) == b"", "a request trickled in for 80 s was not cut off"
    slow.close()
    idle.close()


def test_more_idle_connections_than_file_descriptors_do_not_lock_anyone_out(served):
    url, *_ = served
    idle = []
    try:
        for _ in range(OPEN_FILES + 20):
            idle.append(socket.create_connection(("127.0.0.1", port_of(url)), timeout=30))
        answer = client(url, timeout=60).completions.create(**small())
        assert answer.usage.completion_tokens <= 2
    finally:
        for s in idle:
            s.close()


def test_adapters_of_another_base_or_without_safetensors_are_refused(served):
    url, *_ = served
    for adapter, says in (("other", "tiny-other"), ("pickled", "adapter_model.safetensors")):
        with pytest.raises(openai.BadRequestError) as refused:
            client(url).completions.create(**small(model=f"tiny-long+{adapter}"))
        message = refused.value.body["message"]
        assert says in message and "\n" not in message and refused.value.body["param"] == "model"
    assert client(url).completions.create(**small(model="tiny-long+pirate")).usage.completion_tokens <= 2
