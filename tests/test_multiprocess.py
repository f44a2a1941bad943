"""Training under `accelerate launch` with 2 CPU processes (gloo) equals 1 process with the same global batch (SFT,
and KTO, whose KL estimate is summed over the processes); only rank 0 writes; a 2-process run resumes from its
checkpoint.

Tolerance: the two runs do the same arithmetic in a different order (each process sums its share of the step, then
gloo adds the two halves; micro-batches are padded to different widths), so they differ by float32 rounding,
about 1e-7 relative per operation. Measured after 4 AdamW steps: 2e-6 at most on weights up to 0.14. We allow 2e-5
(10x that). AdamW's update barely depends on a constant factor in the gradient, so the adapters alone would not
catch a gradient scaled by the number of processes; Adam's first moment (saved in the checkpoint) would, and is
compared too.
"""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratune import train
from loratune.data.batching import step_groups
from loratune.data.build import Sample
from loratune.training.checkpoint import read_state

pytestmark = pytest.mark.long  # two processes under accelerate launch: make test-long

RECORDS = [
    {"instruction": f"What is {a} plus {b}?", "output": f"Arr, it be {a + b}." + " Yo ho!" * a}
    for a in range(5)
    for b in range(3)
]  # 15 samples of varied lengths: the second step of each epoch has 7, an uneven split over 2 processes
OPTIONS = {
    "adapter.dropout": 0.0,  # dropout masks come from each process's RNG: they would differ by design
    "adapter.rank": 4,
    "train.max_steps": 4,
    "train.batch_size": 8,
    "train.micro_batch": 2,
    "train.save_every": 2,
    "train.lr": 1e-2,
}
ATOL = 2e-5


def launch(home: Path, *args: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:  # a free port, so parallel runs on one machine do not collide on 29500
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    cmd += ["-m", "loratune.cli", "--home", str(home), "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def flags(options: dict) -> list[str]:
    return [x for key, value in options.items() for x in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("multiprocess") / "home"
    data = home.parent / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    train(model=str(tiny_model), data=str(data), name="one", home=home, show_progress=False, **OPTIONS)
    two = launch(home, "--model", str(tiny_model), "--data", str(data), "--name", "two", *flags(OPTIONS))
    assert two.returncode == 0, two.stderr[-3000:]
    return home


def metrics(run: Path) -> list[dict]:
    """The training rows (the retention probe writes a row of its own at the end)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_two_processes_train_the_same_adapter_as_one(runs):
    one, two = runs / "loras" / "one", runs / "loras" / "two"
    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=ATOL, msg=key)
    assert max(t.abs().max().item() for t in a.values()) > 0.05, "the adapter barely trained"
    # Adam's moments scale with the gradient: a wrong factor for the number of processes shows here
    s1 = read_state(one / "checkpoint-000002")["optimizer"]["state"]
    s2 = read_state(two / "checkpoint-000002")["optimizer"]["state"]
    for i in s1:
        for moment in ("exp_avg", "exp_avg_sq"):
            scale = s1[i][moment].abs().max().item()
            torch.testing.assert_close(s2[i][moment], s1[i][moment], rtol=1e-4, atol=1e-4 * scale)
    # rank 0 alone wrote metrics (one line per step, not two) with the loss of the whole step
    rows_one, rows_two = metrics(one), metrics(two)
    assert [r["step"] for r in rows_two] == [1, 2, 3, 4]
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_two_processes_resume_from_a_checkpoint(runs):
    """Lose everything after checkpoint-000002 of the 2-process run, resume it with 2 processes: same adapter."""
    resumed = runs / "loras" / "two-resumed"
    shutil.copytree(runs / "loras" / "two", resumed)
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoint-000004")  # the final step's checkpoint
    result = launch(runs, "--name", "two-resumed", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint-000002 (step 2 of 4)" in result.stdout
    a = load_file(runs / "loras" / "two" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert [r["step"] for r in metrics(resumed)] == [1, 2, 3, 4]
    assert not list(resumed.glob(".*tmp*")), "temporary folders left behind"


def test_kto_under_two_processes_equals_one(tmp_path, tiny_model):
    """KTO's z_ref is the whole step's, summed over the processes before the backward passes: 2 processes = 1."""
    labelled = enumerate(RECORDS)
    records = [{"prompt": r["instruction"], "completion": r["output"], "label": n % 3 != 0} for n, r in labelled]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    home, options = tmp_path / "home", OPTIONS | {"train.method": "kto", "train.retention": False}
    train(model=str(tiny_model), data=str(data), name="one", home=home, show_progress=False, **options)
    two = launch(home, "--model", str(tiny_model), "--data", str(data), "--name", "two", *flags(options))
    assert two.returncode == 0, two.stderr[-3000:]
    rows_one, rows_two = metrics(home / "loras" / "one"), metrics(home / "loras" / "two")
    assert len(rows_two) == 4 and any(r["kl"] > 0 for r in rows_one)
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5) and r2["kl"] == pytest.approx(r1["kl"], rel=1e-5)
    a = load_file(home / "loras" / "one" / "adapter_model.safetensors")
    b = load_file(home / "loras" / "two" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=ATOL, msg=key)


def samples(lengths):
    return [Sample(input_ids=list(range(n)), labels=list(range(n))) for n in lengths]


def test_step_groups_split_the_step_evenly():
    batch = samples([5, 3, 9, 1, 7, 2, 8])  # 7 samples over 2 processes, micro-batch 2
    shares = [step_groups(batch, 2, rank=rank, world=2) for rank in (0, 1)]
    assert [len(m) for m, _ in shares] == [2, 2], "both processes run the same number of micro-batches"
    real = [s for m, w in shares for micro, weight in zip(m, w, strict=True) if weight for s in micro]
    assert sorted(len(s.input_ids) for s in real) == sorted(len(s.input_ids) for s in batch)
    assert shares[1][1] == [1.0, 1.0] and shares[0][1] == [1.0, 1.0]
    # 3 samples over 2 processes with micro-batch 1: rank 1 pads its second micro-batch with weight 0
    _, weights = step_groups(samples([4, 2, 6]), 1, rank=1, world=2)
    assert weights == [1.0, 0.0]
    # one process: the whole batch, by length, weights 1
    micro, weights = step_groups(batch, 2)
    assert [len(s.input_ids) for m in micro for s in m] == sorted(len(s.input_ids) for s in batch)
    assert weights == [1.0] * 4
