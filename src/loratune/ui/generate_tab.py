"""Generate tab: one prompt, answered side by side by the base model and one or more LoRAs (or checkpoints).

Each prompt is built by the LoRA's prompt contract (its chat template, format file or bare text), as `generate` does.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from dataclasses import dataclass

import gradio as gr

from loratune.adapters import adapter_path
from loratune.config import GenerateSpec
from loratune.generator import Generator
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.ui.form import build_form, read_form
from loratune.ui.loras_tab import lora_choices
from loratune.workspace import Workspace

LORA_BASE = "(the LoRA's base model)"
KEEP_LOADED = 3  # models kept in memory between clicks


@dataclass
class GenerateTab:
    loras: gr.Dropdown
    model: gr.Dropdown
    reload: object
    """(chosen LoRAs) -> fresh choices for `loras` and `model`, keeping what is still there."""


class LoadedModels:
    """Generators by (base model, LoRA), the least recently used dropped first, so repeated prompts do not reload."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.cache: OrderedDict[tuple, Generator] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, model: str | None, lora: str | None) -> Generator:
        key = (model, lora)
        with self.lock:
            if key not in self.cache:
                while len(self.cache) >= KEEP_LOADED:
                    self.cache.popitem(last=False)
                self.cache[key] = Generator(model, lora, self.ws.home)
            self.cache.move_to_end(key)
            return self.cache[key]


def build(ws: Workspace) -> GenerateTab:
    loaded = LoadedModels(ws)
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                loras = gr.Dropdown(
                    lora_choices(ws), multiselect=True, label="LoRAs", info="adapters and checkpoints in loras/"
                )
                refresh = gr.Button("↻", scale=0, min_width=40)
            model = gr.Dropdown(
                [LORA_BASE, *names.model_choices(ws)], value=LORA_BASE, label="Base model", info="models/ folders"
            )
            with_base = gr.Checkbox(True, label="Also answer with the base model alone (side by side)")
            prompt = gr.Textbox(label="Prompt", lines=4, elem_id="prompt")
            go = gr.Button("Generate", variant="primary")
        with gr.Column(scale=1):
            form = build_form(GenerateSpec)
    answers = gr.HTML(elem_id="answers")

    @shows_errors
    def on_generate(chosen, model_choice, base_too, text, *values):
        if not text or not text.strip():
            raise gr.Error("write a prompt first")
        spec = read_form(GenerateSpec, list(form), list(values))
        chosen = list(chosen or [])
        paths = [str(adapter_path(c, ws)) for c in chosen]
        model_source = None if model_choice == LORA_BASE else names.model_source(ws, model_choice)
        if not paths and model_source is None:
            model_source = "default"
        columns = []
        if base_too or not paths:
            # The base answer comes from the first LoRA's model with the adapter switched off: no second load. It
            # gets the first LoRA's prompt, so the two columns differ only by the adapter.
            base = loaded.get(model_source, paths[0] if paths else None)
            columns.append((titled("base model", base, spec), base.complete(text, spec, use_lora=False)))
        for choice, path in zip(chosen, paths, strict=True):
            generator = loaded.get(model_source, path)
            columns.append((titled(choice, generator, spec), generator.complete(text, spec)))
        return side_by_side(columns)

    go.click(on_generate, inputs=[loras, model, with_base, prompt, *form.values()], outputs=answers)

    def reload(chosen):
        available = lora_choices(ws)
        kept = [c for c in chosen or [] if c in available]
        return gr.update(choices=available, value=kept), gr.update(choices=[LORA_BASE, *names.model_choices(ws)])

    refresh.click(reload, inputs=loras, outputs=[loras, model])
    return GenerateTab(loras=loras, model=model, reload=reload)


def titled(name: str, generator: Generator, spec: GenerateSpec) -> str:
    """A column title that says how the prompt was built (the adapter's prompt contract, or bare text)."""
    return f"{name} · {'bare text' if spec.chat is False else generator.contract.describe()}"


def side_by_side(columns: list[tuple[str, str]]) -> str:
    cards = "".join(
        f'<div class="answer"><div class="answer-title">{html.escape(title)}</div>'
        f'<pre class="answer-text">{html.escape(text) or "<i>(empty)</i>"}</pre></div>'
        for title, text in columns
    )
    return f'<div class="answers">{cards}</div>'
