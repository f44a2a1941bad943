"""The tokenized-data cache (datasets/.cache/): a hit on the second build, invalidation by bytes, templates and options,
a killed writer's leftovers ignored, exact resume on the cached set, and the tokenizer pool giving the same ids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS
from helpers import run_config, sum_records, write_jsonl
from loratune import train
from loratune.config import AdapterSpec, DataSpec
from loratune.data import instructions, pool, raw_text, store
from loratune.data import samples as data_samples
from loratune.data.build import build_samples
from loratune.workspace import Workspace


def _cache(home: Path) -> list[Path]:
    root = home / "datasets" / ".cache"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def _no_tokenizing(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again although the cache holds these samples")

    monkeypatch.setattr(raw_text, "_encode_with", refuse)


@pytest.fixture
def corpus(home) -> Path:
    path = home / "datasets" / "story.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CORPUS * 3, encoding="utf-8")
    return path


def _build(path, tokenizer, home, **options):
    spec = DataSpec(path=str(path), **({"cutoff": 32, "overlap": 8} | options))
    return build_samples(spec, tokenizer, Workspace.resolve(home))


def test_second_build_reads_the_cache_and_tokenizes_nothing(corpus, tokenizer, home, monkeypatch):
    first, report = _build(corpus, tokenizer, home)
    assert not report.cached and len(_cache(home)) == 1
    _no_tokenizing(monkeypatch)
    second, again = _build(corpus, tokenizer, home)
    assert again.cached and "(cached)" in again.summary()
    assert second == first and again.summary().replace(" (cached)", "") == report.summary()
    assert second.fingerprint() == first.fingerprint()
    assert len(_cache(home)) == 1


def test_a_changed_byte_option_or_template_builds_again(corpus, tokenizer, home, tmp_path):
    _build(corpus, tokenizer, home)
    stat = corpus.stat()
    text = corpus.read_bytes()
    corpus.write_bytes(text[:10] + (b"X" if text[10:11] != b"X" else b"Y") + text[11:])  # same size, same mtime
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _, report = _build(corpus, tokenizer, home)
    assert not report.cached and len(_cache(home)) == 2
    _, report = _build(corpus, tokenizer, home, add_eos=False)  # an option that shapes samples
    assert not report.cached and len(_cache(home)) == 3
    _, report = _build(corpus, tokenizer, home, eval_split=0.1)  # one that does not
    assert report.cached and len(_cache(home)) == 3

    records = write_jsonl(home / "datasets" / "sums.jsonl", sum_records(range(1, 3), range(1, 3)))
    formats = home / "formats"
    formats.mkdir(exist_ok=True)
    template = {"instruction,output": "Q: %instruction%\nA: %output%"}
    (formats / "qa-format.json").write_text(json.dumps(template))
    built, report = _build(records, tokenizer, home, format="qa", cutoff=256)
    assert not report.cached
    _, report = _build(records, tokenizer, home, format="qa", cutoff=256)
    assert report.cached
    (formats / "qa-format.json").write_text(json.dumps({"instruction,output": "Question: %instruction%\nA: %output%"}))
    rebuilt, report = _build(records, tokenizer, home, format="qa", cutoff=256)
    assert not report.cached and rebuilt != built


KILLED_WRITER = """
import os, signal, sys
from loratune.config import DataSpec
from loratune.data import store
from loratune.data.build import build_samples
from loratune.workspace import Workspace
from transformers import AutoTokenizer

def killed(*args):  # the tokens are on disk, the store is not finished: kill -9 here
    os.kill(os.getpid(), signal.SIGKILL)

