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

    def step(self, step: int, epoch: float, loss: float, lr: float, tokens: int, seconds: float, more=None) -> dict:
        """The step's metrics row (`more`: a preference method's rewards and accuracy), shown and logged."""
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
        } | (more or {})
        shown = {"acc": f"{row['accuracy']:.2f}"} if "accuracy" in row else {}
        self.bar.set_postfix(loss=f"{loss:.4f}", **shown, lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}",
                             refresh=False)  # fmt: skip
        self.bar.update(1)
        if self.metrics_file is not None and (step % self.log_every == 0 or step == self.total):
            with open(self.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def evaluation(self, row: dict, best: bool) -> None:
        """One console line per evaluation, above the bar (whose postfix shows the training loss only)."""
        if not self.bar.disable:
            parts = [f"loss {row['eval_loss']:.4f}"] if "eval_loss" in row else []
            if "eval_ppl" in row:
                parts[0] += f", ppl {row['eval_ppl']:.2f}"
            if "eval_accuracy" in row:
                parts[0] += f", preference accuracy {row['eval_accuracy']:.2f} (margin {row['eval_margin']:.3f})"
            elif "eval_margin" in row:  # kto: no pairs to be accurate on
                parts[0] += f", reward margin {row['eval_margin']:.3f}"
            if "retention_kl" in row:
                parts.append(retention_text(row))
            line = f"eval step {row['step']}: {', '.join(parts)}{' (best)' if best else ''}"
            self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


def retention_text(row: dict) -> str:
    """'retention KL 0.0123 from the base, 97 % of short answers unchanged' of a metrics row."""
    same = row.get("retention_same")
    unchanged = f", {same:.0%} of short answers unchanged" if same is not None else ""
    return f"retention KL {row['retention_kl']:.4f} from the base{unchanged}"
