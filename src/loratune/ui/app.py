"""The web UI: one tab per step of the journey (model, dataset, train, LoRAs, generate), wired together here."""

from __future__ import annotations

import gradio as gr

from loratune.ui import dataset_tab, generate_tab, loras_tab, model_tab, train_tab
from loratune.ui.loras_tab import lora_choices
from loratune.workspace import Workspace

CSS = """
.answers { display: flex; gap: 12px; flex-wrap: wrap; }
.answer { flex: 1 1 280px; border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px; }
.answer-title { font-weight: 600; margin-bottom: 4px; }
.answer-text { white-space: pre-wrap; margin: 0; font-family: var(--font-mono); }
.mask-sample { white-space: pre-wrap; font-family: var(--font-mono); border: 1px solid var(--border-color-primary);
  border-radius: 8px; padding: 8px; margin-bottom: 8px; line-height: 1.6; }
.mask-trained { background: #bbf7d0; color: #14532d; }
.mask-masked { background: #e5e7eb; color: #6b7280; }
.mask-legend { margin-bottom: 6px; font-size: 0.9em; }
.mask-legend span { padding: 2px 6px; border-radius: 4px; }
.data-problem, .data-warning, .data-ok { padding: 6px 10px; border-radius: 6px; margin-bottom: 6px; }
.data-problem { background: #fee2e2; color: #7f1d1d; }
.data-warning { background: #fef3c7; color: #78350f; }
.data-ok { background: #dcfce7; color: #14532d; }
"""
# System fonts: the default theme fetches Google Fonts, which a machine without internet waits on.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
)


def build_app(home: str | None = None, max_upload_mb: int = 100) -> gr.Blocks:
    ws = Workspace.resolve(home)
    with gr.Blocks(title="loratune") as app:
        gr.Markdown(f"## loratune · workspace `{ws.home}`")
        with gr.Tabs() as tabs:
            with gr.Tab("Model", id="model"):
                model = model_tab.build(ws)
            with gr.Tab("Dataset", id="dataset"):
                data = dataset_tab.build(ws, max_upload_mb)
            with gr.Tab("Train", id="train"):
                train = train_tab.build(ws)
            with gr.Tab("LoRAs", id="loras") as loras_page:
                loras = loras_tab.build(ws)
            with gr.Tab("Generate", id="generate") as generate_page:
                generate = generate_tab.build(ws)

        # The earlier tabs fill the Train form, so the options a run uses are always visible in one place.
        form = train.form
        data.connect(form["model.source"])
        model.connect(form)
        model.choice.change(lambda v: v, inputs=model.choice, outputs=form["model.source"])
        data.choice.change(lambda v: v, inputs=data.choice, outputs=form["data.path"])
        data.format.change(lambda v: v, inputs=data.format, outputs=form["data.format"])
        data.cutoff.change(lambda v: v, inputs=data.cutoff, outputs=form["data.cutoff"])
        # Lists are read again when their tab is opened: a run may have written checkpoints since the page loaded.
        loras_page.select(loras.reload, outputs=loras.outputs)
        generate_page.select(generate.reload, inputs=generate.loras, outputs=[generate.loras, generate.model])
        loras.use.click(
            lambda choice: (
                gr.update(choices=lora_choices(ws), value=[choice] if choice else []),
                gr.Tabs(selected="generate"),
            ),
            inputs=loras.choice,
            outputs=[generate.loras, tabs],
        )
        app.load(lambda: train_tab.reattach(ws), outputs=train.job)
    return app


def serve(
    home: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: list[tuple[str, str]] | None = None,
    max_upload_mb: int = 100,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Run the UI until interrupted. Listening beyond this machine needs `auth` (checked by the caller); with a
    certificate and key it serves HTTPS."""
    app = build_app(home, max_upload_mb)
    app.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        auth=auth,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        # Only Gradio's own startup request to https://localhost is left unverified: a certificate made for the
        # machine's name (or a self-signed one) would fail it. Browsers verify the certificate as usual.
        ssl_verify=not ssl_certfile,
        max_file_size=f"{max_upload_mb}mb",
        theme=THEME,
        css=CSS,
        ssr_mode=False,
        share=False,
        footer_links=[],
    )
