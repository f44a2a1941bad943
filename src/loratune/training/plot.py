"""loss.png: the training loss (and eval loss, when there is one) against the step, drawn from metrics.jsonl.

Written into the adapter folder at the end and into each checkpoint, so a user can look rather than read numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

from loratune.rundir import read_metrics


def plot_loss(metrics_file: Path, png: Path) -> Path | None:
    """Draw metrics_file's loss curves into `png` (atomically); None when there is nothing to draw yet."""
    rows = read_metrics(metrics_file.parent)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None

    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file only
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)  # a Figure without pyplot keeps no global state between runs
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="eval loss", linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss per trained token")
    axes.set_title(png.parent.name if png.parent.name else "loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}")
    figure.savefig(tmp, format="png")
    os.replace(tmp, png)
    return png
