"""Fault injection: the real `loratune train` in a subprocess, stopped and killed with real signals at named points.

A run waits at a named point (LORATUNE_PAUSE_AT, see loratune/training/pause.py) until the test has sent its signal, so
each kill lands exactly there: during a step, while a checkpoint is written, between its rename and its COMPLETE
marker, and during the final save. After each kill the run folder must hold no truncated adapter, and the resumed
run must continue from the newest complete checkpoint and end exactly like an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import sum_records, write_jsonl

pytestmark = pytest.mark.long  # real kills at every pause point, then resumes: make test-long

RECORDS = sum_records(range(6), range(4), "Arr! It be {}.")
DATA_FILE = "sums.jsonl"
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


class Run:
    """One `loratune train` subprocess, optionally told to wait at a named point."""

    def __init__(self, home: Path, model: Path, data: Path, *extra: str, pause: str | None = None):
        tag = time.monotonic_ns()
        self.flag = home.parent / f"paused-{tag}"
        # Output to files, not pipes: the test reads stderr while the run goes on (see `signal`).
        self.out, self.err = home.parent / f"out-{tag}", home.parent / f"err-{tag}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if pause:
            env.update(LORATUNE_PAUSE_AT=pause, LORATUNE_PAUSE_FILE=str(self.flag))
        overrides = [item for key, value in OPTIONS.items() for item in (f"--{key}", str(value))]
        cmd = [sys.executable, "-m", "loratune.cli", "--home", str(home), "train", "--model", str(model)]
        cmd += ["--data", str(data), "--name", "run", *overrides, *extra]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)

    def wait_paused(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not self.flag.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended before its pause point:\n{self.err.read_text()}")
            assert time.monotonic() < deadline, "the run never reached its pause point"
            time.sleep(0.02)

    def signal(self, sig: int, times: int = 1) -> None:
        """Send `sig` while the run waits at its pause point, then let it go on.

        Before a second signal, wait until the run has handled the first (it says so on stderr): two signals that
        arrive before Python runs its handler would count as one.
        """
        for number in range(times):
            self.proc.send_signal(sig)
            deadline = time.monotonic() + 60
            while number < times - 1 and "received: stopping after this step" not in self.err.read_text():
                assert time.monotonic() < deadline, "the run never handled the signal"
                time.sleep(0.02)
        self.flag.unlink()

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.out.read_text(), self.err.read_text()


def complete_checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / "COMPLETE").is_file())


def assert_nothing_truncated(run: Path) -> None:
    """Every adapter a user or peft would load (the run folder's own, every checkpoint-*) loads whole."""
    from safetensors.torch import load_file

    folders = [run, *run.glob("checkpoint-*")]
    for folder in folders:
        if (folder / "adapter_model.safetensors").exists():
            assert load_file(folder / "adapter_model.safetensors"), folder
            assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4, folder
    yaml.safe_load((run / "loratune.yaml").read_text())


def metrics(run: Path) -> list[dict]:
    """The training rows (the retention probe writes a row of its own at the end)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


# (pause point, signals sent there, exit code, newest complete checkpoint afterwards, what it shows).
# Each run resumes from the one before, so every kill is also a resume test. 12 steps, a checkpoint every 2.
CHAIN = [
    ("step@3", [signal.SIGKILL], -9, 2, "kill -9 during step 3"),
    ("checkpoint-write@1", [signal.SIGKILL], -9, 2, "kill -9 while checkpoint-4 is written"),
    ("checkpoint-rename@1", [signal.SIGKILL], -9, 2, "kill -9 after checkpoint-4's rename, before COMPLETE"),
    ("step@3", [signal.SIGINT], 0, 5, "Ctrl-C during step 5: finish it, save checkpoint-5, exit 0"),
    ("checkpoint-write@1", [signal.SIGTERM], 0, 6, "SIGTERM while checkpoint-6 is written: finish it, exit 0"),
    ("checkpoint-write@1", [signal.SIGINT] * 2, 130, 6, "Ctrl-C twice while checkpoint-8 is written: abort"),
    # the final step is written as a complete checkpoint before the adapter files, so it survives this kill
    ("final-save@1", [signal.SIGKILL], -9, 12, "kill -9 during the final save"),
]


def test_kills_at_every_point_then_resume_exactly(tiny_model, data_file, home, tmp_path):
    from safetensors.torch import load_file

    from loratune import train

    straight = train(
        model=str(tiny_model),
        data=str(data_file),
        name="straight",
        home=tmp_path / "ref",
        show_progress=False,
        **OPTIONS,
    )
    expected = [row["loss"] for row in metrics(straight.run_dir)]
    assert len(expected) == 12
    run, last_complete, exact = home / "loras" / "run", 0, 0
    for number, (point, signals, code, newest, what) in enumerate(CHAIN):
        proc = Run(home, tiny_model, data_file, *(["--resume"] if number else []), pause=point)
        proc.wait_paused()
        proc.signal(signals[0], times=len(signals))
        returncode, out, err = proc.finish()
        assert returncode == code, f"{what}: exit {returncode}\n{err}"
        assert "Traceback" not in err, f"{what}:\n{err}"
        if number:  # it resumed from the newest complete checkpoint the run before left
            assert f"resuming from checkpoint-{last_complete:06d}" in out, f"{what}:\n{out}"
        assert complete_checkpoints(run)[-1] == newest, what
        assert_nothing_truncated(run)
        rows = metrics(run)
        assert [r["loss"] for r in rows] == pytest.approx(expected[: len(rows)], abs=1e-5), what
        exact += 1
        last_complete = newest
    code, out, err = Run(home, tiny_model, data_file, "--resume").finish()
    assert code == 0, err
    assert f"resuming from checkpoint-{last_complete:06d}" in out and "done: 12 steps" in out
    assert [r["loss"] for r in metrics(run)] == pytest.approx(expected, abs=1e-5)
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))
    a, b = load_file(straight.run_dir / "adapter_model.safetensors"), load_file(run / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    assert not list(run.glob(".*tmp*")), "temporary folders left behind"
    print(
        f"\nfault injection: {len(CHAIN)} kill points tried, {exact} resumed with the same losses, final adapter equal"
    )


@pytest.mark.parametrize("method", ["dpo", "kto", "dpo from an adapter"])
def test_preference_methods_survive_kills_and_resume_exactly(method, tiny_model, home, tmp_path):
    """The same guarantees for the preference methods (DPO; KTO, whose z is measured every step; DPO started from an
    SFT adapter, its reference): kill -9 mid-step and during a checkpoint, Ctrl-C, then resume."""
    from loratune import train

    if method == "kto":  # 24 labelled answers, half of them undesirable
        records = [{"prompt": r["instruction"], "completion": r["output"] if i % 2 else "No.", "label": bool(i % 2)}
                   for i, r in enumerate(RECORDS)]  # fmt: skip
    else:
        records = [{"instruction": r["instruction"], "chosen": r["output"], "rejected": "No."} for r in RECORDS]
    data = write_jsonl(tmp_path / "prefs.jsonl", records)  # 24 items, 4 a step: 12 steps in 2 epochs
    options = {"train.method": "kto" if method == "kto" else "dpo"}
    if method == "dpo from an adapter":
        sft = train(model=str(tiny_model), data=str(write_jsonl(tmp_path / "sft.jsonl", RECORDS)), name="sft",
                    home=tmp_path / "sft-home", show_progress=False, **OPTIONS | {"train.max_steps": 4})  # fmt: skip
        options["adapter.init_from"] = str(sft.run_dir)
    flags = [item for key, value in options.items() for item in (f"--{key}", value)]
    straight = train(model=str(tiny_model), data=str(data), name="straight", home=tmp_path / "ref",
                     show_progress=False, **OPTIONS | options)  # fmt: skip
    expected = [row["loss"] for row in metrics(straight.run_dir)]
    run = home / "loras" / "run"
    for number, (point, sig, code) in enumerate(
        [("step@3", signal.SIGKILL, -9), ("checkpoint-write@1", signal.SIGKILL, -9), ("step@2", signal.SIGINT, 0)]
    ):
        proc = Run(home, tiny_model, data, *flags, *(["--resume"] if number else []), pause=point)
        proc.wait_paused()
        proc.signal(sig)
        returncode, _, err = proc.finish()
        assert returncode == code and "Traceback" not in err, err
        assert_nothing_truncated(run)
        rows = metrics(run)
        assert [r["loss"] for r in rows] == pytest.approx(expected[: len(rows)], abs=1e-5), point
        assert all(("kl" if method == "kto" else "accuracy") in r for r in rows)
    code, out, err = Run(home, tiny_model, data, *flags, "--resume").finish()
    assert code == 0, err
    assert [r["loss"] for r in metrics(run)] == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------- kills during promote, merge, export and delete


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model):
    """A finished 4-step run 'run' (checkpoint-2 and the final checkpoint-4) and models/merged (a merge of step 2)."""
    from loratune import train
    from loratune.adapters import merge

    root = tmp_path_factory.mktemp("finished")
    data = root / "sums.jsonl"
    write_jsonl(data, RECORDS)
    options = {**OPTIONS, "train.max_steps": 4}
    train(model=str(tiny_model), data=str(data), name="run", home=root / "home", show_progress=False, **options)
    merge("run/checkpoint-000002", "merged", root / "home")
    return root / "home"


def killed_at(home: Path, point: str, *args: str) -> None:
    """Run `loratune --home home <args>` in a subprocess, kill -9 it at `point`."""
    flag = home.parent / f"paused-{time.monotonic_ns()}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORATUNE_PAUSE_AT": point, "LORATUNE_PAUSE_FILE": str(flag)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loratune.cli", "--home", str(home), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"{args} ended before {point}:\n{proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{args} never reached {point}"
        time.sleep(0.02)
    proc.kill()
    assert proc.wait(timeout=60) == -9
    flag.unlink()


def assert_everything_loads(home: Path) -> None:
    """Every file a user or a program would open in loras/ and models/ (not the hidden temporaries) loads whole."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    def visible(path: Path) -> bool:
        return not any(part.startswith(".") for part in path.relative_to(home).parts)

    files = [f for f in home.rglob("*") if f.is_file() and visible(f)]
    for file in files:
        if file.suffix == ".safetensors":
            assert load_file(file), file
        elif file.suffix == ".json":
            json.loads(file.read_text())
        elif file.suffix == ".gguf":
            assert gguf.GGUFReader(file).tensors, file
    for model in (home / "models").glob("[!.]*"):
        AutoModelForCausalLM.from_pretrained(model)


def hidden_leftovers(home: Path) -> list[str]:
    """Hidden files a killed command left, beside the run lock and the samples cache training keeps on purpose."""
    cache = home / "datasets" / ".cache"  # a killed writer's leftovers there: tests/test_data_cache.py
    return sorted(
        str(p.relative_to(home)) for p in home.rglob(".*") if p.name != ".lock" and cache not in (p, *p.parents)
    )


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


KILLS = {
    # the checkpoint's adapter_config.json is in, its weights copied beside but not yet renamed in
    "promote": ("promote-copy@2", "loras", "promote", "run", "2"),
    # the old models/merged moved aside, the new one complete under its hidden name, not yet renamed in
    "merge --overwrite": ("merge-swap@1", "loras", "merge", "run", "--out", "merged", "--overwrite"),
    "merge": ("merge-written@1", "loras", "merge", "run", "--out", "fresh"),
    "export": ("export-written@1", "loras", "export", "run"),
    "delete": ("delete@1", "loras", "delete", "run", "--yes"),
}


@pytest.mark.parametrize("what", list(KILLS))
def test_a_kill_during_an_adapter_command_leaves_old_or_new_and_no_litter(what, finished, tmp_path, capsys):
    from loratune.adapters import get_adapter, list_adapters, promote, undo_promote
    from loratune.cli import main

    home = tmp_path / "home"
    shutil.copytree(finished, home)
    point, *args = KILLS[what]
    killed_at(home, point, *args)
    assert_everything_loads(home)
    assert hidden_leftovers(home), "the kill should have left a temporary (else the pause point is misplaced)"
    assert main(["--home", str(home), "models", "list"]) == 0
    assert "." not in "".join(line.split()[0][0] for line in capsys.readouterr().out.splitlines())
    assert main(["--home", str(home), "loras", "list"]) == 0  # the next command cleans what the kill left
    assert hidden_leftovers(home) == []
    assert_everything_loads(home)

    run, models = home / "loras" / "run", home / "models"
    if what == "promote":  # the old adapter (step 4), still promotable, and undoable after
        assert same_weights(run, run / "checkpoint-000004") and get_adapter("run", home).step == 4
        promote("run", "2", home)
        assert undo_promote("run", home).step == 4 and same_weights(run, run / "checkpoint-000004")
    elif what == "merge --overwrite":  # rolled back to the old merged model
        assert "checkpoint-000002" in (models / "merged" / "MERGED_FROM.txt").read_text()
    elif what == "merge":  # nothing left behind
        assert not (models / "fresh").exists()
    elif what == "export":
        assert not (run / "adapter.gguf").exists()
    else:  # the whole run went, in one rename
        assert not run.exists() and list_adapters(home) == []


def test_a_run_being_trained_cannot_be_deleted_and_the_list_shows_its_adapters_step(
    tiny_model, data_file, home, capsys
):
    """While run 'run' resumes (at step 5, 4 logged), its adapter is the one saved when it stopped at step 3."""
    from loratune.adapters import get_adapter
    from loratune.cli import main

    first = Run(home, tiny_model, data_file, pause="step@3")
    first.wait_paused()
    first.signal(signal.SIGINT)
    assert first.finish()[0] == 0
    resumed = Run(home, tiny_model, data_file, "--resume", pause="step@2")
    resumed.wait_paused()
    try:
        run = home / "loras" / "run"
        assert max(r["step"] for r in metrics(run)) == 4
        info = get_adapter("run", home)
        assert info.training and info.step == 3 and info.loss == metrics(run)[2]["loss"]
        before = sorted(p.name for p in run.rglob("*"))
        # In this process (the CLI's main): the run waits at its pause point for at most 60 s.
        for command in (["loras", "delete", "run", "--yes"], ["loras", "promote", "run", "3"]):
            assert main(["--home", str(home), *command]) == 1
            [line] = capsys.readouterr().err.splitlines()
            assert f"is being trained (pid {resumed.proc.pid})" in line, line
        assert sorted(p.name for p in run.rglob("*")) == before
        assert main(["--home", str(home), "loras", "list"]) == 0
        assert "run: rank 4, alpha 64, step 3, training now" in capsys.readouterr().out
        assert resumed.proc.poll() is None, "the run went on before the checks were done"
    finally:
        resumed.proc.kill()
        resumed.proc.wait()
        resumed.flag.unlink(missing_ok=True)
