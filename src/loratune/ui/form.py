"""Forms generated from the config dataclasses: one input per option, labelled with its dotted name, its default and
its help from the field docstring, so a new option in config.py appears in the UI without touching it."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import gradio as gr

from loratune.config import field_help, from_dict, set_dotted

AUTO = "auto"  # shown for an option whose None means "decide for me"


def option_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """dotted name -> annotated type, for every leaf option of dataclass `cls`."""
    kinds = {}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            kinds |= option_types(kind, f"{prefix}{name}.")
        else:
            kinds[prefix + name] = kind
    return kinds


def build_form(
    cls: type, skip: tuple[str, ...] = (), essentials: tuple[str, ...] = (), per_row: int = 5
) -> dict[str, gr.components.Component]:
    """Render one input per option of `cls` (inside the current Blocks context): the `essentials` first, in a compact
    grid of `per_row` columns, then the other options in collapsed accordions, one per section."""
    kinds = option_types(cls)
    helps = {dotted: (default, help_text) for dotted, default, help_text in field_help(cls)}
    inputs: dict[str, gr.components.Component] = {}
    for first in range(0, len(essentials), per_row):
        with gr.Row(equal_height=True):
            for dotted in essentials[first : first + per_row]:
                inputs[dotted] = _input(dotted, kinds[dotted], *helps[dotted], min_width=160)
    sections: dict[str, list[str]] = {}
    for dotted in helps:
        if dotted not in skip and dotted not in inputs:
            sections.setdefault(dotted.split(".")[0] if "." in dotted else "", []).append(dotted)
    for section, rows in sections.items():
        if not section:
            context = gr.Group()
        else:  # with essentials up front, the rest waits folded; without, every section shows
            title = f"{section}: more options" if essentials else section
            context = gr.Accordion(title, open=not essentials, elem_id=f"section-{section}")
        with context:
            for dotted in rows:
                inputs[dotted] = _input(dotted, kinds[dotted], *helps[dotted])
    return inputs


def element_id(name: str) -> str:
    """The HTML id of an option's input block: 'train.lr' -> 'option-train-lr'."""
    return "option-" + name.replace(".", "-").replace("_", "-")


def _input(name: str, kind: Any, default: Any, help_text: str, **layout) -> gr.components.Component:
    info = f"{help_text} (default: {AUTO if default is None else default!r})".strip()
    common = {"label": name, "info": info, "elem_id": element_id(name), **layout}
    origin = typing.get_origin(kind)
    if origin is Literal:
        return gr.Dropdown(list(typing.get_args(kind)), value=default, **common)
    if origin in (typing.Union, types.UnionType):  # `X | None`: None offered as "auto"
        inner = next(a for a in typing.get_args(kind) if a is not type(None))
        choices = [AUTO, "true", "false"] if inner is bool else None
        if choices:
            value = AUTO if default is None else str(default).lower()
            return gr.Dropdown(choices, value=value, **common)
        return gr.Textbox(value="" if default is None else str(default), **common)
    if kind is bool:
        return gr.Checkbox(value=default, **common)
    if kind is int:
        return gr.Number(value=default, precision=0, **common)
    if kind is float:
        return gr.Number(value=default, **common)
    if _escaped(default):
        return gr.Textbox(value=default.encode("unicode_escape").decode("ascii"), **common)
    return gr.Textbox(value=default, **common)


def _escaped(default: Any) -> bool:
    """Text options whose default holds newlines or tabs are edited with backslash escapes (\\n), so they show."""
    return isinstance(default, str) and any(c in default for c in "\n\t\r")


def form_values(cls: type, config: Any) -> dict[str, Any]:
    """The inverse of read_form: what each input shows for `config` (None as 'auto', newlines escaped)."""
    kinds = option_types(cls)
    values = {}
    for name in kinds:
        value = config
        for part in name.split("."):
            value = getattr(value, part)
        if value is None:
            value = AUTO
        elif isinstance(value, bool) and typing.get_origin(kinds[name]) in (typing.Union, types.UnionType):
            value = str(value).lower()
        elif _escaped(value):
            value = value.encode("unicode_escape").decode("ascii")
        values[name] = value
    return values


def read_form(cls: type, names: list[str], values: list[Any], extra: dict[str, Any] | None = None) -> Any:
    """Build (and validate, where the class can) a `cls` from the form's values; empty inputs keep the default."""
    defaults = {name: default for name, default, _ in field_help(cls)}
    kinds = option_types(cls)
    data: dict = {}
    for name, value in zip(names, values, strict=True):
        if value is None:
            continue  # an emptied number: keep the default
        if _escaped(defaults.get(name)) and isinstance(value, str):
            value = value.encode("latin-1", "backslashreplace").decode("unicode_escape")
        if value == AUTO and type(None) in typing.get_args(kinds[name]):
            value = None
        set_dotted(data, name, value)
    for name, value in (extra or {}).items():
        set_dotted(data, name, value)
    config = from_dict(cls, data)
    return config.validate() if hasattr(config, "validate") else config
