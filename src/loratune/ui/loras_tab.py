"""LoRAs tab: every run in loras/ with its adapter, checkpoints and the loss logged at each (loratune.adapters), the
adapter's retention (KL from the base, share of unchanged short answers; training/retention.py), and
what can be done with one: use it in Generate, promote a checkpoint, merge into a model, export GGUF, download it or
its exports (ui/downloads.py), delete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from gradio.utils import get_upload_folder

from loratune import adapters, jobs
from loratune.adapters.export_gguf import export_gguf
from loratune.errors import LoratuneError
from loratune.ui import downloads
from loratune.ui.feedback import shows_errors
from loratune.workspace import Workspace

COLUMNS = [
    "LoRA",
    "adapter (step, loss)",
    "retention (KL, same)",
    "rank / alpha",
    "targets",
    "checkpoints: step (loss)",
]


@dataclass
class LorasTab:
    choice: gr.Dropdown
    use: gr.Button
    reload: object
    """() -> fresh values for `outputs` (the table and the choices)."""
    outputs: list


def lora_choices(ws: Workspace) -> list[str]:
    """Everything that loads as a LoRA: 'name' (the run's adapter) and 'name/checkpoint-000200' (complete ones)."""
    choices = []
    for info in adapters.list_adapters(ws):
        if info.has_adapter:
            choices.append(info.name)
        choices += [f"{info.name}/{c.name}" for c in reversed(info.checkpoints) if c.complete]
    return choices


def build(ws: Workspace) -> LorasTab:
    gr.Markdown(
        "Adapters and checkpoints in `loras/`. A checkpoint is a complete adapter: use it like the final one, "
        "or promote it to be the run's adapter."
    )
    table = gr.Dataframe(adapters_table(ws), headers=COLUMNS, interactive=False, wrap=True, elem_id="loras-table")
    with gr.Row():
        choice = gr.Dropdown(lora_choices(ws), value=None, label="Adapter or checkpoint", scale=3)
        refresh = gr.Button("↻ Refresh", scale=0)
    with gr.Row():
        use = gr.Button("Use in Generate", variant="primary")
        promote = gr.Button("Promote checkpoint to the run's adapter")
        export = gr.Button("Export GGUF (llama.cpp --lora)")
    with gr.Row():
        merged_name = gr.Textbox(label="Merged model name (in models/)", placeholder="my-model-merged", scale=3)
        merge = gr.Button("Merge into a full model", scale=1)
    with gr.Row():
        download_choice = gr.Dropdown(
            [],
            value=None,
            label="Download (the adapter, or a file its exports wrote)",
            scale=3,
            elem_id="download-choice",
        )
        download = gr.DownloadButton("Download", interactive=False, scale=1, elem_id="download-button")
    with gr.Row():
        sure = gr.Checkbox(False, label="Yes, delete it (a run name deletes the whole run folder)", scale=3)
        delete = gr.Button("Delete", variant="stop", scale=1)
    result = gr.Markdown(elem_id="loras-result")

    def reload():
        return adapters_table(ws), gr.update(choices=lora_choices(ws), value=None)

    def reload_keeping(spec):
        """After promote, export or merge: the lists read again, the adapter still chosen (so its new export shows)."""
        choices = lora_choices(ws)
        return adapters_table(ws), gr.update(choices=choices, value=spec if spec in choices else None)

    def no_file():
        return gr.update(value=None, label="Download", interactive=False)

    @shows_errors
    def list_downloads(spec):
        found = downloads.exports(ws, spec) if spec else []
        return gr.update(choices=[(e.label, e.key) for e in found], value=None), no_file()

    @shows_errors
    def on_download_choice(spec, key):
        if not key:
            return no_file()
        export = downloads.find(ws, spec, key)
        path = downloads.stage(export, Path(get_upload_folder()))  # Gradio serves its upload folder, not loras/
        return gr.update(
            value=str(path), label=f"Download {path.name} ({_size(path.stat().st_size)})", interactive=True
        )

    @shows_errors
    def on_promote(spec):
        name, checkpoint = _split(spec)
        if not checkpoint:
            raise LoratuneError("choose a checkpoint (name/checkpoint-NNNNNN) to promote")
        _not_training(ws, name)
        info = adapters.promote(name, checkpoint, ws)
        return f"`{name}` now holds the adapter of {info.promoted_from} (loss {_loss(info.loss)})."

    @shows_errors
    def on_export(spec):
        path = export_gguf(_chosen(spec), ws)
        return f"Written `{path}`."

    @shows_errors
    def on_merge(spec, out):
        if not out:
            raise LoratuneError("give the merged model a name")
        path = adapters.merge(_chosen(spec), out, ws)
        return f"Merged into `{path}`: choose it as a base model in the Model tab."

    @shows_errors
    def on_delete(spec, confirmed):
        if not confirmed:
            raise LoratuneError("tick the box to confirm the deletion")
        name, checkpoint = _split(spec)
        _not_training(ws, name)
        path = adapters.delete(name, ws, checkpoint=checkpoint or None)
        return f"Deleted `{path}`."

    # Lists refresh only after a success, so a failed action marks only its message as an error.
    refresh.click(reload, outputs=[table, choice])
    choice.change(list_downloads, inputs=choice, outputs=[download_choice, download])
    download_choice.input(on_download_choice, inputs=[choice, download_choice], outputs=download)
    relisted = {"fn": list_downloads, "inputs": choice, "outputs": [download_choice, download]}
    # After promote, export or merge the chosen adapter stays chosen and its downloads are listed again.
    promote.click(on_promote, inputs=choice, outputs=result).success(reload_keeping, choice, [table, choice]).then(
        **relisted
    )
    export.click(on_export, inputs=choice, outputs=result).success(reload_keeping, choice, [table, choice]).then(
        **relisted
    )
    merge.click(on_merge, inputs=[choice, merged_name], outputs=result).success(
        reload_keeping, choice, [table, choice]
    ).then(**relisted)
    delete.click(on_delete, inputs=[choice, sure], outputs=result).success(reload, outputs=[table, choice]).then(
        lambda: False, outputs=sure
    )
    return LorasTab(choice=choice, use=use, reload=reload, outputs=[table, choice])


def adapters_table(ws: Workspace) -> pd.DataFrame:
    rows = []
    for info in adapters.list_adapters(ws):
        if info.has_adapter:
            source = f" from {info.promoted_from}" if info.promoted_from else ""
            adapter = f"step {info.step}{source}, loss {_loss(info.loss)}"
        else:
            adapter = "none yet"
        checkpoints = ", ".join(f"{c.step} ({_loss(c.loss)})" for c in info.checkpoints if c.complete) or "-"
        targets = ", ".join(info.targets)
        rows.append(
            [info.name, adapter, _retention(info.retention), f"{info.rank} / {info.alpha}", targets, checkpoints]
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _retention(figures: dict | None) -> str:
    """'0.0123, 97%': the adapter's KL from the base and share of unchanged short answers ('-': not measured)."""
    if not figures:
        return "-"
    same = figures.get("retention_same")
    return f"{figures['retention_kl']:.4f}" + (f", {same:.0%}" if same is not None else "")


def _chosen(spec: str | None) -> str:
    if not spec:
        raise LoratuneError("choose an adapter or checkpoint first")
    return spec


def _split(spec: str | None) -> tuple[str, str]:
    name, _, checkpoint = _chosen(spec).partition("/")
    return name, checkpoint


def _not_training(ws: Workspace, name: str) -> None:
    state = jobs.status(ws, name)
    if state is not None and state.active:
        raise LoratuneError(f"'{name}' is training right now; stop the job first")


def _loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def _size(size: int) -> str:
    """'812 bytes', '1.3 MB', '2.1 GB'."""
    if size < 1000:
        return f"{size} bytes"
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}"
