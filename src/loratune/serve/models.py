"""The models a server answers with: one base model, loaded once, plus LoRA adapters loaded on demand and cached.

All adapters live in one PeftModel (peft's multi-adapter API: load_adapter / set_adapter / disable_adapter), so an
adapter costs only its own small weights. One lock serialises generation: switching the active adapter changes the
model for everyone, so two requests never run at once on one model.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

from loratune.adapters import adapter_path, list_adapters
from loratune.errors import LoratuneError
from loratune.models import load_base, resolve_model_path
from loratune.workspace import Workspace


class UnknownModel(LoratuneError):
    """A request named a model this server does not have."""


class ModelPool:
    def __init__(self, source: str = "default", home: str | Path | None = None, device: str | None = None):
        import torch

        self.ws = Workspace.resolve(home)
        self.base_path = resolve_model_path(source, self.ws)
        self.base_name = self.base_path.name
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_base(self.base_path, device)
        self.model.eval()
        self.loaded: dict[str, str] = {}  # 'pirate' or 'pirate/checkpoint-000010' -> peft adapter name
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        """The base, then 'base+adapter' for every adapter in loras/ trained on this base."""
        same_base = [
            a.name for a in list_adapters(self.ws) if a.has_adapter and _same_folder(a.base_model, self.base_path)
        ]
        return [self.base_name] + [f"{self.base_name}+{name}" for name in same_base]

    def adapter_of(self, model: str) -> str | None:
        """Check a request's model name: None for the base, else the adapter spec ('name' or 'name/checkpoint-N')."""
        base, plus, adapter = model.partition("+")
        if base != self.base_name or (plus and not adapter):
            raise UnknownModel(
                f"model {model!r} does not exist here: use {self.base_name!r} or '{self.base_name}+<adapter>' "
                "(GET /v1/models lists them)"
            )
        if not adapter:
            return None
        try:
            adapter_path(adapter, self.ws)
        except LoratuneError as e:
            raise UnknownModel(f"model {model!r} does not exist here: {e}") from None
        return adapter

    @contextmanager
    def use(self, adapter: str | None):
        """The model with `adapter` active (None: the plain base model), held for one request."""
        with self.lock:
            if adapter is None:
                with self.model.disable_adapter() if self.loaded else nullcontext():
                    yield self.model
            else:
                name = self._load(adapter)  # first: loading the first adapter wraps self.model in a PeftModel
                self.model.set_adapter(name)
                yield self.model

    def _load(self, adapter: str) -> str:
        """Load an adapter the first time it is asked for; later requests reuse it."""
        if adapter in self.loaded:
            return self.loaded[adapter]
        from peft import PeftModel

        path = adapter_path(adapter, self.ws)
        name = adapter.replace("/", "__").replace(".", "_")  # peft adapter names become module keys: no dots
        if self.loaded:
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        self.loaded[adapter] = name
        return name


def _same_folder(recorded: str, base: Path) -> bool:
    try:
        return Path(recorded).resolve() == base.resolve()
    except (OSError, ValueError):
        return False
