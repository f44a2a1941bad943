"""Reading options into the config dataclasses: values coerced to each field's type (with one-line errors),
nested dicts, YAML files, dotted command-line overrides (`--train.lr 2e-4`), and the help text read from each field's
docstring. Generic over dataclasses: the option groups themselves live in loratune.config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from loratune.errors import LoratuneError


def _check_choices(spec: Any, prefix: str) -> None:
    """A Literal option built in Python (not read through `coerce`) must still be one of its choices."""
    for name, kind in typing.get_type_hints(type(spec)).items():
        if typing.get_origin(kind) is Literal:
            coerce(getattr(spec, name), kind, prefix + name)


def _check_finite(cfg: Any, prefix: str = "") -> None:
    """Every float option must be a finite number (YAML's .inf / .nan and '--train.x inf' parse as floats)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise LoratuneError(f"option '{prefix}{f.name}' must be a finite number; got {value}")


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


MAX_CONFIG_BYTES = 1024 * 1024  # a run config is a few kB; a bigger file is not one


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a config never needs them, and an alias bomb ("billion laughs")
    expands a few hundred bytes into gigabytes once its values are converted."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: anchors and aliases (&name / *name) are not allowed in a config"
            )
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LoratuneError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise LoratuneError(f"{path}: {path.stat().st_size:,} bytes is too big for a config file")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8-sig"), Loader=_NoAliasLoader) or {}
    except UnicodeDecodeError:
        raise LoratuneError(f"{path}: not UTF-8 text, so not a YAML config; give a .yaml file") from None
    except yaml.YAMLError as e:
        raise LoratuneError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise LoratuneError(f"{path}: YAML nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise LoratuneError(f"{path}: expected a mapping of options at the top level")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Written beside and renamed over the target, so a kill never leaves a truncated file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)


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


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """`--train.lr 2e-4`, `--train.lr=2e-4`, or a bare `--train.resume` (true)."""
    overrides, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or "." not in token:
            raise LoratuneError(
                f"unknown argument '{token}' (options look like --train.lr 2e-4; see loratune train --help)"
            )
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value, i = extra[i + 1], i + 1
            else:
                value = "true"
        overrides[key] = value
        i += 1
    return overrides


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `value` at 'train.lr' inside a nested dict (creating levels as needed)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise LoratuneError(f"option '{dotted}': '{part}' is not a group of options")
    data[leaf] = value


def coerce(value: Any, kind: Any, name: str) -> Any:
    """Turn a YAML or command-line value into the field's type, or say clearly why not."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise LoratuneError(f"option '{name}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, kind, name)
    if kind not in _CONVERT:
        return value
    try:
        return _CONVERT[kind](value)
    except (TypeError, ValueError):
        raise LoratuneError(f"option '{name}' expects {_EXPECTED[kind]}; got {value!r}") from None


def _coerce_union(value: Any, kind: Any, name: str) -> Any:
    """The first type of the union that takes the value (e.g. bool | Literal["auto"]); None where it is allowed."""
    if value is None and type(None) in typing.get_args(kind):
        return None
    choices = [a for a in typing.get_args(kind) if a is not type(None)]
    if len(choices) == 1:
        return coerce(value, choices[0], name)
    for choice in choices:
        try:
            return coerce(value, choice, name)
        except LoratuneError:
            pass
    accepted = " or ".join(_EXPECTED.get(c) or ", ".join(map(str, typing.get_args(c))) for c in choices)
    raise LoratuneError(f"option '{name}' expects {accepted}; got {value!r}")


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError  # True is no count, and 2.5 steps are not a whole number
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    return float(value)


_CONVERT = {bool: _to_bool, int: _to_int, float: _to_float, str: lambda value: "" if value is None else str(value)}
_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


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
