"""The web UI: a first screen saying where to start, then one tab per step of the journey (model, dataset, train,
LoRAs, generate), wired together here."""

from __future__ import annotations

import os

import gradio as gr

from loratune.models.sources import DEFAULT_NAME
from loratune.ui import dataset_tab, generate_tab, loras_tab, model_tab, train_tab
from loratune.ui.loras_tab import lora_choices
from loratune.workspace import TOKENIZE_WORKERS_ENV, UI_SET_WORKERS_ENV, Workspace

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
.job-progress { height: 14px; border-radius: 7px; background: var(--border-color-primary); overflow: hidden; }
.job-progress-fill { height: 100%; background: var(--color-accent); transition: width 0.5s; }
.job-progress-text { margin-top: 4px; font-size: 0.95em; }
.chat-turn { margin: 6px 0; }
.chat-user { background: var(--background-fill-secondary); border-radius: 8px; padding: 6px 10px;
  white-space: pre-wrap; }
.chat-user::before { content: "you: "; font-weight: 600; }
"""
# The job log follows its end: Gradio's Textbox autoscroll only scrolls a box already near its bottom, and each
# refresh replaces the whole text. A user who scrolled up to read is left alone until they scroll back down.
JS = """
() => {
  let last = "";
  setInterval(() => {
    const box = document.querySelector("#job-log textarea");
    if (!box || box.value === last) return;
    const reading = last && box.scrollTop + box.clientHeight < box.scrollHeight - 40 && box === document.activeElement;
    last = box.value;
    if (!reading) box.scrollTop = box.scrollHeight;
  }, 300);
}
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
            with gr.Tab("Start", id="start"):
                steps = start_screen(ws)
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

        for button, tab in zip(steps, ("model", "dataset", "train"), strict=True):
            button.click(lambda tab=tab: gr.Tabs(selected=tab), outputs=tabs, queue=False)
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
        generate_page.select(generate.reload, inputs=generate.reload_inputs, outputs=generate.reload_outputs)
        loras.use.click(
            lambda choice: (
                gr.update(choices=lora_choices(ws), value=[choice] if choice else []),
                gr.Tabs(selected="generate"),
            ),
            inputs=loras.choice,
            outputs=[generate.loras, tabs],
        )
        # A reload (or a restarted UI) shows the running job, and the form shows its options.
        app.load(lambda: train_tab.reattach(ws, list(form)), outputs=[train.job, *form.values()])
        app.load(train.preview, inputs=list(form.values()), outputs=train.command, queue=False)
    return app


def start_screen(ws: Workspace) -> list[gr.Button]:
    """Where to start: the three steps, and whether the default model is ready. Returns the steps' buttons."""
    ready = (ws.models / DEFAULT_NAME / "config.json").is_file()
    model_state = (
        f"ready in `models/{DEFAULT_NAME}`"
        if ready
        else "converted into models/ the first time it is used (a few seconds, no download)"
    )
    gr.Markdown(
        "### Teach a model your own text in three steps\n"
        f"The default base model, **SmolLM2-135M-Instruct**, is {model_state}: it trains on a CPU, so you can "
        "start right away and pick a bigger model later.",
        elem_id="start-intro",
    )
    buttons = []
    for n, (title, text) in enumerate(
        [
            ("Model", "keep `default`, or pick / download another base model and estimate its memory."),
            ("Dataset", "upload a .txt corpus or an instruction .json/.jsonl file; check it and see what is trained."),
            (
                "Train",
                "set name, epochs, rank ...; Start. Progress, loss and the log show live; Stop saves a checkpoint.",
            ),
        ],
        start=1,
    ):
        with gr.Row(equal_height=True):
            buttons.append(
                gr.Button(f"{n}. {title}", scale=0, min_width=140, variant="primary" if n == 1 else "secondary")
            )
            gr.Markdown(text)
    gr.Markdown("Then **LoRAs** lists your adapters and checkpoints, and **Generate** chats with them side by side.")
    return buttons


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
    # A threaded web server must not fork: its in-process data checks tokenize in one process; the training jobs it
    # starts get the pool back (jobs/supervise.py).
    if TOKENIZE_WORKERS_ENV not in os.environ:
        os.environ[TOKENIZE_WORKERS_ENV] = "1"
        os.environ[UI_SET_WORKERS_ENV] = "1"
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
        # No allowed_paths: Gradio serves only its own upload folder, where the LoRAs tab stages each download
        # (ui/downloads.py), so a logged-in browser still cannot fetch an arbitrary file of the workspace by path.
        allowed_paths=[],
        theme=THEME,
        css=CSS,
        js=JS,
        ssr_mode=False,
        share=False,
        footer_links=[],
    )
