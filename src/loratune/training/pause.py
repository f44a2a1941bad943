"""Named pause points for the fault-injection tests (tests/test_faults.py); inert unless LORATUNE_PAUSE_AT is set.

With LORATUNE_PAUSE_AT=<point>[@<n>] and LORATUNE_PAUSE_FILE=<path>, the n-th time (default: the first) the run
reaches <point> it creates <path> and waits until the test removes it (at most 60 s). The test sends its signal while
the run waits, so every kill lands at exactly the named point, however fast or slow the machine is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_reached: dict[str, int] = {}


def pause_point(name: str) -> None:
    wanted = os.environ.get("LORATUNE_PAUSE_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] != int(nth or 1):
        return
    flag = Path(os.environ["LORATUNE_PAUSE_FILE"])
    flag.write_text(f"{name}@{_reached[name]} pid {os.getpid()}\n")
    deadline = time.monotonic() + 60
    while flag.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
