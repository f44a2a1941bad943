"""What FSDP changes for a run under `accelerate launch --use_fsdp --fsdp_version 2`: each process holds a shard.

accelerate's FSDP2 (`fully_shard`) splits every parameter, the frozen base and the adapter alike, over the processes,
and the optimizer's state with them. A checkpoint stays what it is on one process (a whole PEFT adapter and the
whole optimizer state, indexed as `optimizer.state_dict()` indexes it), so it loads as an adapter by itself and
resumes on any number of processes, sharded or not: every process gathers the shards (`adapter_weights`,
`full_tensors`), the main process writes; a resume spreads the whole state back (`shard_optimizer_state`).
The gathers are collective: every process calls them, in the same order. Without FSDP they return the tensors as
they are.
"""

from __future__ import annotations

import os

import torch

from loratune.errors import LoratuneError


def uses_fsdp2(accelerator) -> bool:
    """`prepare` shards the model over the processes (accelerate >= 1.6 under `--use_fsdp --fsdp_version 2`)."""
    return getattr(accelerator, "is_fsdp2", False)


def is_sharded(model) -> bool:
    """The model (or the PeftModel inside it) was sharded by FSDP2's `fully_shard`."""
    if not torch.distributed.is_available():  # a torch built without it (some macOS wheels)
        return False
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no public FSDP2, so nothing loratune prepares is sharded
        return False
    return isinstance(model, FSDPModule)


def check_sharding(accelerator) -> str | None:
    """Refuse FSDP1 and FSDP2 without the transformer-layer wrap; the note to print when FSDP was asked for but
    accelerate runs DDP instead (it does on CPUs), else None."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not uses_fsdp2(accelerator):
        raise LoratuneError(
            "loratune trains under FSDP2 only: add --fsdp_version 2 to `accelerate launch` (or fsdp_version: 2 "
            "under fsdp_config in the accelerate config)"
        )
    if uses_fsdp2(accelerator) and not wraps_layers(accelerator.state.fsdp_plugin.auto_wrap_policy):
        # Without it the whole base is gathered for every pass (the root shard unit holds it, and stays gathered
        # after its forward). Seen with torch 2.13 and peft 0.21: after the retention probe's answers (generate,
        # adapter disabled, no gradients) the first step fails with "element 0 of tensors does not require grad".
        raise LoratuneError(
            "loratune under FSDP shards one decoder layer at a time: add --fsdp_auto_wrap_policy "
            "TRANSFORMER_BASED_WRAP to `accelerate launch` (or fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP in the "
            "accelerate config)"
        )
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and accelerator.distributed_type != DistributedType.FSDP and accelerator.num_processes > 1:
        return (
            f"note: accelerate runs FSDP on GPUs only; these {accelerator.num_processes} {accelerator.device.type} "
            "processes train with DDP, each holding the whole base"
        )
    return None


def wraps_layers(policy) -> bool:
    """accelerate's TRANSFORMER_BASED_WRAP: each decoder layer (the model's `_no_split_modules`) is its own shard."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    return getattr(policy, "func", policy) is transformer_auto_wrap_policy


def adapter_weights(model) -> dict[str, torch.Tensor]:
    """The trained parameters (the adapter) by name, each whole: under FSDP gathered from every process."""
    return {name: full_tensors(p) for name, p in model.named_parameters() if p.requires_grad}


def full_tensors(value):
    """`value` (a tensor, or dicts and lists of them: a state dict) with every FSDP shard gathered into the whole
    tensor; anything else as it is."""
    if isinstance(value, torch.Tensor):  # a DTensor (FSDP's shard) has full_tensor(); a plain tensor is whole
        value = value.detach()  # gathered whole on every process, then straight to host memory: one at a time on GPU
        return value.full_tensor().cpu() if hasattr(value, "full_tensor") else value
    if isinstance(value, dict):
        return {k: full_tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(full_tensors(v) for v in value)
    return value


def shard_optimizer_state(optimizer, state: dict) -> dict:
    """A whole optimizer state (as a checkpoint holds it) cut to this process's shards of the parameters it belongs
    to, ready for `optimizer.load_state_dict`; as it is for parameters that are not sharded.

    Every process reads the same whole state, so each takes its own slice (no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param = {}
    for index, values in state["state"].items():
        param = params[index]
        if isinstance(param, DTensor):  # the moments have the parameter's shape; `step` is a scalar
            values = {
                k: distribute_tensor(v.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
                if isinstance(v, torch.Tensor) and v.shape == param.shape
                else v
                for k, v in values.items()
            }
        per_param[index] = values
    return {**state, "state": per_param}
