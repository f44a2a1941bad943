"""Adapters in loras/: list, promote (and undo), delete, merge into a model, export to GGUF, and their model cards."""

from loratune.adapters.catalog import (
    AdapterInfo,
    CheckpointInfo,
    adapter_path,
    base_model_path,
    delete,
    get_adapter,
    list_adapters,
    promote,
    recorded_bases,
    undo_promote,
)
from loratune.adapters.merge import merge

__all__ = [
    "AdapterInfo",
    "CheckpointInfo",
    "adapter_path",
    "base_model_path",
    "delete",
    "get_adapter",
    "list_adapters",
    "merge",
    "promote",
    "recorded_bases",
    "undo_promote",
]
