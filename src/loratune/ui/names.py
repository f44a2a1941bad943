"""Names that come from the browser, each checked to stay inside its workspace folder, and the choices offered.

The UI may listen on a network (with a password), so a browser never names an arbitrary path on this machine: models
are 'default', a folder in models/ or a hub id; datasets are files in datasets/ (LoRAs: loratune.adapters checks).
A run name is also checked against what loras/<name> already holds before a job is started on it (check_run_name).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from loratune.adapters.catalog import adapter_info, read_losses
from loratune.errors import LoratuneError
from loratune.rundir import read_finished
from loratune.training.lock import LOCK_FILE
from loratune.workspace import Workspace, check_name, inside

DATA_SUFFIXES = (".txt", ".json", ".jsonl")
BUILTIN_FORMATS = ["auto", "chat"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def model_choices(ws: Workspace) -> list[str]:
    """'default' and every complete model folder in models/."""
    found = []
    if ws.models.is_dir():
        found = sorted(p.name for p in ws.models.iterdir() if (p / "config.json").is_file())
    return ["default", *found]


def model_source(ws: Workspace, value: str) -> str:
    """A model choice from the browser as a `model.source`: 'default', a folder in models/, or a hub id."""
    value = (value or "").strip()
    if value in ("", "default"):
        return "default"
    if "/" not in value:
        folder = inside(ws.models, check_name(value, "model name"))
        if not (folder / "config.json").is_file():
            raise LoratuneError(f"no model '{value}' in {ws.models}")
        return str(folder)
    if _HUB_ID.match(value) and ".." not in value:
        return value  # downloaded (once) into models/<org>_<name>/
    raise LoratuneError(f"model {value!r}: choose a model in {ws.models}, 'default', or a hub id like org/name")


def model_choice(ws: Workspace, source: str) -> str:
    """What the browser shows for a saved `model.source`: a folder in models/ by its name."""
    path = Path(source)
    if path.is_absolute() and path.parent == ws.models.resolve():
        return path.name
    return source


def dataset_choices(ws: Workspace) -> list[str]:
    """Data files (and folders of .txt files) in datasets/, as paths relative to it."""
    if not ws.datasets.is_dir():
        return []
    found = [
        p.relative_to(ws.datasets).as_posix()
        for p in ws.datasets.rglob("*")
        if (p.is_file() and p.suffix.lower() in DATA_SUFFIXES) or (p.is_dir() and any(p.glob("*.txt")))
    ]
    return sorted(f for f in found if not any(part.startswith(".") for part in f.split("/")))


def data_path(ws: Workspace, value: str) -> str:
    """A dataset choice from the browser as an absolute path inside datasets/."""
    if not value:
        raise LoratuneError("choose a dataset (Dataset tab) first")
    path = inside(ws.datasets, value)
    if not path.exists():
        raise LoratuneError(f"no dataset '{value}' in {ws.datasets}")
    return str(path)


def dataset_choice(ws: Workspace, path: str) -> str:
    """What the browser shows for a saved `data.path`: its place inside datasets/."""
    try:
        return Path(path).resolve().relative_to(ws.datasets.resolve()).as_posix()
    except ValueError:
        return path  # outside datasets/ (a run started from the CLI): shown, but refused on start


def format_choices(ws: Workspace) -> list[str]:
    """auto, chat, the shipped format files (alpaca, vicuna) and the ones in formats/."""
    shipped = [p.name for p in resources.files("loratune").joinpath("formats").iterdir() if p.name.endswith(".json")]
    names = [n.removesuffix(".json").removesuffix("-format") for n in shipped]
    if ws.formats.is_dir():
        names += [p.stem for p in ws.formats.glob("*.json")]
    return BUILTIN_FORMATS + sorted(set(names))


def data_format(ws: Workspace, value: str) -> str:
    if value not in format_choices(ws):
        raise LoratuneError(f"unknown data format {value!r}; choose one of {', '.join(format_choices(ws))}")
    return value


def upload_target(ws: Workspace, filename: str) -> Path:
    """Where an uploaded file lands: datasets/<its file name>, the name checked like any other."""
    name = check_name(Path(filename).name, "file name")
    if Path(name).suffix.lower() not in DATA_SUFFIXES:
        raise LoratuneError(f"{name}: upload a {', '.join(DATA_SUFFIXES)} file")
    return inside(ws.datasets, name)


class NameTaken(LoratuneError):
    """loras/<name> holds a run that this start must leave alone; the UI shows that run beside the message."""


def check_run_name(ws: Workspace, name: str, resume: bool, overwrite: bool, last_job: str | None = None) -> None:
    """Refuse, before any job is spawned, a start that `loratune train` would refuse (or get wrong) seconds later.

    A new run needs a free name, or train.overwrite; a resume needs a run stopped at a complete checkpoint, not a
    finished one. A live training run holding the folder's lock (one started from the CLI) refuses both.

    Args:
        last_job: the state of the UI's last job on this name ('finished', 'stopped', ...), None if it had none.
    """
    folder = ws.lora_dir(name)
    holder = lock_holder(folder)
    if holder is not None:
        raise NameTaken(
            f"loras/{name} is in use by a training run (pid {holder}); wait for it to end, or choose another name"
        )
    if not folder.is_dir() or not any(p.name != LOCK_FILE for p in folder.iterdir()):
        if resume:
            raise NameTaken(f"nothing to resume: no run named '{name}' in {ws.loras}")
        return
    info = adapter_info(folder)
    saved = [c.step for c in info.checkpoints if c.complete]
    reached = max(read_losses(folder / "metrics.jsonl"), default=saved[-1] if saved else 0)
    # finished.json is written last by a run that ended by design; older runs: a stop checkpoints its last step.
    done = read_finished(folder)
    if done is not None:
        reached = int(done["step"])
    finished = info.has_adapter and (done is not None or last_job == "finished" or not saved or saved[-1] < reached)
    if resume:
        if finished:
            raise NameTaken(f"'{name}' already finished at step {reached}: nothing to resume")
        if not saved:
            raise NameTaken(f"nothing to resume: loras/{name} has no complete checkpoint")
    elif overwrite:
        return
    elif finished:
        raise NameTaken(
            f"'{name}' already holds a finished run (step {reached}); choose another name, or tick "
            "train.overwrite to replace it"
        )
    elif saved:
        raise NameTaken(
            f"'{name}' holds a run saved at step {saved[-1]}: press Resume to continue it (it is chosen under Job "
            "now), or choose another name, or tick train.overwrite to start it again"
        )
    else:
        raise NameTaken(f"loras/{name} already exists; choose another name, or tick train.overwrite to replace it")


def lock_holder(folder: Path) -> str | None:
    """The pid recorded in loras/<name>/.lock while a live run holds that lock, else None.

    Probed with a shared lock, taken and dropped at once (never held), so a run starting in that instant is the
    only one that could be turned away, and it says so.
    """
    path = folder / LOCK_FILE
    if not path.is_file():
        return None
    try:
        import fcntl
    except ImportError:  # Windows: `train` itself still refuses a held lock, only later
        return None
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return f.read(64).decode(errors="replace").strip() or "unknown"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None
