"""Stop and resume in-process: the caller's stop, resume: auto, and "N steps straight == k steps + resume + N-k"."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import run_config, sum_records
from loratune import train
from loratune.config import AdapterSpec

RECORDS = sum_records(range(1, 7), range(1, 4))  # 18 samples
DATA_FILE = "pirate.jsonl"


def config(model, data, name="run", **train):
    options = dict(epochs=3, batch_size=4, micro_batch=2, lr=3e-3, save_every=2, seed=3, warmup_ratio=0.1)
    adapter = AdapterSpec(rank=4, alpha=8, dropout=0.1)  # dropout on: the RNG state must resume too
    return run_config(model, data, name, adapter, **{**options, **train})


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def logged_steps(run_dir) -> list[int]:
    """The steps of the training rows (the retention probe writes a row of its own at the end)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


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
    assert logged_steps(run) == list(range(1, 16))


def test_keep_checkpoints_keeps_the_newest_complete_ones(tiny_model, data_file, home):
    result = train(config(tiny_model, data_file, save_every=1, keep_checkpoints=2), home=home, show_progress=False)
    # the final step (15) is a checkpoint too, and pruning never removes the one just written
    assert sorted(p.name for p in result.run_dir.glob("checkpoint-*")) == ["checkpoint-000014", "checkpoint-000015"]


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
    from loratune.training.loop import step_samples

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
    from loratune.training import loop

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
    err = capsys.readouterr().err
    assert "training failed at step 6: saved the 5 finished steps as checkpoint-000005" in err
    assert f"after fixing the cause: loratune --home {home.resolve()} train --name run --resume" in err
    assert (home / "loras" / "run" / "checkpoint-000005" / "COMPLETE").is_file()


def test_a_failure_before_the_first_step_offers_no_resume(tiny_model, data_file, home, capsys, monkeypatch):
    """It used to print 'after fixing the cause: loratune train --name  --resume': an empty name, nothing to resume."""
    from loratune.training import setup

    def broken_model(*args, **kwargs):
        raise RuntimeError("a driver error")

    monkeypatch.setattr(setup, "load_base", broken_model)
    with pytest.raises(RuntimeError, match="a driver error"):
        train(config(tiny_model, data_file), home=home)
    err = capsys.readouterr().err
    assert "loratune: training failed before the first step: nothing was trained yet\n" in err
    assert "--resume" not in err


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


# ---------------------------------------------------------------- through the real CLI: what --resume may change


def cli(home, *args, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "LORATUNE_HOME"}
    full_env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    command = [sys.executable, "-m", "loratune.cli", *(["--home", str(home)] if home else []), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("loratune: error:")]
    return line


