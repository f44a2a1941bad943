"""The run folder, loras/<name>/: the names of its files and the one reader of each.

The run folder is the contract between the CLI, the web UI and the library (the UI only reads what the CLI writes), so
every module that reads or names one of these files goes through here. A file can be read while its run writes it, or
after a kill cut its last line short: readers never raise on a torn or missing file, they return what is whole.

    loratune.yaml              the fully resolved config of the run
    metrics.jsonl              one JSON row per logged step {step, epoch, loss, lr, ...} and per evaluation {eval_loss}
    finished.json              written last by a run that ended by design (not stopped): its step and why
    best.json                  the step with the lowest eval loss
    promoted.json              which checkpoint was promoted to be the run's adapter
    loss.png, README.md        the loss curve and the model card
    .lock                      held by the process training in this folder
    checkpoint-000200/         a complete checkpoint holds COMPLETE, written last
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CONFIG = "loratune.yaml"
METRICS = "metrics.jsonl"
FINISHED = "finished.json"
BEST = "best.json"
PROMOTED = "promoted.json"
LOSS_PLOT = "loss.png"
CARD = "README.md"
LOCK = ".lock"
COMPLETE = "COMPLETE"
CHECKPOINT_PREFIX = "checkpoint-"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def checkpoint_step(name: str) -> int | None:
    """6 for 'checkpoint-000006'; None for any other name."""
    digits = name.removeprefix(CHECKPOINT_PREFIX)
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def read_metrics(run_dir: Path) -> list[dict]:
    """Every whole row of run_dir/metrics.jsonl, in order; a torn or malformed line is skipped."""
    try:
        text = (run_dir / METRICS).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def read_losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss (NaN where it was not finite) from metrics.jsonl."""
    losses = {}
    for row in read_metrics(run_dir):
        try:
            loss = float(row["loss"])
        except (KeyError, TypeError, ValueError):
            continue
        losses[row["step"]] = loss if math.isfinite(loss) else float("nan")
    return losses


def read_saved_config(folder: Path) -> dict:
    """loratune.yaml of a run folder as a plain dict ({} when absent or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: Path) -> dict:
    """A small JSON record (best.json, promoted.json, adapter_config.json); {} when absent or torn."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_finished(run_dir: Path) -> dict | None:
    """finished.json ({step, steps_per_epoch, loss, reached_stop_at_loss}); None when absent or damaged, in which
    case the run is not known to be finished and a resume continues from its newest checkpoint."""
    record = read_json(run_dir / FINISHED)
    try:
        int(record["step"]), int(record["steps_per_epoch"])
    except (KeyError, TypeError, ValueError):
        return None
    return record


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics.jsonl rows past `step` (a resume's checkpoint), so the history reads as one uninterrupted run.

    Replaced atomically, so a kill here never leaves a truncated history; a line a kill cut short is dropped.
    """
    path = run_dir / METRICS
    if not path.is_file():
        return
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                rows.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
