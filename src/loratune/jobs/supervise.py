"""Run one training job and record how it ended: `python supervise.py <job folder> -- <command ...>`.

Started detached (its own session) by the web UI, so the job outlives the UI. It runs the command with its output in
<job folder>/train.log, keeps <job folder>/job.json up to date (pid, state, exit code), and is the job's parent, so
the exit code is known even when no UI is running. Standard library only, run as a plain script: it must not pay
for importing torch just to wait.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loratune.workspace import TOKENIZE_WORKERS_ENV, UI_SET_WORKERS_ENV

JOB_FILE = "job.json"
LOG_FILE = "train.log"
STOP_FILE = "stop-requested"


def write_job(folder: Path, job: dict) -> None:
    """Replace job.json atomically, so a reader never sees half a file."""
    tmp = folder / f".{JOB_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(job, indent=1), encoding="utf-8")
    os.replace(tmp, folder / JOB_FILE)


def end_state(exit_code: int, stop_requested: bool) -> str:
    if stop_requested:
        return "stopped"  # whatever the code: the user asked for it (a graceful stop exits 0)
    return "finished" if exit_code == 0 else "failed"


def main(argv: list[str]) -> int:
    folder, separator, command = Path(argv[0]), argv[1], argv[2:]
    assert separator == "--" and command, "usage: supervise.py <job folder> -- <command ...>"
    job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if env.pop(UI_SET_WORKERS_ENV, None):  # the UI kept its own data checks in one process; the job may use the pool
        env.pop(TOKENIZE_WORKERS_ENV, None)
    with open(folder / LOG_FILE, "ab") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    # Signals are for the job (the UI sends them to its pid); the supervisor only waits and records.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    job.update(state="running", pid=child.pid, supervisor_pid=os.getpid())
    write_job(folder, job)
    exit_code = child.wait()
    job.update(
        state=end_state(exit_code, (folder / STOP_FILE).exists()),
        exit_code=exit_code,
        ended=time.time(),
    )
    write_job(folder, job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
