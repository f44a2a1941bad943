"""The workspace folders (like text-generation-webui's install folder) and safe names inside them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.errors import LoratuneError

TOKENIZE_WORKERS_ENV = "LORATUNE_TOKENIZE_WORKERS"  # force a number of tokenizer processes (1: none); data/pool.py
UI_SET_WORKERS_ENV = "LORATUNE_UI_SET_WORKERS"  # the web UI set TOKENIZE_WORKERS_ENV=1 (no fork in it); jobs undo it

# Matched whole with fullmatch: '$' alone also matches before a final newline, which let 'abc\n' through.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Windows device names (also with an extension): no such file or folder can exist there, so a workspace copied to
# Windows, or a run folder copied into text-generation-webui on Windows, would break.
_DEVICE_NAME = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def resolve(cls, home: str | Path | None = None) -> Workspace:
        """`home` if given, else $LORATUNE_HOME, else the current directory."""
        return cls(Path(home or os.environ.get("LORATUNE_HOME") or ".").expanduser().resolve())

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def datasets(self) -> Path:
        return self.home / "datasets"

    @property
    def formats(self) -> Path:
        return self.home / "formats"

    @property
    def loras(self) -> Path:
        return self.home / "loras"

    def lora_dir(self, name: str) -> Path:
        return inside(self.loras, check_name(name, "adapter name"))

    def has_run(self, name: str) -> bool:
        """A run folder with something in it besides hidden files (its lock, temporaries a kill left)."""
        folder = self.lora_dir(name)
        return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())

    def check_resumable(self, name: str) -> None:
        """Before anything else on a resume: a run of that name must exist."""
        if not name:
            raise LoratuneError("--resume needs the name of the run to continue: --name NAME")
        if not self.has_run(name):
            raise LoratuneError(f"no run named {name} in {self.loras} (nothing to resume)")


def check_name(name: str, what: str = "name") -> str:
    """A user-given name that becomes one file or folder: letters, digits, '.', '_' and '-' only.

    It starts with a letter or digit (so never '.', '..' or a hidden file) and does not end with '.' (Windows drops
    it: 'a.' and 'a' would be one folder). Windows device names (CON, NUL, COM1, ...) are refused. A '..' inside a
    name ('a..b') is only a name: it is not a path step, and `inside` checks every path anyway. A run may be called
    like a checkpoint ('checkpoint-000001'): its own checkpoints live inside its folder, so they cannot collide.
    """
    if not name or not _SAFE_NAME.fullmatch(name) or name.endswith("."):
        raise LoratuneError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit and "
            "not ending with '.' (at most 100 characters, no '/')"
        )
    if _DEVICE_NAME.fullmatch(name):
        raise LoratuneError(f"invalid {what} {name!r}: a Windows device name (CON, PRN, AUX, NUL, COM1, LPT1, ...)")
    return name


def inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing anything that escapes `folder` (.., absolute paths, symlinks out)."""
    target = (folder / relative).resolve()
    if target != folder.resolve() and folder.resolve() not in target.parents:
        raise LoratuneError(f"{relative!r} points outside {folder}")
    return target


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a reused pid reads as alive: then a leftover just waits for a later clean)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows: never clean there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
