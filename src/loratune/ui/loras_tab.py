"""LoRAs tab: every run in loras/ with its adapter, checkpoints and the loss logged at each; any of them can be sent
to the Generate tab."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from loratune.ui.runs import list_runs, lora_choices
from loratune.workspace import Workspace

COLUMNS = ["LoRA", "final adapter", "steps logged", "last loss", "checkpoints (loss at that step)"]


@dataclass
class LorasTab:
    choice: gr.Dropdown
    use: gr.Button
    reload: object
    """() -> fresh values for `outputs` (the table and the choices)."""
    outputs: list


def build(ws: Workspace) -> LorasTab:
    gr.Markdown("Adapters and checkpoints in `loras/`. A checkpoint is a complete adapter: use it like the final one.")
    table = gr.Dataframe(runs_table(ws), headers=COLUMNS, interactive=False, wrap=True, elem_id="loras-table")
    with gr.Row():
        choice = gr.Dropdown(lora_choices(ws), value=None, label="Adapter or checkpoint", scale=3)
        use = gr.Button("Use in Generate", variant="primary", scale=1)
        refresh = gr.Button("↻ Refresh", scale=0)

    def reload():
        return runs_table(ws), gr.update(choices=lora_choices(ws))

    refresh.click(reload, outputs=[table, choice])
    return LorasTab(choice=choice, use=use, reload=reload, outputs=[table, choice])


def runs_table(ws: Workspace) -> pd.DataFrame:
    rows = []
    for run in list_runs(ws):
        checkpoints = ", ".join(
            f"{c.name.removeprefix('checkpoint-')} ({c.loss:.3f})" if c.loss is not None else c.name
            for c in run.checkpoints
        )
        last = f"{run.last_loss:.4f}" if run.last_loss is not None else ""
        rows.append([run.name, "yes" if run.has_adapter else "no", run.steps, last, checkpoints or "-"])
    return pd.DataFrame(rows, columns=COLUMNS)
