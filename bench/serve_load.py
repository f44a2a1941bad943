"""Load on `loratune serve`: 1 then N well-behaved clients for T seconds each (how batching scales), then N with a
share of abusive requests.

    python bench/serve_load.py --home /work/testhome --clients 1,16 --seconds 60 --abusive 0.1
    python bench/serve_load.py --home /work/testhome --clients 1,16 --abusive 0 --max-batch 1   # no batching: A/B

One real server subprocess (the default model; `--model tiny` builds the tests' 2-layer LLaMA, for a machine too
busy for the real one), its default limits. Each client sends small greedy
completions (--max-tokens tokens) back to back over a keep-alive connection; in the abusive phase each request is,
with probability --abusive, one of the abuses below instead. Printed per phase: well-behaved requests/s, their p50 /
p95 latency and their errors, the abusive requests by answer; then the requests/s ratio of the last clean phase to
the first, and the server's RSS before, between and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

PROMPT = "Once upon a time, by the sea, there lived"  # a text to continue: not answered by an end of text
ABUSES = [
    "max_tokens 1e9",
    "max_tokens inf",
    "temperature NaN",
    "1 MB prompt",
    "1000 stop strings",
    "50000-char stop string",
    "Content-Length abc",
    "long generation, client leaves after 0.5 s",
    "long stream, client leaves after its first event",
    "connection left idle, half a request sent",
]


def tiny_model() -> str:
    """The tests' tiny random LLaMA (tests/conftest.py), saved in a temporary folder."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_llama

    return str(make_tiny_llama(Path(tempfile.mkdtemp(prefix="serve-load-")) / "tiny-llama"))


def start_server(args) -> tuple[subprocess.Popen, int]:
    if args.model == "tiny":
        args.model = tiny_model()
    cmd = [sys.executable, "-m", "loratune.cli", "serve", "--model", args.model, "--port", "0"]
    if args.max_batch:
        cmd += ["--max-batch", str(args.max_batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.home:
        cmd[3:3] = ["--home", args.home]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = server.stdout.readline()
    if not line.startswith("serving "):
        server.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])
    return server, port


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Client(threading.Thread):
    def __init__(self, port: int, model: str, args, abusive: float, seed: int, until: float):
        super().__init__(daemon=True)
        self.port, self.model, self.args, self.abusive, self.until = port, model, args, abusive, until
        self.random = random.Random(seed)
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.abuse_answers: dict[str, int] = {}
        self.leftovers: list[socket.socket] = []
        self.connection: http.client.HTTPConnection | None = None

    def run(self) -> None:
        while time.monotonic() < self.until:
            if self.random.random() < self.abusive:
                kind = self.random.choice(ABUSES)
                answer = self.abuse(kind)
                self.abuse_answers[answer] = self.abuse_answers.get(answer, 0) + 1
            else:
                self.good()

    def good(self) -> None:
        body = {"model": self.model, "prompt": PROMPT, "max_tokens": self.args.max_tokens, "temperature": 0}
        started = time.monotonic()
        try:
            response = self.send(json.dumps(body))
            data = response.read()
            if response.status != 200 or "choices" not in json.loads(data):
                self.errors.append(f"{response.status}")
                self.connection.close()
                self.connection = None
                return
        except (OSError, http.client.HTTPException) as e:
            self.errors.append(type(e).__name__)
            self.connection = None
            return
        self.latencies.append(time.monotonic() - started)

    def send(self, body: str) -> http.client.HTTPResponse:
        """POST on the keep-alive connection; one that the server closed while idle is replaced, as HTTP clients do."""
        for attempt in (1, 2):
            reused = self.connection is not None
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            try:
                self.connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                return self.connection.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.connection.close()
                self.connection = None
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def abuse(self, kind: str) -> str:
        """One abusive request on its own connection; returns the status line it got (or what happened)."""
        body = {"model": self.model, "prompt": PROMPT, "max_tokens": 16}
        raw = None
        if kind == "max_tokens 1e9":
            body["max_tokens"] = 10**9
        elif kind == "max_tokens inf":
            raw = json.dumps(body).replace('"max_tokens": 16', '"max_tokens": 1e999')
        elif kind == "temperature NaN":
            raw = json.dumps(body | {"temperature": float("nan")})
        elif kind == "1 MB prompt":
            body["prompt"] = "lorem ipsum " * 85_000
        elif kind == "1000 stop strings":
            body["stop"] = [f"s{i}" for i in range(1000)]
        elif kind == "50000-char stop string":
            body["stop"] = "x" * 50_000
        elif kind.startswith("long"):
            body["max_tokens"] = self.args.long_tokens
            body["stream"] = "stream" in kind
        data = (raw or json.dumps(body)).encode()
        length = "abc" if kind == "Content-Length abc" else str(len(data))
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}"
        s = socket.create_connection(("127.0.0.1", self.port), timeout=600)
        if kind.startswith("connection left idle"):
            s.sendall(head.encode()[:40])
            self.leftovers.append(s)  # the server must close it (idle timeout) or evict it; closed at the end
            return "left open"
        s.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + data)
        try:
            if kind.startswith("long generation"):
                time.sleep(0.5)
                return "left"
            if kind.startswith("long stream"):
                first = s.recv(65536)
                return "left after " + first.split(b"\r\n", 1)[0].decode("latin-1", "replace")
            answer = s.recv(65536).split(b"\r\n", 1)[0].decode("latin-1", "replace")
            return answer or "closed"
        except OSError as e:
            return type(e).__name__
        finally:
            s.close()


