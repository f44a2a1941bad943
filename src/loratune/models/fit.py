"""Will this run fit? Checked before the weights are loaded: `loratune estimate`'s figure for the run's own options
against the memory the machine has free (available RAM on a CPU, free VRAM on a GPU).

A run that cannot fit is refused in one line with both figures and how to go on, instead of being killed by the
kernel's out-of-memory killer minutes later with no message. The estimate counts every position as trained (raw text,
the worst case) and measured within -19 % to +1 % of the peak (README, "Will it fit?"), so a run is refused only when
the estimate alone exceeds the free memory; `train.memory_check false` tries anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

from loratune.config import RunConfig
from loratune.errors import LoratuneError
from loratune.models.estimate import Estimate, estimate, human, load_config, shape_of


def run_estimate(config: RunConfig, model_path: str | Path, device: str) -> Estimate:
    """The peak memory of one process of this run (see models/estimate.py for what is counted)."""
    tc, quant = config.train, config.model.quant
    shape = shape_of(load_config(str(model_path), None, config.model.trust_remote_code), config.adapter.rank,
                     config.adapter.targets)  # fmt: skip
    micro_batch, cutoff = tc.micro_batch, config.data.cutoff
    packed = config.packed_tokens()
    if packed and packed != micro_batch * cutoff:  # one packed row of `packed` tokens per pass
        micro_batch, cutoff = 1, packed
    checkpointing = config.checkpointing() or quant != "none"
    return estimate(shape, micro_batch, cutoff, device, quant, config.adapter.dropout > 0, checkpointing)


def free_memory(device: str) -> int:
    """Bytes this process may still take: free VRAM on a GPU, MemAvailable of the machine (or cgroup) on a CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    import psutil

    free = psutil.virtual_memory().available
    limit = _cgroup_room()
    return min(free, limit) if limit is not None else free


def check_fits(config: RunConfig, model_path: str | Path, device: str, shards: int = 1) -> None:
    """Refuse, in one line, a run whose estimated peak exceeds the free memory (unless train.memory_check is off).

    Under FSDP over `shards` GPUs each holds its share of the base and of the adapter's state (the activations are
    its own); on CPUs the processes share one RAM, and each loads the whole base before it is sharded."""
    if not config.train.memory_check:
        return
    try:
        parts = run_estimate(config, model_path, device)
    except LoratuneError:
        return  # a model the estimate cannot read: loading it next says why, in training's own words
    need = parts.total
    if shards > 1 and device == "cuda":  # (plus one layer gathered whole at a time, small beside the rest)
        sharded = parts.weights + parts.lora_and_optimizer
        need = parts.total - sharded + sharded // shards
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device != "cuda" else 1  # CPU DDP shares one RAM
    free = free_memory(device)
    if need * processes <= free:
        return
    where = "free GPU memory" if device == "cuda" else "available RAM"
    each = f" ({processes} processes of {human(need)})" if processes > 1 else ""
    raise LoratuneError(
        f"this run needs about {human(need * processes)}{each} and the machine has {human(free)} of {where} "
        f"(`loratune estimate` shows the parts): lower adapter.rank ({config.adapter.rank}), train.micro_batch "
        f"({config.train.micro_batch}) or data.cutoff ({config.data.cutoff}), turn on train.low_memory, "
        "use model.quant 4bit on a GPU, or set train.memory_check false to try anyway"
    )


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (a container's limit is lower than the machine's RAM), or None. Only
    anonymous memory counts as used: the page cache in memory.current is given back under pressure."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        stat = dict(line.split() for line in Path("/sys/fs/cgroup/memory.stat").read_text().splitlines())
        return None if limit == "max" else max(int(limit) - int(stat["anon"]), 0)
    except (OSError, ValueError, KeyError):
        return None
