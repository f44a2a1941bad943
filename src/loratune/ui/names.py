"""Names that come from the browser, each checked to stay inside its workspace folder, and the choices offered.

The UI may listen on a network (with a password), so a browser never names an arbitrary path on this machine: models
are 'default', a folder in models/ or a hub id; datasets are files in datasets/ (LoRAs: loratune.adapters checks).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from loratune.errors import LoratuneError
from loratune.models.sources import DEFAULT_NAME
from loratune.workspace import Workspace, check_name, inside

DATA_SUFFIXES = (".txt", ".json", ".jsonl")
BUILTIN_FORMATS = ["auto", "chat"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def model_choices(ws: Workspace) -> list[str]:
    """'default' and every other complete model folder in models/ (the default's own folder is 'default')."""
    found = []
    if ws.models.is_dir():
        found = sorted(p.name for p in ws.models.iterdir() if (p / "config.json").is_file() and p.name != DEFAULT_NAME)
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
