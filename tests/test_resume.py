"""Stop and resume in-process: the caller's stop, resume: auto, and "N steps straight == k steps + resume + N-k"."""

from __future__ import annotations

import json
import os
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


def test_resume_auto_starts_then_resumes_and_reports_incomplete_checkpoints(tiny_model, data_file, home, capsys):
    stop = threading.Event()
    first = train(
        config(tiny_model, data_file, resume="auto"),
        home=home,
        show_progress=False,
        stop=stop,
        on_step=lambda row: row["step"] == 3 and stop.set(),
    )
    assert first.stopped and first.steps == 3  # nothing to resume: it started
    run = first.run_dir
    # What kills leave behind: a checkpoint renamed but never marked complete, and a temporary folder.
    (run / "checkpoint-000009").mkdir()
    (run / "checkpoint-000009" / "adapter_model.safetensors").write_bytes(b"")
    (run / ".checkpoint-000010.tmp-4242").mkdir()
    capsys.readouterr()
    second = train(config(tiny_model, data_file, resume="auto"), home=home)
    out = capsys.readouterr().out
    assert "ignoring incomplete checkpoint(s) (interrupted while saving): checkpoint-000009, .checkpoint-000010" in out
    assert "resuming from checkpoint-000003" in out
    assert second.steps == 15 and not second.stopped
    assert not (run / ".checkpoint-000010.tmp-4242").exists() and not (run / "checkpoint-000009").exists()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 16))


def test_keep_checkpoints_keeps_the_newest_complete_ones(tiny_model, data_file, home):
    result = train(config(tiny_model, data_file, save_every=1, keep_checkpoints=2), home=home, show_progress=False)
    assert sorted(p.name for p in result.run_dir.glob("checkpoint-*")) == ["checkpoint-000013", "checkpoint-000014"]