def snapshot(folder) -> dict:
    """Every file's bytes and timestamp, but the lock file's (each command takes the lock, even to refuse)."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != ".lock"]
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


SMALL = ["--train.batch_size", "4", "--train.micro_batch", "2", "--adapter.rank", "4", "--train.seed", "3"]


@pytest.mark.long
def test_resume_refuses_what_it_cannot_honour_and_records_what_it_changes(tiny_model, data_file, home):
    first = cli(home, "train", "--model", tiny_model, "--data", data_file, "--name", "r", "--train.max_steps", "4",
                "--train.save_every", "2", *SMALL)  # fmt: skip
    assert first.returncode == 0, first.stderr
    run = home / "loras" / "r"
    before = snapshot(run)

    again = cli(home, "train", "--name", "r", "--resume")
    assert again.returncode == 0, again.stderr
    assert "r already finished at step 4; nothing changed" in again.stdout
    assert snapshot(run) == before  # not a byte, not a timestamp

    lr = one_line_error(cli(home, "train", "--name", "r", "--resume", "--train.lr", "1e-4"))
    assert "--resume cannot change train.lr (the run was trained with 0.0003, now 0.0001)" in lr
    assert "train.max_steps" in lr and "train.save_every" in lr  # and says what may change
    assert snapshot(run) == before

    ghost = one_line_error(cli(home, "train", "--name", "ghost", "--resume"))
    assert ghost == f"loratune: error: no run named ghost in {home.resolve() / 'loras'} (nothing to resume)"
    assert not (home / "loras" / "ghost").exists()

    # What can take effect does, and is recorded: four more steps (from the final step's checkpoint), on a new rhythm.
    longer = cli(home, "train", "--name", "r", "--resume", "--train.max_steps", "8", "--train.save_every", "3")
    assert longer.returncode == 0, longer.stderr
    assert "resuming from checkpoint-000004" in longer.stdout
    assert (run / "checkpoint-000006" / "COMPLETE").is_file()  # save_every 3 took effect
    assert logged_steps(run) == list(range(1, 9))
    saved = yaml.safe_load((run / "loratune.yaml").read_text())["train"]
    assert (saved["max_steps"], saved["save_every"], saved["lr"]) == (8, 3, 0.0003)
    assert "| training | 8 steps, 8 optimizer steps," in (run / "README.md").read_text()
    assert json.loads((run / "finished.json").read_text())["step"] == 8


@pytest.mark.parametrize(
    "change, named",
    [
        ({"adapter.rank": 8}, "adapter.rank"),
        ({"adapter.targets": "all-linear"}, "adapter.targets"),
        ({"train.scheduler": "cosine"}, "train.scheduler"),
        ({"train.weight_decay": 0.1}, "train.weight_decay"),
        ({"train.batch_size": 8}, "train.batch_size"),
        ({"train.seed": 4}, "train.seed"),
    ],
)
def test_resume_refuses_a_changed_shape_or_schedule_in_one_line(tiny_model, data_file, home, change, named):
    """In-process (the CLI path is covered above): each refused before the model loads, nothing written."""
    from loratune import LoratuneError

    stop = threading.Event()
    cut = train(config(tiny_model, data_file, max_steps=4), home=home, show_progress=False, stop=stop,
                on_step=lambda row: stop.set())  # fmt: skip
    assert cut.stopped and cut.steps == 1
    before = snapshot(cut.run_dir)
    with pytest.raises(LoratuneError) as info:
        train(config(tiny_model, data_file, max_steps=4, resume=True), home=home, show_progress=False, **change)
    assert str(info.value).startswith(f"--resume cannot change {named} (the run was trained with ")
    assert "\n" not in str(info.value)
    assert snapshot(cut.run_dir) == before


def test_resume_to_fewer_steps_than_its_checkpoint_is_refused(tiny_model, data_file, home):
    from loratune import LoratuneError

    stop = threading.Event()
    train(config(tiny_model, data_file), home=home, show_progress=False, stop=stop,
          on_step=lambda row: row["step"] == 3 and stop.set())  # fmt: skip
    with pytest.raises(LoratuneError, match="end the run at step 2, but checkpoint-000003 is already at step 3"):
        train(config(tiny_model, data_file, max_steps=2, resume=True), home=home, show_progress=False)


def test_reaching_stop_at_loss_is_finished_unless_the_target_is_lowered(tiny_model, data_file, home, capsys):
    straight = losses(train(config(tiny_model, data_file, name="all"), home=home, show_progress=False).run_dir)
    target = sorted(straight)[len(straight) // 2] + 1e-5
    first = train(config(tiny_model, data_file, stop_at_loss=target), home=home, show_progress=False)
    capsys.readouterr()
    again = train(config(tiny_model, data_file, stop_at_loss=target, resume=True), home=home)
    assert again.already_finished and again.steps == first.steps
    assert f"already finished at step {first.steps}" in capsys.readouterr().out
    on = train(config(tiny_model, data_file, resume=True), home=home, show_progress=False)  # target off: train on
    assert on.steps == 15 and losses(on.run_dir) == pytest.approx(straight, abs=1e-5)


# ---------------------------------------------------------------- the resume hint, and resume auto after a kill


def start(home, *args, pause: str, flag) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LORATUNE_HOME"}
    env.update(
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", LORATUNE_PAUSE_AT=pause, LORATUNE_PAUSE_FILE=str(flag)
    )
    command = [sys.executable, "-m", "loratune.cli", "--home", str(home), *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(flag, proc) -> None:
    deadline = time.monotonic() + 500
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.05)


@pytest.mark.long
def test_the_stop_hint_names_the_home_and_works_from_another_folder(tiny_model, data_file, home, tmp_path):
    flag = tmp_path / "paused"
    relative_home = os.path.relpath(home, tmp_path)  # given relative: the hint must still be absolute
    proc = subprocess.Popen(
        [sys.executable, "-m", "loratune.cli", "--home", relative_home, "train", "--model", str(tiny_model),
         "--data", str(data_file), "--name", "r", "--train.max_steps", "4", "--train.save_every", "0", *SMALL],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LORATUNE_PAUSE_AT": "step@2", "LORATUNE_PAUSE_FILE": str(flag)},
    )  # fmt: skip
    wait_for(flag, proc)
    proc.send_signal(signal.SIGINT)
    flag.unlink()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (hint,) = [line.split("continue with: ", 1)[1] for line in out.splitlines() if "continue with: " in line]
    assert hint == f"loratune --home {home.resolve()} train --name r --resume"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = cli(None, *shlex.split(hint)[1:], cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint-000002" in resumed.stdout
    assert logged_steps(home / "loras/r") == [1, 2, 3, 4]
    assert not (elsewhere / "loras").exists()


@pytest.mark.long
def test_resume_auto_starts_over_a_run_killed_during_its_first_checkpoint(tiny_model, data_file, home, tmp_path):
    flag = tmp_path / "paused"
    args = ["train", "--model", tiny_model, "--data", data_file, "--name", "r", "--train.max_steps", "4",
            "--train.save_every", "2", *SMALL]  # fmt: skip
    proc = start(home, *args, pause="checkpoint-write@1", flag=flag)
    wait_for(flag, proc)
    proc.kill()
    proc.communicate()
    run = home / "loras" / "r"
    assert not list(run.glob("checkpoint-*")) and list(run.glob(".checkpoint-*"))  # only a half-written one

    line = one_line_error(cli(home, "train", "--name", "r", "--resume"))
    assert "has no complete checkpoint; it was stopped before its first one, so start it again with " in line
    assert line.endswith("--train.resume auto")
    auto = cli(home, "train", "--name", "r", "--train.resume", "auto")  # the saved options come back, no --data
    assert auto.returncode == 0, auto.stderr
    assert "resuming" not in auto.stdout
    assert logged_steps(run) == [1, 2, 3, 4]
    assert (run / "checkpoint-000002" / "COMPLETE").is_file() and not list(run.glob(".checkpoint-*"))


# ---------------------------------------------------------------- the first run on a new .gguf is reproducible


def write_tiny_gguf(path) -> None:
    """A 2-layer LLaMA GGUF (float32) with the tests' BPE tokenizer and chat template, written with `gguf`."""
    import numpy as np
    from gguf import GGUFWriter

    from conftest import CHATML, make_tokenizer

    tok = make_tokenizer()
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    merges = [
        m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    ]
    hidden, inter, layers, heads, kv = 64, 128, 2, 4, 2
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    weight("token_embd.weight", len(vocab), hidden)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        weight(f"blk.{i}.attn_q.weight", hidden, hidden)
        weight(f"blk.{i}.attn_k.weight", kv * hidden // heads, hidden)
        weight(f"blk.{i}.attn_v.weight", kv * hidden // heads, hidden)
        weight(f"blk.{i}.attn_output.weight", hidden, hidden)
        weight(f"blk.{i}.ffn_gate.weight", inter, hidden)
        weight(f"blk.{i}.ffn_up.weight", inter, hidden)
        weight(f"blk.{i}.ffn_down.weight", hidden, inter)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    weight("output.weight", len(vocab), hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.long
def test_the_first_run_on_a_new_gguf_equals_the_later_ones(data_file, home, tmp_path):
    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf)
    rows = {}
    for name in ("first", "second"):
        result = cli(home, "train", "--model", gguf, "--data", data_file, "--name", name, "--train.max_steps", "3",
                     "--train.lr", "3e-3", *SMALL)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert ("Converting tiny.gguf" in result.stdout) == (name == "first")  # only the first one converts
        rows[name] = losses(home / "loras" / name)
    assert rows["first"][1] == rows["second"][1]  # step 2: the first step the LoRA init shows in
    assert rows["first"] == rows["second"]
