"""Evaluation while training: held-out split or eval file, eval rows in metrics.jsonl, best.json, loss.png."""

from __future__ import annotations

import json
import math

import pytest

from helpers import sum_records
from helpers import write_jsonl as _jsonl
from loratune import LoratuneError, train
from loratune.config import DataSpec
from loratune.data.build import build_samples
from loratune.training.evaluate import eval_loss, split_eval
from loratune.workspace import Workspace

RECORDS = sum_records(range(4), range(5))


def test_split_is_seeded_disjoint_and_sized(tmp_path, tokenizer, home):
    spec = DataSpec(path=str(_jsonl(tmp_path / "d.jsonl", RECORDS)), eval_split=0.25)
    ws = Workspace.resolve(home)
    samples, _ = build_samples(spec, tokenizer, ws)
    kept, held = split_eval(spec, samples, tokenizer, ws, seed=1)
    assert (len(kept), len(held)) == (15, 5)
    assert sorted(map(str, list(kept) + held)) == sorted(map(str, samples))
    assert split_eval(spec, samples, tokenizer, ws, seed=1) == (kept, held)
    assert split_eval(spec, samples, tokenizer, ws, seed=2)[1] != held
    assert split_eval(DataSpec(path=spec.path), samples, tokenizer, ws, seed=1) == (samples, [])
    with pytest.raises(LoratuneError, match="eval_split"):
        split_eval(DataSpec(path=spec.path, eval_split=0.99), samples, tokenizer, ws, seed=1)


def test_eval_split_rows_best_checkpoint_and_loss_png(tiny_model, tmp_path, home):
    data = _jsonl(tmp_path / "sums.jsonl", RECORDS)
    result = train(
        model=str(tiny_model),
        data=str(data),
        home=home,
        show_progress=False,
        **{"data.eval_split": 0.2},
        train={"max_steps": 4, "batch_size": 4, "micro_batch": 4, "lr": 1e-2, "eval_every": 2, "save_every": 2},
    )
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in eval_rows] == [2, 4]  # every 2 steps; the end (step 4) is one of them
    for r in eval_rows:
        assert r["eval_ppl"] == pytest.approx(math.exp(r["eval_loss"]), rel=1e-4)
    assert eval_rows[-1]["eval_loss"] < eval_rows[0]["eval_loss"], "held-out loss should fall on this easy data"

    # the last eval row is the loss of the final adapter on the held-out samples
    ws = Workspace.resolve(home)
    spec = DataSpec(path=str(data), eval_split=0.2)
    samples, _ = build_samples(spec, result.tokenizer, ws)
    _, held = split_eval(spec, samples, result.tokenizer, ws, seed=42)
    assert len(held) == 4
    final = eval_loss(result.model, held, 4, result.tokenizer.pad_token_id)
    assert final == pytest.approx(eval_rows[-1]["eval_loss"], abs=1e-5)

    best = json.loads((result.run_dir / "best.json").read_text())
    lowest = min(eval_rows, key=lambda r: r["eval_loss"])
    assert best["step"] == lowest["step"] and best["eval_loss"] == lowest["eval_loss"]
    assert best["best_checkpoint"] == ("." if lowest["step"] == 4 else "checkpoint-000002")

    for png in (result.run_dir / "loss.png", result.run_dir / "checkpoint-000002" / "loss.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png


def test_each_evaluation_is_one_console_line_and_the_result_one_repr_line(tiny_model, tmp_path, home, capsys):
    result = train(
        model=str(tiny_model),
        data=str(_jsonl(tmp_path / "sums.jsonl", RECORDS)),
        home=home,
        **{"data.eval_split": 0.2},
        train={"max_steps": 4, "batch_size": 4, "micro_batch": 4, "lr": 1e-2, "eval_every": 2, "save_every": 0},
    )
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval ")]
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = [r for r in rows if "eval_loss" in r]
    better = " (best)" if last["eval_loss"] < first["eval_loss"] else ""

    def kept(row):  # the retention probe's figures, measured in the same evaluation
        same = f"{row['retention_same']:.0%} of short answers unchanged"
        return f"retention KL {row['retention_kl']:.4f} from the base, {same}"

    assert printed == [
        f"eval step 2: loss {first['eval_loss']:.4f}, ppl {first['eval_ppl']:.2f}, {kept(first)} (best)",
        f"eval step 4: loss {last['eval_loss']:.4f}, ppl {last['eval_ppl']:.2f}, {kept(last)}{better}",
    ]
    assert repr(result) == (
        f"TrainResult(run_dir={result.run_dir!r}, steps=4, final_loss={result.final_loss!r}, "
        f"seconds={result.seconds!r}, stopped=False, already_finished=False)"
    )


def test_eval_file_is_measured_not_trained(tiny_model, tmp_path, home, capsys):
    data = _jsonl(tmp_path / "train.jsonl", RECORDS[:8])
    held = _jsonl(tmp_path / "held.jsonl", RECORDS[8:11])
    result = train(
        model=str(tiny_model),
        data=str(data),
        home=home,
        show_progress=False,
        **{"data.eval_path": str(held)},
        train={"max_steps": 2, "batch_size": 8, "micro_batch": 8, "save_every": 0},
    )
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2]  # eval_every 0: only at the end
    assert rows[0]["tokens_per_s"] > 0
    samples, _ = build_samples(DataSpec(path=str(held)), result.tokenizer, Workspace.resolve(home))
    assert eval_loss(result.model, samples, 8, result.tokenizer.pad_token_id) == pytest.approx(
        rows[-1]["eval_loss"], abs=1e-5
    )
    best = json.loads((result.run_dir / "best.json").read_text())
    assert best["best_checkpoint"] == "." and best["step"] == 2
    assert "eval step" not in capsys.readouterr().out  # show_progress=False: quiet


def test_resume_forgets_a_best_step_past_the_checkpoint(tmp_path):
    """After a resume metrics.jsonl ends at the checkpoint; best.json is rebuilt from the rows that are left."""
    from loratune.training.evaluate import Evaluator

    run = tmp_path / "run"
    (run / "checkpoint-000002").mkdir(parents=True)
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5, "eval_ppl": 4.48}, {"step": 2, "loss": 1.9}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "best.json").write_text(json.dumps({"step": 4, "eval_loss": 0.5, "eval_ppl": 1.6, "best_checkpoint": "."}))
    Evaluator([], run, every=2, total_steps=6, micro=4, pad_id=0)
    best = json.loads((run / "best.json").read_text())
    assert best == {"step": 2, "eval_loss": 1.5, "eval_ppl": 4.48, "best_checkpoint": "checkpoint-000002"}
