"""loratune: LoRA fine-tuning of text-generation models (library, CLI and web UI)."""

from loratune.config import AdapterSpec, DataSpec, GenerateSpec, ModelSpec, RunConfig, TrainSpec
from loratune.errors import LoratuneError
from loratune.generate import Generator, generate
from loratune.train import train

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