store._bin_to_npy = killed
tokenizer = AutoTokenizer.from_pretrained(sys.argv[3])
build_samples(DataSpec(path=sys.argv[1], cutoff=32, overlap=8), tokenizer, Workspace.resolve(sys.argv[2]))
"""


def test_a_killed_writer_leaves_no_cache_and_its_leftovers_are_ignored(corpus, tokenizer, tiny_model, home):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(corpus), str(home), str(tiny_model)], env=env)
    assert done.returncode == -9
    root = home / "datasets" / ".cache"
    leftovers = [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and (leftovers[0] / "ids.bin").stat().st_size > 0  # it died mid-write
    assert _cache(home) == []  # and nothing looks like a complete cache

    samples, report = _build(corpus, tokenizer, home)
    assert not report.cached and len(samples) > 0
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())  # the dead writer's folder is cleared
    again, report = _build(corpus, tokenizer, home)
    assert report.cached and again == samples


def test_resume_on_the_cached_set_equals_the_straight_run(tiny_model, corpus, home, monkeypatch):
    def config(name, **train_options):
        options = dict(epochs=2, batch_size=4, micro_batch=2, lr=3e-3, save_every=2, seed=3, **train_options)
        cfg = run_config(tiny_model, corpus, name, AdapterSpec(rank=4, alpha=8, dropout=0.1), **options)
        cfg.data.cutoff, cfg.data.overlap = 32, 8
        return cfg

    straight = train(config("straight"), home=home, show_progress=False)
    assert len(_cache(home)) == 1
    _no_tokenizing(monkeypatch)  # every later run reads the cached set
    stop = threading.Event()
    cut = train(
        config("cut"), home=home, show_progress=False, stop=stop, on_step=lambda r: r["step"] == 3 and stop.set()
    )
    assert cut.stopped and cut.steps == 3
    resumed = train(config("cut", resume=True), home=home, show_progress=False)
    assert resumed.steps == straight.steps

    def losses(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    assert losses(cut.run_dir) == pytest.approx(losses(straight.run_dir), abs=1e-5)
    assert len(_cache(home)) == 1


def test_the_tokenizer_pool_gives_the_ids_of_one_process(tmp_path, tokenizer, monkeypatch):
    file = tmp_path / "long.txt"
    file.write_text((CORPUS + "\n\n\n") * 4, encoding="utf-8")
    monkeypatch.setattr(raw_text, "PIECE_CHARS", 256)  # many pieces, so the pool has work in flight
    monkeypatch.setattr(data_samples, "READ_BYTES", 1000)  # blocks that end anywhere, hard cuts across them
    spec = DataSpec(path=str(file), cutoff=32, overlap=8)
    monkeypatch.setenv(pool.WORKERS_ENV, "1")
    one, report_one = raw_text.build(file, tokenizer, spec)
    monkeypatch.setenv(pool.WORKERS_ENV, "2")
    pooled, report_pooled = raw_text.build(file, tokenizer, spec)
    assert len(one) > 20 and pooled == one and report_pooled == report_one
    whole = tokenizer(CORPUS, add_special_tokens=False)["input_ids"]
    assert one[0].input_ids == whole[:32]


def test_a_checkpoint_fingerprinted_before_the_cache_still_resumes(tiny_model, corpus, home, tokenizer):
    """Checkpoints written before the samples cache hold the sample-by-sample hash: they resume; a wrong one not."""
    from loratune.errors import LoratuneError
    from loratune.training.checkpoint import STATE_JSON, sample_hash

    def config(max_steps=2, **train_options):
        cfg = run_config(tiny_model, corpus, "old", AdapterSpec(rank=4, alpha=8), max_steps=max_steps, **train_options)
        cfg.train.save_every, cfg.train.seed = 2, 3
        cfg.data.cutoff, cfg.data.overlap = 32, 8
        return cfg

    train(config(), home=home, show_progress=False)
    state_file = home / "loras" / "old" / "checkpoint-000002" / STATE_JSON
    state = json.loads(state_file.read_text())
    samples, _ = build_samples(config().data, tokenizer, Workspace.resolve(home))
    for fingerprint, resumes in (("0" * 16, False), (sample_hash(samples), True)):
        state["position"]["fingerprint"] = fingerprint
        state_file.write_text(json.dumps(state))
        if resumes:
            assert train(config(max_steps=3, resume=True), home=home, show_progress=False).steps == 3
        else:
            with pytest.raises(LoratuneError, match="cannot resume exactly"):
                train(config(max_steps=3, resume=True), home=home, show_progress=False)


def test_a_store_written_in_tiny_blocks_equals_the_store_held_in_memory(tmp_path, tokenizer, home, monkeypatch):
    """The cache's writer puts every array on disk block by block; the store it reads back equals the in-memory one."""
    monkeypatch.setattr(store.StoreWriter, "FLUSH_BYTES", 20)  # every array crosses many blocks
    monkeypatch.setattr(store._Column, "MAX_PIECES", 2)
    spec = DataSpec(path="sums.jsonl", cutoff=64, overlap=8, too_long="drop")
    records = list(enumerate(sum_records(range(1, 4), range(1, 4)) + [{"instruction": "Why? " * 40, "output": "No."}]))
    report = data_samples.DataReport(kind="", path="")
    built = instructions.build(records, Path("sums.jsonl"), "record", tokenizer, spec, Workspace.resolve(home), report)
    assert report.too_long == 1 and len(built.dropped) == 1 and built.dropped[0] > 64 and len(built.samples) == 9
    text = tokenizer(CORPUS, add_special_tokens=False)["input_ids"]
    starts, ends = raw_text.window_bounds(len(text), 63, 8)

    def write(folder: Path | None) -> store.Store:
        writer = store.StoreWriter(folder, tokenizer.bos_token_id, tokenizer.eos_token_id)
        writer.add_samples(built.samples[:4], built.full[:4])
        at = writer.add_tokens(text)  # raw-text windows between instruction samples, as a mixed file has them
        writer.add_windows(starts + at, ends + at, True, np.zeros(0, dtype=np.int64))
        writer.add_samples(built.samples[4:], built.full[4:], built.dropped)
        return writer.finish({})

    in_memory = write(None)
    folder = tmp_path / "store"
    folder.mkdir()
    on_disk = write(folder)
    assert not list(folder.glob("*.bin")) and isinstance(on_disk.labels, np.memmap)
    assert isinstance(on_disk.rows["start"], np.memmap)  # the sample table too is read from disk, not loaded
    assert len(in_memory) == len(on_disk) == 9 + len(starts)
    samples = [on_disk.sample(i) for i in range(len(on_disk))]
    assert samples == [in_memory.sample(i) for i in range(len(in_memory))]
    assert samples[:4] == built.samples[:4] and samples[-5:] == built.samples[4:]
    assert any(-100 in s.labels for s in samples[:4])  # instruction labels, masked prompts and all, came back
    assert on_disk.digest == in_memory.digest and len(on_disk.labels) > 0
    for name in store.ROW_FIELDS:
        assert np.array_equal(on_disk.rows[name], in_memory.rows[name]), name
    assert on_disk.dropped.tolist() == in_memory.dropped.tolist() == built.dropped
    assert store.SampleSet([(on_disk, None)]).fingerprint() == store.SampleSet([(in_memory, None)]).fingerprint()


