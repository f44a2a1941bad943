"""What the Train tab shows of a job, read from its run folder: the status line, the progress bar (step N / total,
ETA, tokens/s), the loss curve; and the `loratune train` command line equivalent to the form."""

from __future__ import annotations

import html
import shlex
from dataclasses import dataclass

import pandas as pd

from loratune import jobs
from loratune.config import RunConfig, field_help
from loratune.rundir import MetricsReader
from loratune.workspace import Workspace

CURVE_POINTS = 2000  # the training loss curve is thinned to at most this many points (+ the last), however long
FLAGS = {"name": "--name", "model.source": "--model", "data.path": "--data"}  # options with a flag of their own

# One reader for the UI process: each refresh reads only what was appended to metrics.jsonl since the last one.
metrics_rows = MetricsReader().rows


@dataclass
class JobView:
    status: str
    bar: str
    curve: pd.DataFrame | None
    log: str

    def outputs(self) -> tuple:
        return self.status, self.bar, self.curve, self.log


def job_view(ws: Workspace, name: str | None) -> JobView:
    if not name:
        return JobView("No job yet.", progress_bar(0, 0, ""), None, "")
    state = jobs.status(ws, name)
    active = bool(state and state.active)
    rows = metrics_rows(ws.lora_dir(name))
    heading = f"### `{name}`: {state.state}" if state else f"### `{name}`"
    if state and state.exit_code is not None:
        heading += f" (exit code {state.exit_code})"
    lines = [heading]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]  # evaluation rows sit beside the training rows
    bar = progress_bar(0, 0, "loading the model and the data ..." if active else "")
    if train_rows:
        last = train_rows[-1]
        total = int(last.get("total_steps") or 0)
        eta = _duration(last.get("eta_s", 0)) if active else "-"
        speed = f"{last.get('tokens_per_s', 0):,.0f} tokens/s"
        lines.append(
            f"**step {last['step']}{f' / {total}' if total else ''}** · epoch {last.get('epoch', 0):.2f} · "
            f"loss **{last['loss']:.4f}** · lr {last.get('lr', 0):.2e} · {speed} · ETA {eta}"
        )
        bar = progress_bar(last["step"], total, f"ETA {eta} · {speed}")
    elif active:
        lines.append("loading the model and the data ...")
    if eval_rows:
        best = min(eval_rows, key=lambda r: r["eval_loss"])
        lines.append(
            f"eval loss {eval_rows[-1]['eval_loss']:.4f} at step {eval_rows[-1]['step']} "
            f"(best {best['eval_loss']:.4f} at step {best['step']})"
        )
    preference = preference_line(train_rows, eval_rows)
    if preference:
        lines.append(preference)
    retention = retention_line(rows)
    if retention:
        lines.append(retention)
    return JobView("\n\n".join(lines), bar, loss_curve(train_rows, eval_rows), jobs.log_tail(ws, name))


def preference_line(train_rows: list[dict], eval_rows: list[dict]) -> str:
    """A preference method's newest figures: accuracy, reward margin, and the eval accuracy when measured; kto's
    (no accuracy, and a step may hold one kind of sample only): its rewards and z_ref (kl)."""
    last = train_rows[-1] if train_rows else {}
    parts = [f"preference accuracy {last['accuracy']:.2f}"] if "accuracy" in last else []
    rewards = ", ".join(f"{side} {last[f'reward_{side}']:.3f}" for side in ("chosen", "rejected")
                        if f"reward_{side}" in last)  # fmt: skip
    if "reward_margin" in last:
        parts.append(f"reward margin {last['reward_margin']:.3f} ({rewards})")
    elif rewards:
        parts.append(f"rewards {rewards}")
    if "kl" in last:
        parts.append(f"KL estimate {last['kl']:.3f}")
    if not parts:
        return ""
    held = [r for r in eval_rows if "eval_accuracy" in r]
    return " · ".join(parts) + (f" · eval accuracy {held[-1]['eval_accuracy']:.2f}" if held else "")


def retention_line(rows: list[dict]) -> str:
    """The newest retention measure (how much the base model's behaviour survives), when the run records one."""
    last = next((r for r in reversed(rows) if "retention_kl" in r or "retention_same" in r), None)
    if last is None:
        return ""
    parts = []
    if "retention_kl" in last:
        parts.append(f"KL to the base model {last['retention_kl']:.4f}")
    if "retention_same" in last:
        same = last["retention_same"]
        parts.append(f"same answers {same:.0%}" if 0 <= same <= 1 else f"same answers {same}")
    return f"retention at step {last.get('step', '?')}: " + " · ".join(parts)


def progress_bar(step: int, total: int, detail: str) -> str:
    """A bar that fills as the run goes (empty while the total is unknown), with 'step N / total' and `detail`."""
    share = min(1.0, step / total) if total else 0.0
    label = f"step {step} / {total}" if total else ""
    return (
        f'<div class="job-progress" data-step="{step}" data-total="{total}">'
        f'<div class="job-progress-fill" style="width: {share * 100:.1f}%"></div></div>'
        f'<div class="job-progress-text"><b>{label}</b> {html.escape(detail)}</div>'
    )


def loss_curve(train_rows: list[dict], eval_rows: list[dict]) -> pd.DataFrame | None:
    """Training loss (thinned to CURVE_POINTS, the last point kept) and evaluation loss, as one long table."""
    if not train_rows:
        return None
    shown = train_rows[:: -(-len(train_rows) // CURVE_POINTS)]
    if shown[-1] is not train_rows[-1]:
        shown.append(train_rows[-1])
    points = [(r["step"], r["loss"], "train") for r in shown] + [(r["step"], r["eval_loss"], "eval") for r in eval_rows]
    points += [(r["step"], r["accuracy"], "preference accuracy") for r in shown if "accuracy" in r]
    points += [(r["step"], r["eval_accuracy"], "eval accuracy") for r in eval_rows if "eval_accuracy" in r]
    return pd.DataFrame(points, columns=["step", "loss", "series"])


def command_line(config: RunConfig, home: str) -> str:
    """The `loratune train` line that runs `config`: only the options that differ from their defaults."""
    words = ["loratune", "--home", home, "train"]
    for dotted, default, _ in field_help(RunConfig):
        value = config
        for part in dotted.split("."):
            value = getattr(value, part)
        if value == default or dotted == "train.resume":
            continue
        flag = FLAGS.get(dotted, f"--{dotted}") if not isinstance(value, list) else f"--{dotted}"
        words += [flag, _flag_value(value)]
    return shlex.join(words)


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"  # read back as YAML, like the config file
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