def phase(name: str, port: int, model: str, args, abusive: float, count: int) -> dict:
    until = time.monotonic() + args.seconds
    clients = [Client(port, model, args, abusive, seed, until) for seed in range(count)]
    started = time.monotonic()
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    elapsed = time.monotonic() - started
    latencies = sorted(x for c in clients for x in c.latencies)
    errors = [e for c in clients for e in c.errors]
    abuse: dict[str, int] = {}
    for c in clients:
        for answer, n in c.abuse_answers.items():
            abuse[answer] = abuse.get(answer, 0) + n
        for s in c.leftovers:
            s.close()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")
    result = {
        "phase": name,
        "good_requests": len(latencies),
        "good_per_s": len(latencies) / elapsed,
        # Little's law for clients that send back to back: the rate without the phase's ragged end (the requests
        # still running when time is up are waited for, which weighs on phases of few, long requests)
        "steady_per_s": count / statistics.mean(latencies) if latencies else float("nan"),
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p95_s": p95,
        "max_s": latencies[-1] if latencies else float("nan"),
        "good_errors": len(errors),
        "abusive": abuse,
    }
    print(
        f"{name:11s} good: {len(latencies)} in {elapsed:.0f} s = {result['good_per_s']:.3f} req/s "
        f"(clients / mean latency: {result['steady_per_s']:.3f}), "
        f"p50 {result['p50_s']:.2f} s, p95 {p95:.2f} s, max {result['max_s']:.2f} s, errors {len(errors)}"
        + (f" {sorted(set(errors))}" if errors else ""),
        flush=True,
    )
    if abuse:
        print(f"            abusive: {sum(abuse.values())} -> {json.dumps(abuse, sort_keys=True)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("LORATUNE_HOME"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", default="1,16", help="client counts, one clean phase each (e.g. 1,16)")
    parser.add_argument("--max-batch", type=int, help="the server's --max-batch (default: its own)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--abusive", type=float, default=0.1, help="share of abusive requests in the second phase")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per well-behaved request")
    parser.add_argument(
        "--long-tokens",
        type=int,
        help="max_tokens of the abusive long generations (default: 2048, the server's limit; "
        "400 on the tiny model, whose context is 512)",
    )
    args = parser.parse_args()
    args.long_tokens = args.long_tokens or (400 if args.model == "tiny" else 2048)
    counts = [int(n) for n in args.clients.split(",")]

    server, port = start_server(args)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/v1/models")
        model = json.loads(connection.getresponse().read())["data"][0]["id"]
        connection.close()
        print(
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, model {model}, "
            f"{args.clients} clients x {args.seconds:.0f} s, {args.max_tokens} tokens per good request, "
            f"--max-batch {args.max_batch or 'default'}, --threads {args.threads or 'default'}, "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        rss = [rss_mb(server.pid)]
        phase("warm-up", port, model, argparse.Namespace(**vars(args) | {"seconds": 5}), 0.0, 1)
        clean = [phase(f"clean x{n}", port, model, args, 0.0, n) for n in counts]
        rss.append(rss_mb(server.pid))
        if len(clean) > 1:
            ratio = clean[-1]["good_per_s"] / clean[0]["good_per_s"]
            steady = clean[-1]["steady_per_s"] / clean[0]["steady_per_s"]
            print(
                f"requests/s at {counts[-1]} clients / at {counts[0]}: {ratio:.2f}x ({steady:.2f}x steady)", flush=True
            )
        if args.abusive > 0:
            abused = phase(f"abusive x{counts[-1]}", port, model, args, args.abusive, counts[-1])
            rss.append(rss_mb(server.pid))
            print(f"p95 abusive / clean: {abused['p95_s'] / clean[-1]['p95_s']:.2f}")
        after = ", ".join(f"{x:.0f} MB" for x in rss[1:])
        print(f"server RSS: {rss[0]:.0f} MB at start, then {after}; load average {os.getloadavg()[0]:.1f}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
