"""Stop and resume in-process: the caller's stop, resume: auto, and "N steps straight == k steps + resume + N-k"."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from loratune import RunConfig, train
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

RECORDS = [
    {"instruction": f"What is {a} plus {b}?", "output": f"Arr, matey! It be {a + b}."}
    for a in range(1, 7)
    for b in range(1, 4)
]  # 18 samples


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "pirate.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def config(model, data, name="run", **train):
    options = dict(epochs=3, batch_size=4, micro_batch=2, lr=3e-3, save_every=2, seed=3, warmup_ratio=0.1)
    options.update(train)
    return RunConfig(
        name=name,
        model=ModelSpec(source=str(model)),
        adapter=AdapterSpec(rank=4, alpha=8, dropout=0.1),  # dropout on: the RNG state must resume too
        data=DataSpec(path=str(data)),
        train=TrainSpec(**options),
    )


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_adapter(a_dir, b_dir) -> None:
    a, b = load_file(a_dir / "adapter_model.safetensors"), load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_callers_stop_ends_after_the_step_and_resume_is_exact(tiny_model, data_file, home):
    """An in-process caller stops a run with a threading.Event; the resumed run equals an uninterrupted one."""
    straight = train(config(tiny_model, data_file, name="straight"), home=home, show_progress=False)
    assert straight.steps == 15  # ceil(18 / 4) = 5 steps per epoch, 3 epochs

    stop = threading.Event()
    # Stop during the second epoch (step 7 of 15), away from the checkpoint rhythm (every 2 steps).
    cut = train(
        config(tiny_model, data_file, name="cut"),
        home=home,
        show_progress=False,
        stop=stop,
        on_step=lambda row: row["step"] == 7 and stop.set(),
    )
    assert cut.stopped and cut.steps == 7
    assert (cut.run_dir / "checkpoint-000007" / "COMPLETE").is_file()
    resumed = train(config(tiny_model, data_file, name="cut", resume=True), home=home, show_progress=False)
    assert not resumed.stopped and resumed.steps == 15
    assert losses(cut.run_dir) == pytest.approx(losses(straight.run_dir), abs=1e-5)
    assert_same_adapter(straight.run_dir, cut.run_dir)