def test_stop_at_loss_ends_the_run_with_its_adapter(tiny_model, data_file, home):
    straight = losses(train(config(tiny_model, data_file, name="all"), home=home, show_progress=False).run_dir)
    target = sorted(straight)[len(straight) // 2] + 1e-5  # reached mid-run (+ a margin for the logged rounding)
    first_below = next(i for i, loss in enumerate(straight, 1) if loss <= target)
    result = train(config(tiny_model, data_file, stop_at_loss=target), home=home, show_progress=False)
    assert result.steps == first_below < 15 and not result.stopped
    assert (result.run_dir / "adapter_model.safetensors").is_file()
    assert losses(result.run_dir) == pytest.approx(straight[:first_below], abs=1e-6)


def test_nan_loss_stops_and_keeps_the_good_checkpoints(tiny_model, data_file, home, tmp_path):
    """A base model whose embedding of one token is NaN, and one record using it: its step's loss is NaN."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratune import LoratuneError
    from loratune.train.loop import step_samples

    poisoned = tmp_path / "poisoned"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    unk = AutoTokenizer.from_pretrained(tiny_model).convert_tokens_to_ids("<unk>")
    with torch.no_grad():
        model.get_input_embeddings().weight[unk] = float("nan")
    model.save_pretrained(poisoned)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(poisoned)
    with open(data_file, "a") as f:
        f.write(json.dumps({"instruction": "Say <unk>.", "output": "<unk>"}) + "\n")  # sample 19 (index 18)
    seed = next(
        s
        for s in range(100)
        if 18 not in step_samples(list(range(19)), 0, 5, 4, s) + step_samples(list(range(19)), 1, 5, 4, s)
    )
    bad_step = next(k + 1 for k in range(5) if 18 in step_samples(list(range(19)), k, 5, 4, seed))

    with pytest.raises(LoratuneError) as info:
        train(config(poisoned, data_file, save_every=1, seed=seed), home=home, show_progress=False)
    assert str(info.value).startswith(f"loss became nan at step {bad_step}, so training stopped before that step")
    run = home / "loras" / "run"
    saved = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert saved == list(range(1, bad_step))  # every finished step, none from the failed one
    assert not (run / "adapter_model.safetensors").exists()  # no final save of a failed run
    for step in saved:
        folder = run / f"checkpoint-{step:06d}"
        assert (folder / "COMPLETE").is_file()
        assert all(torch.isfinite(t).all() for t in load_file(folder / "adapter_model.safetensors").values())


def test_out_of_memory_saves_the_finished_steps_and_resumes_with_a_smaller_micro_batch(
    tiny_model, data_file, home, monkeypatch
):
    """Fault injection: the 6th micro-batch (step 3's second) raises torch.OutOfMemoryError, as a GPU would."""
    from loratune import LoratuneError
    from loratune.train import loop

    # Dropout off: other micro-batch shapes draw other dropout masks; everything else stays the same. Unpacked, so a
    # step is exactly 2 micro-batches of 2 samples.
    unpacked = {"adapter.dropout": 0, "train.packing": False}
    straight = train(
        config(tiny_model, data_file, name="straight", save_every=0),
        home=home,
        show_progress=False,
        **unpacked,
    )
    real, calls = loop.token_loss_sum, []

    def runs_out_of_memory(model, batch):
        calls.append(1)
        if len(calls) == 6:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch)

    monkeypatch.setattr(loop, "token_loss_sum", runs_out_of_memory)
    with pytest.raises(LoratuneError) as info:
        train(config(tiny_model, data_file, save_every=0), home=home, show_progress=False, **unpacked)
    assert str(info.value) == (
        "out of memory at step 3 with train.micro_batch 2; saved the 2 finished steps as checkpoint-000002; "
        f"continue with a smaller micro-batch: loratune --home {home.resolve()} train --name run --resume "
        "--train.micro_batch 1 (the batch size stays the same)"
    )
    monkeypatch.setattr(loop, "token_loss_sum", real)
    run = home / "loras" / "run"
    assert (run / "checkpoint-000002" / "COMPLETE").is_file()
    resumed = config(tiny_model, data_file, save_every=0, micro_batch=1, resume=True)
    train(resumed, home=home, show_progress=False, **unpacked)
    assert losses(run) == pytest.approx(losses(straight.run_dir), abs=1e-4)  # summed in another order


def test_an_unexpected_exception_saves_the_finished_steps(tiny_model, data_file, home, capsys):
    def fails_at_step_5(row):
        if row["step"] == 5:
            raise RuntimeError("a callback broke")

    with pytest.raises(RuntimeError, match="a callback broke"):
        train(config(tiny_model, data_file, save_every=0), home=home, on_step=fails_at_step_5)
    assert "training failed at step 6: saved the 5 finished steps as checkpoint-000005" in capsys.readouterr().err
    assert (home / "loras" / "run" / "checkpoint-000005" / "COMPLETE").is_file()


def test_a_second_run_on_the_same_name_is_refused(tiny_model, data_file, home):
    from loratune import LoratuneError

    inside_first, finish = threading.Event(), threading.Event()

    def hold_after_first_step() -> bool:  # the first run's stop check: park it mid-run
        inside_first.set()
        finish.wait(60)
        return False

    first = threading.Thread(
        target=train,
        args=(config(tiny_model, data_file, max_steps=2),),
        kwargs={"home": home, "show_progress": False, "stop": hold_after_first_step},
    )
    first.start()
    try:
        assert inside_first.wait(120)
        with pytest.raises(LoratuneError, match=rf"in use by another training run \(pid {os.getpid()}\)"):
            train(config(tiny_model, data_file, max_steps=2, overwrite=True), home=home, show_progress=False)
    finally:
        finish.set()
        first.join()
    assert (home / "loras" / "run" / "adapter_model.safetensors").is_file()  # the first run was not disturbed
    assert (home / "loras" / "run" / ".lock").read_text() == ""  # released


def test_a_lock_left_by_a_dead_run_is_taken_over(tiny_model, data_file, home):
    run = home / "loras" / "run"
    run.mkdir(parents=True)
    (run / ".lock").write_text("999999\n")  # written by a run that was killed: no process holds its OS lock
    result = train(config(tiny_model, data_file, max_steps=1, resume="auto"), home=home, show_progress=False)
    assert result.steps == 1