def test_tiny_blocks_give_the_cached_samples_and_fingerprint_of_large_ones(tokenizer, home, monkeypatch):
    records = sum_records(range(1, 4), range(1, 4)) + [{"text": CORPUS}] + sum_records(range(2), range(2))
    (home / "datasets").mkdir(parents=True)
    path = write_jsonl(home / "datasets" / "mixed.jsonl", records)
    large, report = _build(path, tokenizer, home, cutoff=64)
    shutil.rmtree(home / "datasets" / ".cache")
    monkeypatch.setattr(store.StoreWriter, "FLUSH_BYTES", 12)
    monkeypatch.setattr(store._Column, "MAX_PIECES", 2)
    tiny, again = _build(path, tokenizer, home, cutoff=64)
    assert not again.cached and again == report and report.kind == "mixed"
    assert tiny == large and tiny.fingerprint() == large.fingerprint()
    assert report.samples > 13 and any(-100 in s.labels for s in tiny)  # windows and masked instruction samples


def test_a_run_reads_only_the_samples_it_trains_and_holds_out(tiny_model, tokenizer, home, monkeypatch):
    """A memory-mapped corpus is never read whole before step 1: counting tokens, fingerprinting the data and holding
    out an eval split all work from the sample table, so a short run builds only its steps' and eval samples."""
    path = home / "datasets" / "long.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CORPUS * 40, encoding="utf-8")
    spec = DataSpec(path=str(path), cutoff=32, overlap=8)
    windows = len(build_samples(spec, tokenizer, Workspace.resolve(home))[0])
    built = []
    real = store.Store.sample
    monkeypatch.setattr(store.Store, "sample", lambda self, i: built.append(i) or real(self, i))
    cfg = run_config(tiny_model, path, "short", AdapterSpec(rank=4, alpha=8), max_steps=1, batch_size=4, micro_batch=4)
    cfg.data.cutoff, cfg.data.overlap, cfg.data.eval_split = 32, 8, 0.05  # the retention probe stays on
    train(cfg, home=home, show_progress=False)
    held_out = round(windows * 0.05)
    assert windows > 200 and len(built) <= 4 + 3 * held_out  # its step, the eval set (drawn, measured), not the rest
