"""loratune: LoRA fine-tuning of text-generation models (library, CLI and web UI).

The package root imports nothing heavy: `import loratune.config` (or the CLI's `--help`) loads no torch. The names
below are looked up on first use (PEP 562), so `loratune.train(...)` still loads the training stack when it is called.
"""

import importlib
import warnings

# peft (0.21) still calls a transformers 5 method deprecated for v6; the warning is noise to our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

_LAZY = {
    "AdapterSpec": "loratune.config",
    "DataSpec": "loratune.config",
    "GenerateSpec": "loratune.config",
    "ModelSpec": "loratune.config",
    "RunConfig": "loratune.config",
    "TrainSpec": "loratune.config",
    "LoratuneError": "loratune.errors",
    "Generator": "loratune.generator",
    "generate": "loratune.generator",
    "train": "loratune.training.loop",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'loratune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
