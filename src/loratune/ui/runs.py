"""What the run folders in loras/ hold, read for display: adapters, their checkpoints, and metrics.jsonl."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from loratune.train.checkpoint import COMPLETE
from loratune.workspace import Workspace


@dataclass
class Checkpoint:
    name: str
    """Folder name, e.g. checkpoint-000200."""
    step: int
    loss: float | None
    """The logged loss at that step (None if that step was not logged)."""


@dataclass
class Run:
    name: str
    folder: Path
    has_adapter: bool
    """The run folder itself holds a final (or promoted) adapter."""
    steps: int
    last_loss: float | None
    checkpoints: list[Checkpoint] = field(default_factory=list)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl; a line still being written is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def list_runs(ws: Workspace) -> list[Run]:
    """Every run folder in loras/ (newest first) with its checkpoints and the loss logged at each."""
    if not ws.loras.is_dir():
        return []
    runs = []
    folders = [p for p in ws.loras.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for folder in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True):
        rows = read_metrics(folder)
        loss_at = {row["step"]: row.get("loss") for row in rows if "step" in row}
        checkpoints = [
            Checkpoint(p.name, int(p.name.split("-")[-1]), loss_at.get(int(p.name.split("-")[-1])))
            for p in sorted(folder.glob("checkpoint-*"))
            if (p / COMPLETE).is_file() and p.name.split("-")[-1].isdigit()
        ]
        has_adapter = (folder / "adapter_config.json").is_file()
        if not (has_adapter or checkpoints or rows):
            continue
        runs.append(
            Run(
                name=folder.name,
                folder=folder,
                has_adapter=has_adapter,
                steps=rows[-1]["step"] if rows else 0,
                last_loss=rows[-1].get("loss") if rows else None,
                checkpoints=checkpoints,
            )
        )
    return runs


def lora_choices(ws: Workspace) -> list[str]:
    """Everything generate can load as a LoRA: 'name' (the final adapter) and 'name/checkpoint-000200'."""
    choices = []
    for run in list_runs(ws):
        if run.has_adapter:
            choices.append(run.name)
        choices += [f"{run.name}/{c.name}" for c in reversed(run.checkpoints)]
    return choices
