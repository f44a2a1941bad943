"""Model sources (hub id, folder, GGUF file), family presets for LoRA targets."""

from loratune.models.families import resolve_targets
from loratune.models.sources import load_base, resolve_model_path

__all__ = ["load_base", "resolve_model_path", "resolve_targets"]
