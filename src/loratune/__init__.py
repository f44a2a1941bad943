"""loratune: LoRA fine-tuning of text-generation models (library, CLI and web UI)."""

import warnings

from loratune.config import AdapterSpec, DataSpec, GenerateSpec, ModelSpec, RunConfig, TrainSpec
from loratune.errors import LoratuneError
from loratune.generate import Generator, generate
from loratune.train import train

# peft (0.21) still calls a transformers 5 method deprecated for v6; the warning is noise to our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

__all__ = [
    "AdapterSpec",
    "DataSpec",
    "GenerateSpec",
    "Generator",
    "LoratuneError",
    "ModelSpec",
    "RunConfig",
    "TrainSpec",
    "generate",
    "train",
]
