"""Training jobs in the background: the real CLI (`python -m loratune.cli train`) in a detached process.

The web UI starts, stops and watches them; nothing here needs the UI. Each job has a folder `loras/.jobs/<name>/`
holding the config it was started with (config.yaml), the job's output (train.log) and its state (job.json: pid,
running/stopped/finished/failed, exit code), kept by supervise.py. Progress comes from the run folder the CLI writes
(loras/<name>/metrics.jsonl, checkpoints; see loratune.rundir). Nothing lives only in a process's memory, so a page
reload or a UI restart finds the job again. A start is checked against what loras/<name> already holds before
anything is spawned (check_run_name).

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

from loratune.adapters.catalog import adapter_info
from loratune.config import RunConfig, save_yaml
from loratune.errors import LoratuneError
from loratune.jobs.supervise import JOB_FILE, LOG_FILE, STOP_FILE, write_job
from loratune.rundir import LOCK, read_finished, read_losses
from loratune.workspace import Workspace, check_name, inside

JOBS = ".jobs"
JOB_CONFIG = "config.yaml"  # the config a new run was started with
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
        save_yaml(config, folder / JOB_CONFIG)
        command += ["--config", str(folder / JOB_CONFIG)]
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
    if not folder.is_dir() or not any(p.name != LOCK for p in folder.iterdir()):
        if resume:
            raise NameTaken(f"nothing to resume: no run named '{name}' in {ws.loras}")
        return
    info = adapter_info(folder)
    saved = [c.step for c in info.checkpoints if c.complete]
    reached = max(read_losses(folder), default=saved[-1] if saved else 0)
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
    path = folder / LOCK
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
