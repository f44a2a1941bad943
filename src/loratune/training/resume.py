"""What `--resume` may change, when a run is already finished, and the command that continues a run.

A resumed run continues the same training, and its loratune.yaml and model card describe the whole run. So the options
that decided the steps already taken must stay as saved: on a resume they cannot take effect anyway (the optimizer
state brings back its lr and weight decay, the scheduler its base lr, the adapter its shape, the checkpoint its data
position), or they would silently turn the record into a half-truth (a new schedule, clipping or dropout from the
resumed step on). Only the options below may change; they take effect from the resumed step and are recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from pathlib import Path

from loratune.config import RunConfig, from_dict
from loratune.errors import LoratuneError
from loratune.rundir import CONFIG, FINISHED, read_finished, read_run_config

RESUME_MAY_CHANGE = {
    # how long the run is (the learning-rate schedule stretches or shrinks to the new total from the resumed step)
    "train.max_steps",
    "train.epochs",
    # when it saves, logs, evaluates and stops: none of them changes a weight
    "train.save_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.eval_every",
    "train.report_to",
    "train.stop_at_loss",
    "train.retention",
    "train.retention_prompts",
    "train.retention_tokens",
    "train.retention_items",
    # memory knobs: the same step computed in other pieces (the OOM hint's way out is a smaller micro-batch)
    "train.micro_batch",
    "train.packed_tokens",
    "train.packing",
    "train.gradient_checkpointing",
    "train.low_memory",
    "train.memory_check",
    "train.precompute_reference",
    # permissions and what this command does, not how the run trains
    "model.trust_remote_code",
    "train.resume",
    "train.overwrite",
}


def check_resume_options(run_dir: Path, config: RunConfig) -> None:
    """Refuse, in one line naming it, an option given with another value than the run was trained with."""
    data = read_run_config(run_dir)
    if data is None:
        return  # nothing to compare with (deleted by hand); the checkpoint still checks the data position
    try:
        saved = from_dict(RunConfig, data)
    except LoratuneError as e:
        raise LoratuneError(f"{run_dir / CONFIG}: {e}") from None
    was, now = _flat(saved), _flat(config)
    for name, value in now.items():
        if name in RESUME_MAY_CHANGE or name == "name" or was.get(name) == value:
            continue
        raise LoratuneError(
            f"--resume cannot change {name} (the run was trained with {was.get(name)!r}, now {value!r}): a resumed "
            f"run continues the same training; drop --{name} to resume, or train a new run with it (another --name, "
            f"or --overwrite). What may change on a resume: {', '.join(sorted(RESUME_MAY_CHANGE - _CONTROL))}"
        )


_CONTROL = {"train.resume", "train.overwrite"}


def _flat(config, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def total_steps(config: RunConfig, steps_per_epoch: int) -> int:
    return config.train.max_steps or math.ceil(config.train.epochs * steps_per_epoch)


def mark_finished(run_dir: Path, step: int, steps_per_epoch: int, loss: float, reached_loss: float = 0.0) -> None:
    """Record that the run ended by design at `step` (replaced atomically; removed when a resume trains on)."""
    record = {"step": step, "steps_per_epoch": steps_per_epoch, "loss": loss, "reached_stop_at_loss": reached_loss}
    tmp = run_dir / f".{FINISHED}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / FINISHED)


def already_finished(run_dir: Path, config: RunConfig) -> dict | None:
    """The finished record if resuming with these options would train nothing new, else None.

    Finished means: its adapter is there, and it reached the (possibly new) total of steps, or it reached
    train.stop_at_loss and the target is not lowered (a lower target, or 0, trains on).
    """
    record = read_finished(run_dir)
    if record is None or not (run_dir / "adapter_model.safetensors").is_file():
        return None  # no record, or its adapter is gone: resuming rebuilds it from the newest checkpoint
    if int(record["step"]) >= total_steps(config, int(record["steps_per_epoch"])):
        return record
    reached = float(record.get("reached_stop_at_loss") or 0.0)
    if reached > 0 and config.train.stop_at_loss >= reached:
        return record
    return None


def resume_command(home: Path, name: str, *extra: str) -> str:
    """`loratune --home <home> train --name <name> --resume ...`: works from any folder, quoted for a shell."""
    words = ["loratune", "--home", str(home), "train", "--name", name, "--resume", *extra]
    return " ".join(shlex.quote(w) for w in words)
