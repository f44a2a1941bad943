"""How loratune writes files for the user: normal permissions, and hidden temporaries a kill can leave behind cleaned.

Every multi-step write (a checkpoint, the final adapter, promote, merge, export, delete) works on a hidden name
`.<name>.<tag>-<pid>` beside its target and renames at the end, so a kill leaves the old state or the new one, plus
perhaps such a temporary. `clean_stale` removes the temporaries whose process is dead, the next time loratune looks
at the workspace; a `.old` one (a folder moved aside to be replaced) is put back if its replacement never arrived.

Nothing here imports the rest of loratune (only the run folder's file names and workspace's pid check), so the
training code can use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from loratune.rundir import ADAPTER_STEP, COMPLETE, read_json  # noqa: F401 - ADAPTER_STEP: training imports it here
from loratune.workspace import pid_alive

# .<name>.<tag>-<pid>: what our writers leave while they work (tags: see the module docstring).
TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<tag>tmp|old|promote|merging|deleting)-(?P<pid>\d+)")
# A merge by loratune before 0.3 used `.<name>.merging` without a pid: stale once a day old.
_LEGACY_MERGING = re.compile(r"\.(?P<name>.+)\.merging")
_LEGACY_AGE_S = 24 * 3600


def temporary(target: Path, tag: str) -> Path:
    """The hidden name this process works on before `target` is renamed into place."""
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}")


def normal_permissions(path: Path) -> None:
    """Give `path` (a file, or a folder and all it holds) the permissions the umask allows (0644 with umask 022).

    safetensors (and anything built like tempfile.mkstemp) creates files as 0600 whatever the umask, so another user,
    a container or a web server could not read an adapter or model we wrote for them.
    """
    mask = _umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    try:  # Linux says it without changing it (os.umask can only be read by setting it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def clean_stale(folder: Path, dead_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Remove (or put back) the hidden temporaries of dead processes directly inside `folder`; returns their names.

    Temporaries whose name starts with one of `dead_prefixes` count as dead whatever their pid (unless it is ours):
    the caller holds the lock that their writer would hold.
    """
    cleaned = []
    if not folder.is_dir():
        return cleaned
    for entry in sorted(folder.iterdir()):
        match = TEMPORARY.fullmatch(entry.name)
        if match is None:
            legacy = _LEGACY_MERGING.fullmatch(entry.name)
            if legacy and entry.is_dir() and time.time() - entry.stat().st_mtime > _LEGACY_AGE_S:
                _remove(entry)
                cleaned.append(entry.name)
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or (pid_alive(pid) and not entry.name.startswith(dead_prefixes)):
            continue
        original = folder / match["name"]
        if match["tag"] == "old" and not original.exists() and not original.is_symlink():
            entry.rename(original)  # killed between moving the old one aside and renaming the new one in: roll back
        else:
            _remove(entry)
        cleaned.append(entry.name)
    return cleaned


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        (entry / COMPLETE).unlink(missing_ok=True)  # a half-removed checkpoint must never look complete
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened, i.e. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically with `data` as JSON (written beside, synced, renamed)."""
    tmp = temporary(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise
    fsync_dir(path.parent)


def read_record(path: Path, digest: str) -> dict | None:
    """A JSON record about a weights file (promoted.json, adapter_step.json), if its "sha256" is `digest` (else it
    describes other weights); None too when it is absent or torn."""
    data = read_json(path)
    return data if data.get("sha256") == digest else None


_hashes: dict[tuple, str] = {}


def sha256(path: Path) -> str:
    """The file's SHA-256, remembered per (path, inode, size, mtime): listing runs again does not re-read adapters."""
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]
