"""The run folder, loras/<name>/: the names of its files and the one reader of each.

The run folder is the contract between the CLI, the web UI and the library (the UI only reads what the CLI writes), so
every module that reads or names one of these files goes through here. A file can be read while its run writes it, or
after a kill cut its last line short: readers never raise on a torn or missing file, they return what is whole.

    loratune.yaml              the fully resolved config of the run
    metrics.jsonl              one JSON row per logged step {step, epoch, loss, lr, ...} and per evaluation
                               {eval_loss, retention_kl, retention_same}
    finished.json              written last by a run that ended by design (not stopped): its step and why
    best.json                  the step with the lowest eval loss (with its retention figures)
    retention.json             the base model's answers to the retention probe, made once at the start of the run
    promoted.json              which checkpoint was promoted to be the run's adapter
    loss.png, README.md        the loss curve and the model card
    .lock                      held by the process training in this folder
    checkpoint-000200/         a complete checkpoint holds COMPLETE, written last
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

CONFIG = "loratune.yaml"
METRICS = "metrics.jsonl"
FINISHED = "finished.json"
BEST = "best.json"
RETENTION = "retention.json"
PROMOTED = "promoted.json"
LOSS_PLOT = "loss.png"
CARD = "README.md"
CONTRACT_FILE = "prompt.json"  # the prompt contract training writes beside the adapter (loratune.prompting)
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
    return _metrics_rows(text)


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


def read_retention(run_dir: Path) -> dict[int, dict]:
    """step -> {retention_kl, retention_same} from metrics.jsonl (the rows of the retention probe)."""
    found = {}
    for row in read_metrics(run_dir):
        if isinstance(row.get("retention_kl"), int | float):
            found[row["step"]] = {"retention_kl": row["retention_kl"], "retention_same": row.get("retention_same")}
    return found


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


# ---------------------------------------------------------------- readers for the library, the CLI and the UI

ADAPTER_STEP = "adapter_step.json"  # beside a run folder's adapter: {"step": N, "sha256": of its weights}


def _metrics_rows(text: str) -> list[dict]:
    """The whole rows of metrics.jsonl text (the one rule for every reader): a torn or malformed line is skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class MetricsReader:
    """`read_metrics`, read incrementally: each call reads only what was appended since the last one.

    The file can also be rewritten (a resume trims the rows past its checkpoint, --overwrite starts it again): the
    last line read is compared with the file at the same place, and on any difference the file is read afresh.
    A last line without its newline yet is parsed on each call but not kept, so the rows are always read_metrics's.
    """

    def __init__(self):
        self.seen: dict[Path, tuple[int, bytes, list[dict]]] = {}  # file -> (bytes read, last line read, rows)
        self.lock = threading.Lock()

    def rows(self, run_dir: Path) -> list[dict]:
        path = run_dir / METRICS
        try:
            f = open(path, "rb")
        except OSError:
            return []
        with self.lock, f:
            offset, last, rows = self.seen.get(path, (0, b"", []))
            f.seek(offset - len(last))
            if f.read(len(last)) != last:
                offset, last, rows = 0, b"", []
                f.seek(0)
            data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            lines = complete.splitlines(keepends=True)
            rows = rows + _metrics_rows(complete.decode("utf-8", errors="replace"))
            self.seen[path] = (offset + len(complete), lines[-1] if lines else last, rows)
            return rows + _metrics_rows(data[len(complete) :].decode("utf-8", errors="replace"))


def read_run_config(run_dir: Path) -> dict | None:
    """loratune.yaml of a run folder, for options taken from it (resume, the UI's form, the prompt contract): None
    when there is none; a damaged one is a LoratuneError naming the file (it is written atomically, so never torn)."""
    from loratune.config import load_yaml

    path = run_dir / CONFIG
    return load_yaml(path) if path.is_file() else None


def config_folder(adapter: Path) -> Path:
    """The folder whose loratune.yaml describes an adapter folder: the folder itself, or the run above a checkpoint."""
    return adapter.parent if checkpoint_step(adapter.name) is not None else adapter


def saved_model_source(adapter: Path) -> str:
    """model.source in the loratune.yaml describing an adapter folder ('' when unknown or unreadable)."""
    model = read_saved_config(config_folder(adapter)).get("model")
    return str(model.get("source") or "") if isinstance(model, dict) else ""


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """The run's checkpoint-NNNNNN folders, oldest first (complete or not: see is_complete)."""
    found = run_dir.glob(CHECKPOINT_PREFIX + "*") if run_dir.is_dir() else []
    return sorted(p for p in found if checkpoint_step(p.name) is not None and p.is_dir())


def is_complete(checkpoint: Path) -> bool:
    """Whether a checkpoint was written to the end (its COMPLETE marker is written last)."""
    return (checkpoint / COMPLETE).is_file()
