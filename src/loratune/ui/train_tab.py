"""Train tab: every option (generated from the config dataclasses), start / stop / resume a background job, and its
live progress read from the run folder, so a reloaded page or a restarted UI shows the same job and history."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from loratune import adapters, jobs
from loratune.config import RunConfig, from_dict, load_yaml
from loratune.rundir import MetricsReader, read_run_config
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.ui.form import build_form, form_values, read_form
from loratune.workspace import Workspace

REFRESH_S = 2.0
CURVE_POINTS = 2000  # the training loss curve is thinned to at most this many points (+ the last), however long


@dataclass
class TrainTab:
    form: dict[str, gr.components.Component]
    job: gr.Dropdown


def build(ws: Workspace) -> TrainTab:
    gr.Markdown(
        "Every option of `loratune train`, with its default. The job runs in the background as "
        "`python -m loratune.cli train --config ...`: closing or reloading this page does not stop it."
    )
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(RunConfig, skip=("train.resume",))
        with gr.Column(scale=4):
            with gr.Row():
                job = gr.Dropdown(
                    run_names(ws), value=None, label="Job", info="choosing one loads its options", scale=3
                )
                refresh = gr.Button("↻", scale=0, min_width=40)
            with gr.Row():
                start = gr.Button("Start training", variant="primary")
                stop = gr.Button("Stop (saves a checkpoint)", variant="stop")
                resume = gr.Button("Resume")
            status = gr.Markdown("No job yet.", elem_id="job-status")
            curve = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260, elem_id="loss-curve")
            log = gr.Textbox(label="Job output (end)", lines=8, max_lines=8, autoscroll=True, elem_id="job-log")

    names_in_form = list(form)
    view = [status, curve, log]

    @shows_errors
    def on_start(*values):
        config = read_form(RunConfig, names_in_form, list(values))
        # Options naming files: only what the browser may name (models/, datasets/, loras/, offered formats).
        config.model.source = names.model_source(ws, config.model.source)
        config.data.path = names.data_path(ws, config.data.path)
        config.data.format = names.data_format(ws, config.data.format)
        if config.data.eval_path:
            config.data.eval_path = names.data_path(ws, config.data.eval_path)
        if config.adapter.copy_from:
            adapters.get_adapter(config.adapter.copy_from, ws)  # a name in loras/, not a folder elsewhere
        from loratune.data.build import run_name

        config.name = config.name or run_name(config.data.path)  # as `loratune train` names it
        try:
            jobs.start(ws, config)
        except jobs.NameTaken as taken:
            # One message, and the run that holds the name is chosen under Job: its record shows, untouched,
            # and Resume acts on it.
            gr.Warning(str(taken))
            choices = run_names(ws)
            if config.name not in choices:
                return gr.update(choices=choices), gr.update(), gr.update(), gr.update()
        return gr.update(choices=run_names(ws), value=config.name), *job_view(ws, config.name)

    @shows_errors
    def on_stop(name):
        jobs.stop(ws, _chosen(name))
        return job_view(ws, name)

    @shows_errors
    def on_resume(name):
        jobs.start(ws, name=_chosen(name), resume=True)
        return job_view(ws, name)

    start.click(on_start, inputs=list(form.values()), outputs=[job, *view])
    stop.click(on_stop, inputs=job, outputs=view)
    resume.click(on_resume, inputs=job, outputs=view)

    @shows_errors
    def on_choose(name):
        """A job chosen by hand: its options fill the form (e.g. to start a variant of it)."""
        saved = saved_config(ws, name)
        if saved is None:
            return [gr.update() for _ in form]
        values = form_values(RunConfig, saved)
        values["model.source"] = names.model_choice(ws, values["model.source"])
        values["data.path"] = names.dataset_choice(ws, values["data.path"])
        if values["data.eval_path"]:
            values["data.eval_path"] = names.dataset_choice(ws, values["data.eval_path"])
        return [values[n] for n in names_in_form]

    show = shows_errors(lambda name: job_view(ws, name))
    job.change(show, inputs=job, outputs=view)
    job.input(on_choose, inputs=job, outputs=list(form.values()))
    refresh.click(lambda: gr.update(choices=run_names(ws)), outputs=job)
    gr.Timer(REFRESH_S).tick(show, inputs=job, outputs=view)
    return TrainTab(form=form, job=job)


def reattach(ws: Workspace):
    """On page load: show the running job (or else the newest one), with its whole history."""
    found = jobs.job_names(ws)
    active = [n for n in found if (s := jobs.status(ws, n)) is not None and s.active]
    return gr.update(choices=run_names(ws), value=(active or found or [None])[0])


def run_names(ws: Workspace) -> list[str]:
    """Jobs started here (newest first), then the other runs in loras/ (e.g. from the CLI), which can be resumed."""
    started = jobs.job_names(ws)
    return started + [a.name for a in adapters.list_adapters(ws) if a.name not in started]


def saved_config(ws: Workspace, name: str) -> RunConfig | None:
    """The run's resolved loratune.yaml, else the config the UI wrote for a job that has not got that far."""
    saved = read_run_config(ws.lora_dir(name))
    if saved is None and (jobs.job_dir(ws, name) / jobs.JOB_CONFIG).is_file():
        saved = load_yaml(jobs.job_dir(ws, name) / jobs.JOB_CONFIG)
    return None if saved is None else from_dict(RunConfig, saved)


def job_view(ws: Workspace, name: str | None):
    if not name:
        return "No job yet.", None, ""
    state = jobs.status(ws, name)
    rows = metrics_rows(ws.lora_dir(name))
    heading = f"### `{name}`: {state.state}" if state else f"### `{name}`"
    if state and state.exit_code is not None:
        heading += f" (exit code {state.exit_code})"
    lines = [heading]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]  # evaluation rows sit beside the training rows
    if train_rows:
        last = train_rows[-1]
        lines.append(
            f"**step {last['step']}** · epoch {last.get('epoch', 0):.2f} · loss **{last['loss']:.4f}** · "
            f"lr {last.get('lr', 0):.2e} · {last.get('tokens_per_s', 0):,.0f} tokens/s · "
            f"ETA {_duration(last.get('eta_s', 0)) if state and state.active else '-'}"
        )
    elif state and state.active:
        lines.append("loading the model and the data ...")
    if eval_rows:
        best = min(eval_rows, key=lambda r: r["eval_loss"])
        lines.append(
            f"eval loss {eval_rows[-1]['eval_loss']:.4f} at step {eval_rows[-1]['step']} "
            f"(best {best['eval_loss']:.4f} at step {best['step']})"
        )
    return "\n\n".join(lines), loss_curve(train_rows, eval_rows), jobs.log_tail(ws, name)


# One reader for the UI process: each refresh reads only what was appended to metrics.jsonl since the last one.
metrics_rows = MetricsReader().rows


def loss_curve(train_rows: list[dict], eval_rows: list[dict]) -> pd.DataFrame | None:
    """Training loss (thinned to CURVE_POINTS, the last point kept) and evaluation loss, as one long table."""
    if not train_rows:
        return None
    shown = train_rows[:: -(-len(train_rows) // CURVE_POINTS)]
    if shown[-1] is not train_rows[-1]:
        shown.append(train_rows[-1])
    points = [(r["step"], r["loss"], "train") for r in shown] + [(r["step"], r["eval_loss"], "eval") for r in eval_rows]
    return pd.DataFrame(points, columns=["step", "loss", "series"])


def _chosen(name: str | None) -> str:
    if not name:
        raise gr.Error("choose a job first")
    return name


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
