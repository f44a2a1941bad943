"""loss.png: the training loss (and eval loss, when there is one) against the step, drawn from metrics.jsonl.

A preference method's run gets a panel of its preference accuracy and reward margin (kto: the margin and z_ref). A
panel below shows the retention probe (retention_kl from the base, and the share of unchanged short answers) when the
run measured it.

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
    kept = [r for r in rows if isinstance(r.get("retention_kl"), int | float)]
    preferred = [r for r in rows if {"accuracy", "eval_accuracy", "reward_margin", "kl"} & set(r)]
    if not train and not evals:
        return None

    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file only
    from matplotlib.figure import Figure

    # A Figure without pyplot keeps no global state between runs.
    panels = 1 + bool(preferred) + bool(kept)
    figure = Figure(figsize=(7, 4 + 2.5 * (panels - 1)), dpi=100)
    axes = figure.add_subplot(panels, 1, 1)
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="eval loss", linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss per pair" if preferred else "loss per trained token")
    axes.set_title(png.parent.name if png.parent.name else "loss")
    axes.grid(alpha=0.3)
    axes.legend()
    if preferred:
        preference_panel(figure.add_subplot(panels, 1, 2, sharex=axes), preferred)
    if kept:
        retention_panel(figure.add_subplot(panels, 1, panels, sharex=axes), kept)
    figure.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}")
    figure.savefig(tmp, format="png")
    os.replace(tmp, png)
    return png


def preference_panel(axes, rows: list[dict]) -> None:
    """Preference accuracy (training and eval) against the step, with the reward margin on a second axis; kto (no
    accuracy): the reward margin and z_ref (kl) on the panel's own axis."""
    accuracy = False
    for key, style, label in (("accuracy", "-", "preference accuracy"), ("eval_accuracy", "o-", "eval accuracy")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            axes.plot(*zip(*points, strict=True), style, label=label, linewidth=1.2)
            accuracy = True
    if accuracy:
        axes.set_ylim(-0.05, 1.05)
        axes.set_ylabel("chosen preferred")
        axes.legend(loc="lower left")
    axes.grid(alpha=0.3)
    rewards = axes.twinx() if accuracy else axes
    for key, style, label in (("reward_margin", "--", "reward margin"), ("kl", ":", "KL estimate (z_ref)")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            rewards.plot(*zip(*points, strict=True), style, label=label, linewidth=1.2)
    rewards.set_ylabel("reward margin")
    rewards.legend(loc="lower right")


def retention_panel(axes, rows: list[dict]) -> None:
    """retention_kl against the step, with the share of unchanged short answers on a second axis."""
    steps = [r["step"] for r in rows]
    axes.plot(steps, [r["retention_kl"] for r in rows], "o-", color="tab:red", label="retention KL from the base")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("KL per token (0: unchanged)")
    axes.grid(alpha=0.3)
    same = [(r["step"], r["retention_same"]) for r in rows if r.get("retention_same") is not None]
    if same:
        share = axes.twinx()
        share.plot(*zip(*same, strict=True), "s--", color="tab:green", label="short answers unchanged")
        share.set_ylim(-0.05, 1.05)
        share.set_ylabel("share unchanged")
        share.legend(loc="upper right")
    axes.legend(loc="upper left")
