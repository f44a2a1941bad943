"""Training jobs run by the web UI: the real CLI (`python -m loratune.cli train`) in a detached background process.

Each job has a folder `loras/.jobs/<name>/` holding the config the UI wrote (config.yaml), the job's output
(train.log) and its state (job.json: pid, running/stopped/finished/failed, exit code), kept by supervise.py. Progress
comes from the run folder the CLI writes (loras/<name>/metrics.jsonl, checkpoints). Nothing lives only in the UI's
memory, so a page reload or a UI restart finds the job again.

Why not in the run folder itself: `train` refuses to start in a non-empty run folder and `--overwrite` empties it,
so the job's own files must sit beside it. The folder name starts with '.', which no adapter name can.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loratune.config import RunConfig, save_yaml
from loratune.errors import LoratuneError
from loratune.ui.names import check_run_name
from loratune.ui.supervise import JOB_FILE, LOG_FILE, STOP_FILE, write_job
from loratune.workspace import Workspace, check_name, inside

JOBS = ".jobs"
SUPERVISOR = Path(__file__).with_name("supervise.py")


@dataclass
class JobStatus:
    name: str
    state: str
    """starting, running, stopping, finished, stopped, failed, or lost (its process vanished without a word)."""
    pid: int | None
    started: float
    exit_code: int | None
    resume: bool

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "stopping")


def job_dir(ws: Workspace, name: str) -> Path:
    return inside(ws.loras / JOBS, check_name(name, "adapter name"))


def start(ws: Workspace, config: RunConfig | None = None, name: str | None = None, resume: bool = False) -> JobStatus:
    """Start `loratune train` for `config` (a new run), or `--resume` the run `name` with its saved options."""
    name = check_name(config.name if config is not None else name or "", "adapter name")
    current = status(ws, name)
    if current is not None and current.active:
        raise LoratuneError(f"a job for '{name}' is already {current.state}; stop it first")
    if not resume:
        config.validate()
    # Everything `train` would refuse is refused here, before the job's record (train.log, job.json) is touched:
    # a job that fails 15 s later would first have emptied the log of the run it was refused on.
    overwrite = bool(config is not None and config.train.overwrite)
    check_run_name(ws, name, resume=resume, overwrite=overwrite, last_job=current.state if current else None)
    folder = job_dir(ws, name)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (folder / STOP_FILE, folder / JOB_FILE):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "loratune.cli", "--home", str(ws.home), "train"]
    if resume:
        command += ["--name", name, "--resume"]  # the saved loratune.yaml gives every option back
    else:
        save_yaml(config, folder / "config.yaml")
        command += ["--config", str(folder / "config.yaml")]
    with open(folder / LOG_FILE, "a" if resume else "w", encoding="utf-8") as log:  # a resume continues the story
        log.write(f"\n$ {' '.join(command)}\n")
    write_job(folder, {"name": name, "state": "starting", "started": time.time(), "resume": resume, "pid": None})
    # Its own session: Ctrl-C on the UI's terminal and the UI's exit leave the job running.
    supervisor = subprocess.Popen(
        [sys.executable, str(SUPERVISOR), str(folder), "--", *command],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ws.home if ws.home.is_dir() else None,
    )
    _reap_later(supervisor)
    return status(ws, name)


def stop(ws: Workspace, name: str) -> JobStatus:
    """Ask the job to stop: SIGTERM, on which `train` finishes its step, writes a checkpoint and exits 0."""
    current = status(ws, name)
    if current is None or not current.active or current.pid is None:
        raise LoratuneError(f"no running job for '{name}'")
    if current.state == "stopping":  # a second signal would abort at once, without the checkpoint
        raise LoratuneError(f"'{name}' is already stopping: it finishes its step, saves a checkpoint and exits")
    (job_dir(ws, name) / STOP_FILE).write_text(f"{time.time()}\n")
    os.kill(current.pid, signal.SIGTERM)
    return status(ws, name)


def status(ws: Workspace, name: str) -> JobStatus | None:
    folder = job_dir(ws, name)
    job = _read(folder)
    if not job:
        return None
    state = job.get("state", "lost")
    if state == "starting" and time.time() - job.get("started", 0) > 60:
        state = "lost"  # the supervisor never came up to record the job's pid
    elif state == "running":
        if not _alive(job.get("supervisor_pid")) and not _alive(job.get("pid")):
            state = "lost"  # killed without a chance to record its end (e.g. the machine restarted)
        elif (folder / STOP_FILE).exists():
            state = "stopping"
    return JobStatus(
        name=name,
        state=state,
        pid=job.get("pid"),
        started=job.get("started", 0.0),
        exit_code=job.get("exit_code"),
        resume=bool(job.get("resume")),
    )


def job_names(ws: Workspace) -> list[str]:
    """Every job the UI started, newest first."""
    root = ws.loras / JOBS
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if (p / JOB_FILE).is_file()]
    return [p.name for p in sorted(folders, key=lambda p: (p / JOB_FILE).stat().st_mtime, reverse=True)]


def log_tail(ws: Workspace, name: str, lines: int = 12) -> str:
    """The start of the job's output (command, model, data summary) and its end; progress-bar redraws (carriage
    returns) collapse to their last state. Reads at most 16 KB, however long the job has run."""
    path = job_dir(ws, name) / LOG_FILE
    if not path.is_file():
        return ""
    size, window = path.stat().st_size, 8192
    with open(path, "rb") as f:
        if size <= 2 * window:
            shown = _screen_lines(f.read())
        else:
            head = _screen_lines(f.read(window))[:-1]  # the last line of each window may be cut
            f.seek(size - window)
            shown = head + ["..."] + _screen_lines(f.read(), cut_start=True)
    head_size = 4  # the command, the model, the data summary, the step count
    if len(shown) > lines:
        shown = shown[:head_size] + ["..."] + shown[-(lines - head_size - 1) :]
    return "\n".join(shown)


def _screen_lines(data: bytes, cut_start: bool = False) -> list[str]:
    """Lines as a terminal would show them. `cut_start`: the data starts mid-line; keep that line only from its last
    carriage return (a whole progress-bar state), or drop it."""
    lines = data.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n")
    if cut_start and lines:
        lines[0] = lines[0].rsplit("\r", 1)[1] if "\r" in lines[0] else ""
    return [line.rsplit("\r", 1)[-1] for line in lines if line.rsplit("\r", 1)[-1].strip()]


def _read(folder: Path) -> dict:
    try:
        return json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _alive(pid: int | None) -> bool:
    """Is `pid` a live (not zombie) process? Enough to tell a running job from one that ended."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():  # Linux: a zombie still answers kill(0)
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def _reap_later(process: subprocess.Popen) -> None:
    """Collect the supervisor's exit in the background, so a long-lived UI leaves no zombie behind."""
    import threading

    threading.Thread(target=process.wait, daemon=True).start()
