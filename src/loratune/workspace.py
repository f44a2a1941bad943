"""The workspace folders (like text-generation-webui's install folder) and safe names inside them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.errors import LoratuneError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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


def check_name(name: str, what: str = "name") -> str:
    """A user-given name that becomes one folder: letters, digits, '.', '_' and '-' only."""
    if not name or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise LoratuneError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (at most 100 characters, no '/')"
        )
    return name


def inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing anything that escapes `folder` (.., absolute paths, symlinks out)."""
    target = (folder / relative).resolve()
    if target != folder.resolve() and folder.resolve() not in target.parents:
        raise LoratuneError(f"{relative!r} points outside {folder}")
    return target
