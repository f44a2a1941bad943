"""One writer per run folder: a second run on the same adapter name is refused while the first is alive.

The lock is an OS lock (flock) on `loras/<name>/.lock`, which also holds the owner's pid for the message. The OS drops
the lock when its process dies, however it dies (kill -9 included), so a lock file left by a dead run is simply taken
over; a reused pid can never make a stale lock look alive. The file stays when a run ends (emptied): deleting it
could let two runs lock two different files of the same name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loratune.errors import LoratuneError
from loratune.rundir import LOCK

LOCK_FILE = LOCK  # rundir.py owns the name; kept here for the modules that import it from the lock


class RunLock:
    def __init__(self):
        self.fd: int | None = None

    def acquire(self, run_dir: Path) -> None:
        """Take the run folder's lock (once it exists), or refuse because another live run holds it."""
        holder = self.try_acquire(run_dir)
        if holder is not None:
            raise LoratuneError(
                f"{run_dir} is in use by another training run (pid {holder}); wait for it to end, stop it "
                "(Ctrl-C or kill -TERM, which saves a checkpoint), or choose another --name"
            )

    def try_acquire(self, run_dir: Path) -> str | None:
        """Take the lock if the folder exists and nobody holds it; else return the holder's pid (or 'unknown')."""
        if self.fd is not None or not run_dir.is_dir():
            return None
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            except OSError:  # Windows refuses reads of a locked byte
                holder = "unknown"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # empty: nobody is writing
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _lock(fd: int) -> None:
    """An exclusive, non-blocking OS lock; raises OSError when another process (or run) holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte instead (also released when the process dies)
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextmanager
def hold(run_dir: Path, doing: str) -> Iterator[None]:
    """Hold the run folder's lock while `doing` (e.g. 'delete it') changes it, so no training run starts meanwhile.

    A run that trains holds the lock: then this refuses in one line, naming its pid, instead of pulling files from
    under it (its resume hint would point at a half-deleted folder).
    """
    lock = RunLock()
    holder = lock.try_acquire(run_dir)
    if holder is not None:
        raise LoratuneError(
            f"{run_dir} is being trained (pid {holder}); cannot {doing} now: wait for the run to end, or stop it "
            "first (Ctrl-C or kill -TERM, which saves a checkpoint)"
        )
    try:
        yield
    finally:
        lock.release()


def is_training(run_dir: Path) -> bool:
    """Whether a live process holds the run folder's lock (checked by trying it, so a dead run's lock reads free).

    An empty lock file (the state a run leaves when it ends) is not tried: listing runs, which the UI does often,
    must not hold the lock at the moment a new run starts and so refuse it.
    """
    try:
        if not (run_dir / LOCK).read_text(errors="replace").strip():
            return False
    except OSError:  # no lock file (never trained here), or Windows refusing to read a locked byte
        if not (run_dir / LOCK).is_file():
            return False
    lock = RunLock()
    busy = lock.try_acquire(run_dir) is not None
    lock.release()
    return busy
