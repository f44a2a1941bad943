"""Dataset tab: pick or upload a data file, choose its format and cutoff, and see what training will make of it."""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from loratune.config import DataSpec
from loratune.models.sources import load_tokenizer, resolve_model_path
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.workspace import Workspace

MASK_EXAMPLES = 3


@dataclass
class DatasetTab:
    choice: gr.Dropdown
    format: gr.Dropdown
    cutoff: gr.Number
    connect: object
    """connect(model_source): wire the check to the Train form's model.source, whose tokenizer it uses."""


def build(ws: Workspace, max_upload_mb: int) -> DatasetTab:
    gr.Markdown(
        "Raw text (`.txt` files, or a folder of them) or instruction records (`.json` / `.jsonl`) in `datasets/`. "
        "The choices here fill `data.*` in the Train tab."
    )
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                choice = gr.Dropdown(
                    names.dataset_choices(ws), value=None, label="Dataset", scale=3, elem_id="dataset-choice"
                )
                refresh = gr.Button("↻", scale=0, min_width=40)
            with gr.Row():
                fmt = gr.Dropdown(names.format_choices(ws), value=DataSpec.format, label="Format")
                cutoff = gr.Number(DataSpec.cutoff, precision=0, label="Cutoff (tokens)")
            check = gr.Button("Check data", variant="primary")
        upload = gr.File(
            label=f"Upload into datasets/ (.txt, .json, .jsonl; at most {max_upload_mb} MB)",
            file_types=list(names.DATA_SUFFIXES),
            scale=1,
            elem_id="dataset-upload",
        )
    summary = gr.Markdown(elem_id="data-summary")
    warnings = gr.HTML(elem_id="data-warnings")
    with gr.Row():
        masks = gr.HTML(elem_id="mask-view")
        lengths = gr.BarPlot(
            x="tokens", y="samples", color="vs cutoff", title="Sample lengths (tokens)", height=260, scale=1
        )

    @shows_errors
    def on_upload(file):
        if file is None:
            return gr.update()
        source = Path(file)
        if source.stat().st_size > max_upload_mb * 1024 * 1024:
            raise gr.Error(f"{source.name} is larger than {max_upload_mb} MB (start the UI with --max-upload-mb)")
        target = names.upload_target(ws, source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return gr.update(choices=names.dataset_choices(ws), value=target.name)

    @shows_errors
    def on_check(data_name, data_format, data_cutoff, model):
        spec = DataSpec(
            path=names.data_path(ws, data_name),
            format=names.data_format(ws, data_format),
            cutoff=int(data_cutoff or DataSpec.cutoff),
        )
        tokenizer = tokenizer_for(ws, names.model_source(ws, model))
        from loratune.data.preview import check_data  # torch: loaded on first use, not before the UI answers

        check = check_data(spec, tokenizer, ws, examples=MASK_EXAMPLES)
        bins = pd.DataFrame(
            [
                {"tokens": f"{b.low}-{b.high}", "samples": b.count, "vs cutoff": _side(b.over_cutoff)}
                for b in check.histogram
            ]
        )
        plot = gr.BarPlot(bins, sort=list(bins["tokens"])) if len(bins) else None  # bins in length order
        return summary_text(check), plot, warnings_html(check), mask_view(check)

    upload.upload(on_upload, inputs=upload, outputs=choice)
    refresh.click(lambda: gr.update(choices=names.dataset_choices(ws)), outputs=choice)

    def connect(model_source: gr.components.Component) -> None:
        check.click(on_check, inputs=[choice, fmt, cutoff, model_source], outputs=[summary, lengths, warnings, masks])

    return DatasetTab(choice=choice, format=fmt, cutoff=cutoff, connect=connect)


def summary_text(check) -> str:
    share = f"{100 * check.trained_tokens / check.tokens:.1f} %" if check.tokens else "-"
    lines = [
        f"**{check.kind or 'unreadable'}** data, cutoff {check.cutoff} tokens: {check.records} records → "
        f"**{check.samples} samples**, {check.tokens:,} tokens, {check.trained_tokens:,} trained ({share})",
        f"dropped {check.dropped} (too long {check.dropped_too_long}, nothing to train "
        f"{check.dropped_nothing_to_train}, too short {check.dropped_too_short}), cut {check.truncated}; "
        f"samples that train EOS: {check.samples_with_eos} of {check.samples}",
    ]
    if check.labels:  # kto data
        lines.append("labels: " + ", ".join(f"{label} {count}" for label, count in check.labels.items()))
    return "\n\n".join(lines)


def warnings_html(check) -> str:
    if not check.warnings:
        return '<div class="data-ok">No problems found.</div>'
    return "".join(
        f'<div class="{"data-problem" if w.problem else "data-warning"}">'
        f"<b>{'Problem' if w.problem else 'Warning'}:</b> {html.escape(w.message)}</div>"
        for w in check.warnings
    )


def mask_view(check) -> str:
    """A few samples as training sees them: trained tokens in green, masked ones (no loss) in grey."""
    if not check.examples:
        return ""
    legend = (
        '<div class="mask-legend"><span class="mask-trained">trained (the loss is taken here)</span> '
        '<span class="mask-masked">masked (prompt, template)</span></div>'
    )
    samples = "".join(
        '<div class="mask-sample">'
        + (f"<b>{label}:</b> " if label else "")
        + "".join(
            f'<span class="{"mask-trained" if trained else "mask-masked"}">{html.escape(text)}</span>'
            for text, trained in segments
        )
        + "</div>"
        for segments, label in zip(check.examples, check.example_labels, strict=True)
    )
    return legend + samples


def _side(over_cutoff: bool) -> str:
    return "over cutoff" if over_cutoff else "within cutoff"


_tokenizers: dict[str, object] = {}


def tokenizer_for(ws: Workspace, source: str):
    """The chosen model's tokenizer, loaded once per model."""
    path = resolve_model_path(source, ws)
    if str(path) not in _tokenizers:
        _tokenizers[str(path)] = load_tokenizer(path)
    return _tokenizers[str(path)]
