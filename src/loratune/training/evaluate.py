"""Evaluation while training: eval loss and perplexity on held-out samples, every train.eval_every steps and at the end.

Eval data is a separate file (data.eval_path) or a seeded random share of the training samples (data.eval_split).
Each evaluation is a metrics.jsonl row {step, epoch, eval_loss, eval_ppl} beside the training rows; best.json names
the step with the lowest eval loss and the checkpoint holding those weights (when one was saved at that step).
The retention probe (retention.py) is measured on the same schedule, into the same row (its own row without eval data).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from loratune.config import DataSpec
from loratune.data import Sample, build_samples, collate
from loratune.errors import LoratuneError
from loratune.rundir import BEST, METRICS, read_json, read_metrics
from loratune.training.checkpoint import checkpoint_dir
from loratune.training.kto import evaluate_labelled
from loratune.training.loss import token_loss_sum
from loratune.training.preference import Items, evaluate_pairs


def split_eval(spec: DataSpec, samples: list[Sample], tokenizer, ws, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training samples, eval samples): the eval file's samples, or a seeded share of `samples`, or none."""
    if spec.eval_path:
        eval_samples, _ = build_samples(dataclasses.replace(spec, path=spec.eval_path), tokenizer, ws)
        return samples, type(samples)(eval_samples) if isinstance(samples, Items) else eval_samples
    if spec.eval_split <= 0:
        return samples, []
    n_eval = max(1, round(len(samples) * spec.eval_split))
    if n_eval >= len(samples):
        raise LoratuneError(
            f"data.eval_split {spec.eval_split} leaves nothing to train on {len(samples)} samples; lower it"
        )
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).numpy()
    trained = np.ones(len(samples), dtype=bool)
    trained[order[:n_eval]] = False
    kept, held = np.flatnonzero(trained), [int(i) for i in np.flatnonzero(~trained)]  # each in the data's order
    if isinstance(samples, Items):  # whole pairs are held out
        return samples.subset(kept.tolist()), samples.subset(held)
    if hasattr(samples, "select"):  # a data.store.SampleSet: a selection of rows, nothing read from its tokens
        return samples.select(kept), [samples[i] for i in held]
    return [samples[int(i)] for i in kept], [samples[i] for i in held]


@torch.no_grad()
def eval_loss(model, samples: list[Sample], micro_batch: int, pad_id: int) -> float:
    """Mean loss per trained token over `samples` (dropout off), the same loss training minimises."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    ordered = sorted(samples, key=lambda s: len(s.input_ids))
    for i in range(0, len(ordered), micro_batch):
        batch = {k: v.to(device) for k, v in collate(ordered[i : i + micro_batch], pad_id).items()}
        loss_sum, n = token_loss_sum(model, batch)
        total, tokens = total + loss_sum.item(), tokens + n
    model.train(was_training)
    return total / max(tokens, 1)


class Evaluator:
    """Call it at the steps `due` names; it returns the metrics row and keeps metrics.jsonl and best.json."""

    def __init__(self, samples: list[Sample], run_dir: Path | None, every: int, total_steps: int, micro, pad_id,
                 retention=None, pairs=None, reference_start=None):  # fmt: skip
        self.samples, self.run_dir, self.every, self.total = samples, run_dir, every, total_steps
        self.micro_batch, self.pad_id = micro, pad_id
        self.pairs = pairs  # a preference method's options: `samples` are pairs, measured by its loss and accuracy
        self.reference_start = reference_start  # the adapter weights the reference holds (adapter.init_from), or None
        self.retention = retention if retention is not None and retention.probe else None
        self.last_was_best = False  # only the main process (it has the run folder) keeps best.json
        if run_dir is not None and (run_dir / BEST).is_file():
            self._rebuild_best()

    def _rebuild_best(self) -> None:
        """On resume metrics.jsonl was cut back to the checkpoint: best.json must not name a step past it."""
        (self.run_dir / BEST).unlink()
        for row in read_metrics(self.run_dir):
            if "eval_loss" in row:
                self._record_best(row)

    def due(self, step: int) -> bool:
        measured = bool(self.samples) or self.retention is not None
        return measured and (step == self.total or (self.every > 0 and step % self.every == 0))

    def __call__(self, model, step: int, epoch: float | None = None) -> dict:
        """The metrics row; `self.last_was_best` then says whether it is the lowest eval loss of the run so far."""
        row = {"step": step}
        if self.samples and self.pairs is not None:
            measure = evaluate_labelled if self.pairs.method == "kto" else evaluate_pairs
            row |= measure(model, list(self.samples), self.pairs, self.micro_batch, self.pad_id, self.reference_start)
        elif self.samples:
            loss = eval_loss(model, self.samples, self.micro_batch, self.pad_id)
            row |= {"eval_loss": round(loss, 6), "eval_ppl": round(math.exp(min(loss, 50.0)), 4)}
        if self.retention is not None:
            row |= self.retention.measure(model)
        if epoch is not None:
            row["epoch"] = round(epoch, 4)
        self.last_was_best = False
        if self.run_dir is not None:
            with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            self.last_was_best = "eval_loss" in row and self._record_best(row)
        return row

    def _record_best(self, row: dict) -> bool:
        """Keep best.json; True when `row` is (now) the best."""
        path = self.run_dir / BEST
        best = read_json(path)
        if "eval_loss" in best and best["eval_loss"] <= row["eval_loss"] and best.get("step") != row["step"]:
            return False
        step = row["step"]
        if checkpoint_dir(self.run_dir, step).is_dir():
            where = checkpoint_dir(self.run_dir, step).name
        else:
            where = "." if step == self.total else None  # the final adapter is the run folder itself
        best = {"step": step, "eval_loss": row["eval_loss"], "best_checkpoint": where}
        best |= {k: row[k] for k in ("eval_ppl", "eval_accuracy", "retention_kl", "retention_same") if k in row}
        path.write_text(json.dumps(best, indent=2) + "\n", encoding="utf-8")
        return True
