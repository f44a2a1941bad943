"""Training under `accelerate launch --use_fsdp --fsdp_version 2` with 2 CPU processes (gloo) equals 1 process; its
checkpoints are whole PEFT adapters that resume on 1 process, and a 1-process checkpoint resumes under FSDP.

accelerate 1.15 runs FSDP on accelerators only (on CPUs `--use_fsdp` trains with DDP); torch's `fully_shard` runs
on CPUs over gloo, so the 2 processes start through tests/fsdp_on_cpu.py, which makes the one choice accelerate
skips on CPUs. Everything after it is the GPU path: accelerate's FSDP2 preparation (one shard unit per decoder
layer), every parameter a DTensor split over the 2 processes, loratune's gathers into whole checkpoints.

Tolerance: the runs do the same arithmetic in a different order (each process sums its share of the step, the
reduce-scatter adds the halves; one process takes the loss through the chunked head, FSDP through the whole model),
so they differ by float32 rounding. Measured after 4 AdamW steps: 1.0e-6 at most on weights up to 0.14, Adam's
moments within 5.7e-6 of their largest value, the losses (6 decimals in metrics.jsonl) within 1e-6. We allow 1e-5
on the weights (10x; the DDP test allows 2e-5), 1e-5 on each step's training, evaluation and retention loss, and,
as the DDP test does, 1e-4 relative on the moments, which a gradient scaled by the number of processes, or a resume
that lost them, would miss by far. A resume lands within 6e-8 of the run it continues.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from loratune.training.checkpoint import read_state
from test_multiprocess import OPTIONS as DDP_OPTIONS
from test_multiprocess import RECORDS, flags

pytestmark = [
    pytest.mark.long,  # three runs of 2 processes under accelerate launch: make test-long
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="this torch has no torch.distributed with the gloo backend, which 2 CPU processes need",
    ),
    pytest.mark.skipif(not hasattr(Accelerator, "is_fsdp2"), reason="accelerate < 1.6 has no FSDP2"),
]

SHIM = Path(__file__).with_name("fsdp_on_cpu.py")
OPTIONS = {
    **DDP_OPTIONS,
    "data.eval_split": 0.2,  # an evaluation and the retention probe after every step: passes without gradients
    "train.eval_every": 1,  # between the training steps, which FSDP must gather and free like the others
}
ATOL = 1e-5
CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # both arms on CPU, wherever the test runs


def fsdp(home: Path, *args: str, wrap: bool = True, shim: bool = True) -> subprocess.CompletedProcess:
    """`loratune train ARGS` in 2 processes sharded with FSDP2, as on GPUs but over gloo (without `shim`: as
    accelerate alone runs them on CPUs)."""
    with socket.socket() as s:  # a free port, so parallel runs on one machine do not collide on 29500
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2"]
    cmd += ["--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"] if wrap else []
    cmd += [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]
    cmd += [str(SHIM)] if shim else ["-m", "loratune.cli"]
    cmd += ["--home", str(home), "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=CPU_ONLY)


def single(home: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "loratune.cli", "--home", str(home), "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=CPU_ONLY)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("fsdp") / "home"
    data = home.parent / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    run = ["--model", str(tiny_model), "--data", str(data), *flags(OPTIONS)]
    one = single(home, "--name", "one", *run)
    assert one.returncode == 0, one.stderr[-3000:]
    two = fsdp(home, "--name", "two", *run)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "sharded over 2 processes (FSDP2)" in two.stdout
    return home


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_adapter(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=atol, msg=key)


def assert_same_moments(a: Path, b: Path) -> None:
    """Adam's moments scale with the gradient: a wrong factor for the number of processes, or a resume that lost
    them (a fresh optimizer), shows here."""
    s1, s2 = read_state(a)["optimizer"]["state"], read_state(b)["optimizer"]["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        assert s2[i]["step"] == s1[i]["step"]
        for moment in ("exp_avg", "exp_avg_sq"):
            scale = s1[i][moment].abs().max().item()
            torch.testing.assert_close(s2[i][moment], s1[i][moment], rtol=1e-4, atol=1e-4 * scale)


def assert_same_base_answers(a: Path, b: Path) -> None:
    """The retention probe's base answers: the same tokens; their top log-probs equal up to float32 round-off (the
    sharded forward sums in another order, which moves a last digit)."""
    one, two = json.loads(a.read_text()), json.loads(b.read_text())
    assert one["key"] == two["key"]
    for group in ("probe", "replay"):
        assert len(one[group]) == len(two[group])
        for x, y in zip(one[group], two[group], strict=True):
            for field in ("prompt", "answer", "short", "top_ids"):
                assert x[field] == y[field], field
            for p, q in zip(x["top_logp"], y["top_logp"], strict=True):
                assert p == pytest.approx(q, abs=1e-5)


def cut_back(run: Path, to: Path) -> None:
    """A copy of `run` that lost everything after checkpoint-000002."""
    shutil.copytree(run, to)
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        (to / name).unlink()
    shutil.rmtree(to / "checkpoint-000004")


def test_two_sharded_processes_train_the_same_adapter_as_one(runs):
    one, two = runs / "loras" / "one", runs / "loras" / "two"
    assert_same_adapter(one, two, ATOL)
    assert max(t.abs().max().item() for t in load_file(one / "adapter_model.safetensors").values()) > 0.05
    for checkpoint in ("checkpoint-000002", "checkpoint-000004"):
        assert_same_adapter(one / checkpoint, two / checkpoint, ATOL)  # each a whole adapter, not a shard
        assert_same_moments(one / checkpoint, two / checkpoint)
    # rank 0 alone wrote metrics (one row per step and per evaluation, not two) with the loss of the whole step
    rows_one, rows_two = metrics(one), metrics(two)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        for key in ("loss", "eval_loss", "retention_kl"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], abs=1e-5), (r1["step"], key)
    assert_same_base_answers(one / "retention.json", two / "retention.json")
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_a_sharded_checkpoint_loads_as_an_adapter(runs, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    checkpoint = runs / "loras" / "two" / "checkpoint-000002"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), checkpoint)
    saved = load_file(checkpoint / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key.replace(".weight", ".default.weight")], value, rtol=0, atol=0)


def resumed_from_checkpoint_2(runs: Path, source: str, name: str, launch) -> Path:
    """Lose everything after checkpoint-000002 of run `source`, resume it through `launch` as run `name`: the
    uninterrupted run's adapter and Adam moments."""
    uninterrupted, resumed = runs / "loras" / source, runs / "loras" / name
    cut_back(uninterrupted, resumed)
    result = launch(runs, "--name", resumed.name, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint-000002 (step 2 of 4)" in result.stdout
    assert_same_adapter(uninterrupted, resumed, ATOL)
    assert_same_moments(uninterrupted / "checkpoint-000004", resumed / "checkpoint-000004")  # the moments went on
    return resumed


def test_a_sharded_checkpoint_resumes_on_one_process(runs):
    """checkpoint-000002 of the FSDP run resumed on 1 process."""
    resumed = resumed_from_checkpoint_2(runs, "two", "two-on-one", single)
    assert [r["step"] for r in metrics(resumed)] == [r["step"] for r in metrics(runs / "loras" / "two")]


def test_a_one_process_checkpoint_resumes_sharded(runs):
    """The other way: checkpoint-000002 of the 1-process run resumed by 2 FSDP processes."""
    resumed = resumed_from_checkpoint_2(runs, "one", "one-on-two", fsdp)
    assert not list(resumed.glob(".*tmp*")), "temporary folders left behind"


def test_fsdp_without_the_layer_wrap_is_refused(runs, tiny_model):
    result = fsdp(runs, "--model", str(tiny_model), "--data", str(runs.parent / "sums.jsonl"), "--name", "nowrap",
                  wrap=False)  # fmt: skip
    assert result.returncode != 0
    assert "add --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP" in result.stderr
    assert not (runs / "loras" / "nowrap").exists()


def test_fsdp_asked_for_on_cpus_trains_with_ddp_and_says_so(runs, tiny_model):
    """accelerate alone (no shim) turns --use_fsdp on CPUs into DDP; loratune says so instead of pretending."""
    data = str(runs.parent / "sums.jsonl")
    result = fsdp(runs, "--model", str(tiny_model), "--data", data, "--name", "ddp", "--train.max_steps", "1",
                  shim=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate runs FSDP on GPUs only; these 2 cpu processes train with DDP" in result.stdout
    assert "sharded over" not in result.stdout
