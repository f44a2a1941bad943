"""Typed run configuration: the dataclasses are the only source of truth.

A YAML file is a serialized `RunConfig`; the CLI exposes the same fields as dotted overrides (`--train.lr 2e-4`),
and every run folder keeps the fully resolved `loratune.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from loratune.errors import LoratuneError


@dataclass
class ModelSpec:
    source: str = "default"
    """'default' (SmolLM2-135M-Instruct), a hub id, a local folder, a .gguf file, or a name in models/."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own Python code. Off unless you trust the model's authors."""


@dataclass
class AdapterSpec:
    rank: int = 32
    """LoRA rank r: size of the low-rank update. Higher learns more and costs more memory."""
    alpha: int = 64
    """LoRA alpha: the update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    targets: str = "attention"
    """'attention', 'attention+mlp', 'all-linear', or comma-separated module names (e.g. 'q_proj,v_proj')."""


@dataclass
class DataSpec:
    path: str = ""
    """A .txt file or folder of them (raw text), or a .json / .jsonl file of records (instruction data)."""
    format: str = "auto"
    """'auto' (chat template if the model has one, else alpaca), 'alpaca', 'chat', or a format file / formats/ name."""
    cutoff: int = 256
    """Maximum tokens per sample. Longer instruction samples are dropped (and counted)."""
    overlap: int = 128
    """Raw text: tokens shared by consecutive chunks."""
    hard_cut: str = "\n\n\n"
    """Raw text: no chunk crosses this string."""
    min_chunk: int = 16
    """Raw text: chunks shorter than this many tokens are dropped."""
    add_eos: bool = True
    """Append EOS at the end of each response / document, so the model learns to stop."""


@dataclass
class TrainSpec:
    epochs: float = 3.0
    """Passes over the data (fractions allowed). Ignored when max_steps > 0."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: use epochs)."""
    lr: float = 3e-4
    """Peak learning rate."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming the learning rate up from 0."""
    batch_size: int = 16
    """Samples per optimizer step; gradient accumulation = batch_size / micro_batch."""
    micro_batch: int = 4
    """Samples per forward/backward pass (lower it if memory runs out)."""
    packing: bool = True
    """Lay samples end to end, no padding (up to micro_batch x cutoff tokens per pass); attention stays per sample."""
    packed_tokens: int = 0
    """Tokens per packed pass (0: micro_batch x cutoff). Fewer use less memory."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    save_every: int = 100
    """Write a resumable checkpoint every N optimizer steps (0: only at the end)."""
    log_every: int = 1
    """Write a metrics.jsonl line every N optimizer steps."""
    seed: int = 42
    resume: bool = False
    """Continue from the newest complete checkpoint of this run."""
    overwrite: bool = False
    """Replace an existing adapter of the same name instead of refusing."""


@dataclass
class GenerateSpec:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    chat: bool | None = None
    """Wrap the prompt in the model's chat template (None: yes, unless the LoRA was trained on raw text)."""


@dataclass
class RunConfig:
    name: str = ""
    """Adapter name: the run folder is loras/<name>/."""
    model: ModelSpec = field(default_factory=ModelSpec)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def validate(self) -> RunConfig:
        t = self.train
        checks = [  # (test, message); lambdas so a failed test never divides by zero further down
            (lambda: self.adapter.rank > 0, "adapter.rank must be > 0"),
            (lambda: 0 <= self.adapter.dropout < 1, "adapter.dropout must be in [0, 1)"),
            (lambda: self.data.cutoff >= 8, "data.cutoff must be at least 8 tokens"),
            (lambda: self.data.overlap >= 0, "data.overlap must be >= 0"),
            (lambda: t.lr > 0, "train.lr must be > 0"),
            (lambda: t.micro_batch > 0, "train.micro_batch must be > 0"),
            (
                lambda: t.batch_size % t.micro_batch == 0 and t.batch_size > 0,
                "train.batch_size must be a multiple of train.micro_batch",
            ),
            (lambda: t.epochs > 0 or t.max_steps > 0, "set train.epochs > 0 or train.max_steps > 0"),
            (lambda: 0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok():
                raise LoratuneError(message)
        return self


# ---------------------------------------------------------------- dict / YAML / dotted overrides


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, refusing unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise LoratuneError(f"{where or 'config'}: expected a mapping of options, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in known:
            raise LoratuneError(f"unknown option '{dotted}'{_suggest(key, known)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value or {}, dotted)
        else:
            kwargs[key] = coerce(value, kind, dotted)
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LoratuneError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise LoratuneError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LoratuneError(f"{path}: expected a mapping of options at the top level")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")


# Short names for the options everyone sets (CLI flags and keyword arguments of `loratune.train`).
SHORTCUTS = {"model": "model.source", "data": "data.path"}


def merge_options(data: dict, options: dict[str, Any], prefix: str = "") -> dict:
    """Layer `options` over a config dict, in place: dotted names ('train.lr'), shortcuts ('data'), nested dicts."""
    for key, value in options.items():
        if not prefix and key in SHORTCUTS and not isinstance(value, dict):
            key = SHORTCUTS[key]
        if isinstance(value, dict):
            merge_options(data, value, f"{prefix}{key}.")
        else:
            set_dotted(data, prefix + key, value)
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `value` at 'train.lr' inside a nested dict (creating levels as needed)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise LoratuneError(f"option '{dotted}': '{part}' is not a group of options")
    data[leaf] = value


def field_help(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, default, help) for every leaf option, in declaration order; help comes from field docstrings."""
    docs = _field_docs(cls)
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += field_help(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, value, docs.get(f.name, "")))
    return rows


def coerce(value: Any, kind: Any, name: str) -> Any:
    """Turn a YAML or command-line value into the field's type, or say clearly why not."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise LoratuneError(f"option '{name}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    expected = {bool: "true or false", int: "a whole number", float: "a number"}.get(kind, kind.__name__)
    raise LoratuneError(f"option '{name}' expects {expected}; got {value!r}")


def _suggest(key: str, known: dict) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


def _field_docs(cls: type) -> dict[str, str]:
    """Read the string literal placed right after each field (the attribute-docstring convention)."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = nxt.value.value
    return docs
