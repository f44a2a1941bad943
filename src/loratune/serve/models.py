"""The models a server answers with: one base model, loaded once, plus LoRA adapters loaded on demand and cached.

All adapters live in one PeftModel (peft's multi-adapter API), so an adapter costs only its own small weights, and a
batch may mix them: each row names its adapter (serve/batcher.py). A request names a model as the base's name, an
adapter's bare name ('pirate', 'pirate/checkpoint-000010') or '<base>+<adapter>'; adapters are those in loras/ and
those added at run time (POST /v1/load_lora_adapter, vLLM's API). An adapter is served only if it was trained on
this very base model (not merely one of the same shapes, which peft would load without complaint) and its weights
are safetensors. Removing an adapter that running requests use deletes its weights when the last of them ends.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from loratune.adapters import adapter_path, list_adapters, recorded_bases
from loratune.errors import LoratuneError
from loratune.models import load_base, resolve_model_path
from loratune.models.checks import check_adapter_folder
from loratune.models.sources import DEFAULT_NAME
from loratune.prompting import PromptContract, load_contract, model_contract
from loratune.sampling import Sampling, generate_kwargs
from loratune.serve.batcher import Batcher
from loratune.serve.generation import Generation
from loratune.serve.limits import CONTEXT_WHEN_UNKNOWN, context_length
from loratune.serve.queue import QueueFull
from loratune.workspace import Workspace, check_name, inside


class UnknownModel(LoratuneError):
    """A request named a model this server does not have."""


class AdapterRefused(LoratuneError):
    """An adapter exists but this server will not apply it (another base model, or weights not in safetensors)."""


class ModelPool:
    def __init__(
        self,
        source: str = "default",
        home: str | Path | None = None,
        device: str | None = None,
        max_queue: int = 32,
        max_batch: int = 16,
    ):
        import torch

        self.ws = Workspace.resolve(home)
        self.base_path = resolve_model_path(source, self.ws)
        self.base_name = self.base_path.name
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_base(self.base_path, device)
        self.model.eval()
        self.context = context_length(self.model) or CONTEXT_WHEN_UNKNOWN
        tok = self.tokenizer
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)  # masked anyway
        self.lock = threading.RLock()  # the model: its forward passes (the batcher) and its adapters (load, delete)
        self.loaded: dict[str, str] = {}  # 'pirate', 'pirate/checkpoint-000010' or an added name -> peft's name
        self.added: dict[str, Path] = {}  # names given to POST /v1/load_lora_adapter -> their folders
        self.users: Counter[str] = Counter()  # peft name -> requests using it
        self.unused_soon: set[str] = set()  # peft names removed while in use: deleted when their last request ends
        self.contracts: dict[str | None, PromptContract] = {}
        self._loads = 0
        self.batcher = Batcher(self, max_batch, max_queue)

    def contract(self, adapter: str | None) -> PromptContract:
        """How prompts for `adapter` (None: the base) are built: the prompt contract it was trained with."""
        if adapter not in self.contracts:
            if adapter is None:
                self.contracts[None] = model_contract(self.tokenizer, self.base_path)
            else:
                self.contracts[adapter] = load_contract(self._folder(adapter), self.tokenizer, self.ws)
        return self.contracts[adapter]

    def models(self) -> list[dict]:
        """The base, then every adapter in loras/ trained on it and every added one: {id, root, parent} as vLLM
        lists them (root: the folder, parent: the base's id). An adapter named like the base is listed as
        '<base>+<name>'."""
        found = [{"id": self.base_name, "root": str(self.base_path), "parent": None}]
        adapters = [(a.name, a.path) for a in list_adapters(self.ws) if a.has_adapter and a.name not in self.added]
        for name, path in adapters + sorted(self.added.items()):
            if self._refusal(path) is None:
                shown = f"{self.base_name}+{name}" if name == self.base_name else name
                found.append({"id": shown, "root": str(path), "parent": self.base_name})
        return found

    def names(self) -> list[str]:
        return [m["id"] for m in self.models()]

    def adapter_of(self, model: str) -> str | None:
        """Check a request's model name: None for the base, else the adapter ('name', 'name/checkpoint-N' or an
        added name).

        Raises UnknownModel for a name that is not here, AdapterRefused for an adapter this base cannot serve."""
        if model == self.base_name:
            return None
        base, plus, adapter = model.partition("+")
        if plus and (base != self.base_name or not adapter):
            adapter = ""
        adapter = adapter if plus else model
        unknown = (
            f"model {model!r} does not exist here: use {self.base_name!r}, an adapter's name or "
            f"'{self.base_name}+<adapter>' (GET /v1/models lists them)"
        )
        if not adapter:
            raise UnknownModel(unknown)
        if adapter in self.added:
            return adapter
        try:
            folder = self._folder(adapter)
        except AdapterRefused:
            raise
        except LoratuneError as e:
            raise UnknownModel(f"{unknown}: {e}") from None
        try:
            adapter_path(str(folder), self.ws, folders=True)  # the same safetensors-only check as `loratune generate`
        except LoratuneError as e:
            raise AdapterRefused(str(e)) from None
        refusal = self._refusal(folder)
        if refusal:
            raise AdapterRefused(f"adapter {adapter!r} {refusal}")
        return adapter

    def submit(self, adapter: str | None, ids: list[int], sampling: Sampling) -> Generation:
        """A generation for prompt `ids` with `adapter` (None: the base), in line for the batch.

        Raises QueueFull when the line is full, UnknownModel for an adapter removed meanwhile, AdapterRefused for
        one that does not load on this base."""
        contract = self.contract(adapter)
        with self.lock:
            peft_name = self._load(adapter) if adapter is not None else None
            self.users[peft_name or ""] += 1
        options = generate_kwargs(sampling, contract, self.tokenizer)
        row = Generation(self.tokenizer, ids, sampling, options, adapter, peft_name)
        try:
            self.batcher.submit(row)
        except QueueFull:
            self.release(row)
            raise
        return row

    def release(self, row: Generation) -> None:
        """A request left the batch (or its line): an adapter removed while it ran may go now."""
        with self.lock:
            name = row.peft_name or ""
            self.users[name] -= 1
            if self.users[name] <= 0:
                del self.users[name]
                if name in self.unused_soon:
                    self.unused_soon.discard(name)
                    self.model.delete_adapter(name)

    def add(self, lora_name, lora_path) -> None:
        """POST /v1/load_lora_adapter: serve the adapter folder `lora_path` as model `lora_name` (loaded now)."""
        if not isinstance(lora_name, str) or not isinstance(lora_path, str) or not lora_path:
            raise LoratuneError("'lora_name' and 'lora_path' must be given as strings")
        check_name(lora_name, "lora_name")
        if lora_name == self.base_name or lora_name in self.added or (self.ws.loras / lora_name).exists():
            raise LoratuneError(f"an adapter named {lora_name!r} is already served here: pick another lora_name")
        path = Path(lora_path).expanduser()
        folder = path.resolve() if path.is_absolute() else inside(self.ws.home, lora_path)
        if not (folder / "adapter_config.json").is_file():
            raise LoratuneError(
                f"lora_path {lora_path!r} is not an adapter folder (no adapter_config.json in {folder}); give an "
                "absolute path or one inside the workspace"
            )
        try:
            check_adapter_folder(folder)
        except LoratuneError as e:
            raise AdapterRefused(str(e)) from None
        refusal = self._refusal(folder)
        if refusal:
            raise AdapterRefused(f"adapter {lora_path!r} {refusal}")
        with self.lock:
            self.added[lora_name] = folder
            try:
                self._load(lora_name)
            except AdapterRefused:
                del self.added[lora_name]
                raise

    def remove(self, lora_name) -> None:
        """POST /v1/unload_lora_adapter: stop serving an added adapter; running requests for it finish first."""
        if not isinstance(lora_name, str) or not lora_name:
            raise LoratuneError("'lora_name' must be given as a string")
        with self.lock:
            if lora_name not in self.added:
                if lora_name in self.loaded or (self.ws.loras / lora_name.split("/")[0]).is_dir():
                    raise LoratuneError(
                        f"{lora_name!r} is an adapter in loras/, served on demand; only adapters added with "
                        "/v1/load_lora_adapter can be unloaded"
                    )
                raise UnknownModel(f"no adapter {lora_name!r} was added with /v1/load_lora_adapter")
            del self.added[lora_name]
            self.contracts.pop(lora_name, None)
            name = self.loaded.pop(lora_name, None)
            if name is None:
                return
            if self.users.get(name):
                self.unused_soon.add(name)
            else:
                self.model.delete_adapter(name)

    def _folder(self, adapter: str) -> Path:
        """The folder of an adapter: added, or in loras/ (LoratuneError: none; AdapterRefused: not safetensors)."""
        if adapter in self.added:
            return self.added[adapter]
        try:
            return adapter_path(adapter, self.ws)
        except LoratuneError as e:
            try:
                there = (inside(self.ws.loras, adapter) / "adapter_config.json").is_file()
            except LoratuneError:
                there = False
            if there:  # an adapter, but not one we load (pickled weights)
                raise AdapterRefused(f"adapter {adapter!r}: {e}") from None
            raise UnknownModel(str(e)) from None

    def _load(self, adapter: str) -> str:
        """Load an adapter the first time it is asked for (under the model's lock); later requests reuse it."""
        if adapter in self.loaded:
            return self.loaded[adapter]
        from peft import PeftModel

        path = self._folder(adapter)
        self._loads += 1
        name = f"lora{self._loads}"  # peft adapter names become module keys: never a dot, never reused
        try:
            if getattr(self.model, "peft_config", None) is not None:
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        except (RuntimeError, ValueError, KeyError) as e:  # e.g. other shapes: peft's 40-line error, in one line
            if name in getattr(self.model, "peft_config", {}):
                self.model.delete_adapter(name)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise AdapterRefused(f"adapter {adapter!r} does not load on {self.base_name}: {first[:300]}") from None
        self.loaded[adapter] = name
        return name

    def _refusal(self, adapter: Path) -> str | None:
        """Why this adapter was not trained on the served base (None: it was, or it records no base at all)."""
        recorded = recorded_bases(adapter)
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
