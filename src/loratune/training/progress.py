"""Progress: a terminal bar (step, loss, lr, tokens/s, ETA) and one metrics.jsonl line per logged step."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


class Progress:
    def __init__(self, metrics_file: Path | None, total_steps: int, first_step: int, log_every: int, show: bool):
        self.metrics_file = metrics_file
        self.total = total_steps
        self.first = first_step
        self.log_every = max(1, log_every)
        self.start = time.perf_counter()
        self.bar = tqdm(
            total=total_steps,
            initial=first_step,
            desc="train",
            unit="step",
            disable=not show,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def step(self, step: int, epoch: float, loss: float, lr: float, tokens: int, seconds: float) -> dict:
        elapsed = time.perf_counter() - self.start
        done = step - self.first
        eta = elapsed / done * (self.total - step) if done else 0.0
        row = {
            "step": step,
            "total_steps": self.total,
            "epoch": round(epoch, 4),
            "loss": round(loss, 6),
            "lr": lr,
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0,
            "elapsed_s": round(elapsed, 2),
            "eta_s": round(eta, 1),
        }
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
        self.bar.update(1)
        if self.metrics_file is not None and (step % self.log_every == 0 or step == self.total):
            with open(self.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def evaluation(self, row: dict, best: bool) -> None:
        """One console line per evaluation, above the bar (whose postfix shows the training loss only)."""
        if not self.bar.disable:
            mark = " (best)" if best else ""
            line = f"eval step {row['step']}: loss {row['eval_loss']:.4f}, ppl {row['eval_ppl']:.2f}{mark}"
            self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()
