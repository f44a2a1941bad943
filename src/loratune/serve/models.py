"""The models a server answers with: one base model, loaded once, plus LoRA adapters loaded on demand and cached.

All adapters live in one PeftModel (peft's multi-adapter API: load_adapter / set_adapter / disable_adapter), so an
adapter costs only its own small weights. A fair queue serialises generation: switching the active adapter changes the
model for everyone, so two requests never run at once on one model, and they take turns in arrival order.
An adapter is served only if it was trained on this very base model (not merely one of the same shapes, which peft
would load without complaint) and its weights are safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml

from loratune.adapters import adapter_path, list_adapters
from loratune.errors import LoratuneError
from loratune.generator import resolve_lora
from loratune.models import load_base, resolve_model_path
from loratune.models.sources import DEFAULT_NAME
from loratune.prompting import PromptContract, load_contract, model_contract
from loratune.serve.limits import CONTEXT_WHEN_UNKNOWN, context_length
from loratune.serve.queue import FairQueue
from loratune.workspace import Workspace


class UnknownModel(LoratuneError):
    """A request named a model this server does not have."""


class AdapterRefused(LoratuneError):
    """An adapter exists but this server will not apply it (another base model, or weights not in safetensors)."""


class ModelPool:
    def __init__(
        self, source: str = "default", home: str | Path | None = None, device: str | None = None, max_queue: int = 32
    ):
        import torch

        self.ws = Workspace.resolve(home)
        self.base_path = resolve_model_path(source, self.ws)
        self.base_name = self.base_path.name
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_base(self.base_path, device)
        self.model.eval()
        self.context = context_length(self.model) or CONTEXT_WHEN_UNKNOWN
        self.loaded: dict[str, str] = {}  # 'pirate' or 'pirate/checkpoint-000010' -> peft adapter name
        self.contracts: dict[str | None, PromptContract] = {}
        self.queue = FairQueue(max_queue)

    def contract(self, adapter: str | None) -> PromptContract:
        """How prompts for `adapter` (None: the base) are built: the prompt contract it was trained with."""
        if adapter not in self.contracts:
            if adapter is None:
                self.contracts[None] = model_contract(self.tokenizer, self.base_path)
            else:
                self.contracts[adapter] = load_contract(adapter_path(adapter, self.ws), self.tokenizer, self.ws)
        return self.contracts[adapter]

    def names(self) -> list[str]:
        """The base, then 'base+adapter' for every adapter in loras/ trained on this base."""
        same_base = [a.name for a in list_adapters(self.ws) if a.has_adapter and self._refusal(a.path) is None]
        return [self.base_name] + [f"{self.base_name}+{name}" for name in same_base]

    def adapter_of(self, model: str) -> str | None:
        """Check a request's model name: None for the base, else the adapter spec ('name' or 'name/checkpoint-N').

        Raises UnknownModel for a name that is not here, AdapterRefused for an adapter this base cannot serve."""
        base, plus, adapter = model.partition("+")
        if base != self.base_name or (plus and not adapter):
            raise UnknownModel(
                f"model {model!r} does not exist here: use {self.base_name!r} or '{self.base_name}+<adapter>' "
                "(GET /v1/models lists them)"
            )
        if not adapter:
            return None
        try:
            folder = adapter_path(adapter, self.ws)
        except LoratuneError as e:
            raise UnknownModel(f"model {model!r} does not exist here: {e}") from None
        try:
            resolve_lora(str(folder), self.ws)  # the same safetensors-only check as `loratune generate`
        except LoratuneError as e:
            raise AdapterRefused(str(e)) from None
        refusal = self._refusal(folder)
        if refusal:
            raise AdapterRefused(f"adapter {adapter!r} {refusal}")
        return adapter

    @contextmanager
    def use(self, adapter: str | None, client_gone: Callable[[], bool] | None = None, deadline: float | None = None):
        """The model with `adapter` active (None: the plain base model), held for one request after its turn in the
        queue (QueueFull, ClientGone or TimedOut from the queue pass through)."""
        with self.queue.turn(client_gone, deadline):
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
        try:
            if self.loaded:
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        except (RuntimeError, ValueError, KeyError) as e:  # e.g. other shapes: peft's 40-line error, in one line
            if self.loaded and name in getattr(self.model, "peft_config", {}):
                self.model.delete_adapter(name)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise AdapterRefused(f"adapter {adapter!r} does not load on {self.base_name}: {first[:300]}") from None
        self.loaded[adapter] = name
        return name

    def _refusal(self, adapter: Path) -> str | None:
        """Why this adapter was not trained on the served base (None: it was, or it records no base at all)."""
        recorded = _recorded_bases(adapter)
        if not recorded:
            return None
        for source in recorded:
            folder = _local_model_folder(source, self.ws)
            if folder is not None:
                if folder == self.base_path.resolve():
                    return None
                return (
                    f"was trained on {folder}, not on the served model {self.base_path}: "
                    f"serve it with `loratune serve --model {folder}`"
                )
        return f"was trained on {recorded[0]!r}, which is not the served model {self.base_path} (nor on this machine)"


def _recorded_bases(adapter: Path) -> list[str]:
    """The base model as peft recorded it (adapter_config.json), then as the run's loratune.yaml gives it."""
    found = []
    try:
        peft = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        if isinstance(peft, dict) and peft.get("base_model_name_or_path"):
            found.append(str(peft["base_model_name_or_path"]))
    except (OSError, ValueError):
        pass
    for folder in (adapter, adapter.parent):  # a checkpoint's run config is in the run folder above it
        try:
            saved = yaml.safe_load((folder / "loratune.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        source = (saved.get("model") or {}).get("source") if isinstance(saved, dict) else None
        if source:
            found.append(str(source))
        break
    return found


def _local_model_folder(source: str, ws: Workspace) -> Path | None:
    """Where a model source lives on this machine, without downloading or converting anything (None: nowhere)."""
    path = Path(source).expanduser()
    if source in ("", "default"):
        folder = ws.models / DEFAULT_NAME
    elif path.suffix == ".gguf":
        folder = ws.models / path.stem  # where resolve_model_path converts it to
    elif path.is_dir():
        folder = path
    else:
        folder = ws.models / source.replace("/", "_")  # a hub id, as downloaded
    return folder.resolve() if (folder / "config.json").is_file() else None
