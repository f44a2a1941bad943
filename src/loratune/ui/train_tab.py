"""Train tab: the options set every time up front, the rest folded by section (all generated from the config
dataclasses), the equivalent `loratune train` line, start / stop / resume a background job, and its live progress
read from the run folder, so a reloaded page or a restarted UI shows the same job, its options and its history."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from loratune import adapters, jobs
from loratune.config import RunConfig, from_dict, load_yaml
from loratune.errors import LoratuneError
from loratune.rundir import read_run_config
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.ui.form import build_form, form_values, read_form
from loratune.ui.train_view import command_line, job_view
from loratune.workspace import Workspace

REFRESH_S = 2.0
# What people set on every run (text-generation-webui's and LlamaBoard's first rows), in reading order.
ESSENTIALS = (
    "name",
    "model.source",
    "data.path",
    "data.format",
    "data.cutoff",
    "train.epochs",
    "train.max_steps",
    "train.lr",
    "train.batch_size",
    "train.micro_batch",
    "adapter.rank",
    "adapter.alpha",
    "adapter.targets",
    "train.save_every",
    "data.eval_split",
)


@dataclass
class TrainTab:
    form: dict[str, gr.components.Component]
    job: gr.Dropdown
    command: gr.Textbox
    preview: object
    """(*form values) -> the command line shown."""


def build(ws: Workspace) -> TrainTab:
    gr.Markdown(
        "The options set on every run; the others are folded below, each with its default. `data.path` takes "
        "several files separated by commas. The job runs in the background as `loratune train`: closing or "
        "reloading this page does not stop it."
    )
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(RunConfig, skip=("train.resume",), essentials=ESSENTIALS, per_row=4)
        with gr.Column(scale=2):
            with gr.Row():
                job = gr.Dropdown(
                    run_names(ws), value=None, label="Job", info="the job shown below", scale=3, elem_id="job-choice"
                )
                refresh = gr.Button("↻", scale=0, min_width=40)
            with gr.Row():
                start = gr.Button("Start training", variant="primary")
                stop = gr.Button("Stop (saves a checkpoint)", variant="stop")
                resume = gr.Button("Resume")
            load = gr.Button("Load options from this run", size="sm")
            command = gr.Textbox(
                label="The same run from a terminal", interactive=False, buttons=["copy"], elem_id="command-preview"
            )
            status = gr.Markdown("No job yet.", elem_id="job-status")
            bar = gr.HTML(elem_id="job-progress")
            log = gr.Textbox(label="Job output (end)", lines=10, max_lines=10, autoscroll=True, elem_id="job-log")
            curve = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260, elem_id="loss-curve")

    names_in_form = list(form)
    view = [status, bar, curve, log]

    def config_of(values) -> RunConfig:
        """The form as a RunConfig; a comma-separated data.path is a list of files (mixed, as in a YAML list)."""
        given = dict(zip(names_in_form, values, strict=True))
        paths = [p.strip() for p in str(given["data.path"] or "").split(",") if p.strip()]
        given["data.path"] = ""
        config = read_form(RunConfig, names_in_form, list(given.values()))
        config.data.path = paths[0] if len(paths) == 1 else paths
        return config

    def preview(*values):
        try:
            config = config_of(values)
        except (LoratuneError, ValueError, TypeError) as e:
            return f"(not a valid run yet: {e})"
        return command_line(config, str(ws.home))

    @shows_errors
    def on_start(*values):
        config = config_of(values)
        if not config.data.path:
            raise LoratuneError("choose a dataset (Dataset tab) first")
        # Options naming files: only what the browser may name (models/, datasets/, loras/, offered formats).
        config.model.source = names.model_source(ws, config.model.source)
        given = config.data.path if isinstance(config.data.path, list) else [config.data.path]
        paths = [names.data_path(ws, p) for p in given]
        config.data.path = paths if len(paths) > 1 else paths[0]
        config.data.format = names.data_format(ws, config.data.format)
        if config.data.eval_path:
            config.data.eval_path = names.data_path(ws, config.data.eval_path)
        if config.adapter.copy_from:
            adapters.get_adapter(config.adapter.copy_from, ws)  # a name in loras/, not a folder elsewhere
        if config.adapter.init_from:  # a LoRA or checkpoint in loras/, given to the job as its folder there
            config.adapter.init_from = str(adapters.adapter_path(config.adapter.init_from, ws))
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
                return gr.update(choices=choices), *(gr.update() for _ in view)
        return gr.update(choices=run_names(ws), value=config.name), *job_view(ws, config.name).outputs()

    @shows_errors
    def on_stop(name):
        jobs.stop(ws, _chosen(name))
        return job_view(ws, name).outputs()

    @shows_errors
    def on_resume(name):
        jobs.start(ws, name=_chosen(name), resume=True)
        return job_view(ws, name).outputs()

    start.click(on_start, inputs=list(form.values()), outputs=[job, *view])
    stop.click(on_stop, inputs=job, outputs=view)
    resume.click(on_resume, inputs=job, outputs=view)

    @shows_errors
    def on_load(name):
        """A run's options fill the form (e.g. to start a variant of it)."""
        return form_of(ws, _chosen(name), names_in_form)

    show = shows_errors(lambda name: job_view(ws, name).outputs())
    job.change(show, inputs=job, outputs=view, show_progress="hidden")
    load.click(on_load, inputs=job, outputs=list(form.values()))
    refresh.click(lambda: gr.update(choices=run_names(ws)), outputs=job)
    gr.on(
        [c.change for c in form.values()],
        preview,
        inputs=list(form.values()),
        outputs=command,
        trigger_mode="always_last",  # a burst of changes (Load options fills ~45 inputs): the last one is shown
        concurrency_limit=None,  # pure Python, instant: never waits for another preview
        show_progress="hidden",
    )
    gr.Timer(REFRESH_S).tick(show, inputs=job, outputs=view, show_progress="hidden")
    return TrainTab(form=form, job=job, command=command, preview=preview)


def form_of(ws: Workspace, name: str, names_in_form: list[str]) -> list:
    """What each input of the form shows for run `name`'s saved options (unchanged where it has none)."""
    saved = saved_config(ws, name)
    if saved is None:
        return [gr.update() for _ in names_in_form]
    values = form_values(RunConfig, saved)
    values["model.source"] = names.model_choice(ws, values["model.source"])
    paths = saved.data.path if isinstance(saved.data.path, list) else [saved.data.path]
    values["data.path"] = ", ".join(names.dataset_choice(ws, p) for p in paths)
    if values["data.eval_path"]:
        values["data.eval_path"] = names.dataset_choice(ws, values["data.eval_path"])
    return [values[n] for n in names_in_form]


def reattach(ws: Workspace, names_in_form: list[str]) -> list:
    """On page load: the running job (or else the newest one) with its whole history, and while one runs, the form
    shows its options, so a reload loses nothing."""
    found = jobs.job_names(ws)
    active = [n for n in found if (s := jobs.status(ws, n)) is not None and s.active]
    chosen = gr.update(choices=run_names(ws), value=(active or found or [None])[0])
    form = form_of(ws, active[0], names_in_form) if active else [gr.update() for _ in names_in_form]
    return [chosen, *form]


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


def _chosen(name: str | None) -> str:
    if not name:
        raise gr.Error("choose a job first")
    return name
