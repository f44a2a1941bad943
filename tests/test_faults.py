"""Fault injection: the real `loratune train` in a subprocess, stopped and killed with real signals at named points.

A run waits at a named point (LORATUNE_PAUSE_AT, see loratune/train/pause.py) until the test has sent its signal, so
each kill lands exactly there: during a step, while a checkpoint is written, between its rename and its COMPLETE
marker, and during the final save. After each kill the run folder must hold no truncated adapter, and the resumed
run must continue from the newest complete checkpoint and end exactly like an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECORDS = [
    {"instruction": f"What is {a} plus {b}?", "output": f"Arr! It be {a + b}."} for a in range(6) for b in range(4)
]
# 24 samples, 4 per step (2 micro-batches of 2): 6 steps per epoch, 12 steps in 2 epochs; a checkpoint every 2 steps.
OPTIONS = {
    "train.epochs": 2,
    "train.batch_size": 4,
    "train.micro_batch": 2,
    "train.save_every": 2,
    "train.lr": 3e-3,
    "train.warmup_ratio": 0,
    "adapter.rank": 4,
    "adapter.dropout": 0,
    "adapter.targets": "q_proj,v_proj",
}


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


class Run:
    """One `loratune train` subprocess, optionally told to wait at a named point."""

    def __init__(self, home: Path, model: Path, data: Path, *extra: str, pause: str | None = None):
        self.flag = home.parent / f"paused-{time.monotonic_ns()}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if pause:
            env.update(LORATUNE_PAUSE_AT=pause, LORATUNE_PAUSE_FILE=str(self.flag))
        overrides = [item for key, value in OPTIONS.items() for item in (f"--{key}", str(value))]
        cmd = [sys.executable, "-m", "loratune.cli", "--home", str(home), "train", "--model", str(model)]
        cmd += ["--data", str(data), "--name", "run", *overrides, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def wait_paused(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not self.flag.exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"the run ended before its pause point:\n{out}\n{err}")
            assert time.monotonic() < deadline, "the run never reached its pause point"
            time.sleep(0.02)

    def signal(self, sig: int, times: int = 1) -> None:
        """Send `sig` while the run waits at its pause point, then let it go on."""
        for _ in range(times):
            self.proc.send_signal(sig)
            time.sleep(0.1)
        self.flag.unlink()

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def complete_checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / "COMPLETE").is_file())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_step_saves_and_exits_0(tiny_model, data_file, home, sig):
    run = Run(home, tiny_model, data_file, pause="step@3")
    run.wait_paused()
    run.signal(sig)
    code, out, err = run.finish()
    assert code == 0, err
    assert "stopped: 3 steps" in out
    folder = home / "loras" / "run"
    assert complete_checkpoints(folder) == [2, 3]  # the periodic one, and the stop's own after step 3
    assert [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (folder / "adapter_model.safetensors").is_file()
