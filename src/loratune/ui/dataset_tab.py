"""Dataset tab: pick or upload a data file, choose its format and cutoff, and see what training will make of it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from loratune.config import DataSpec
from loratune.data import build_samples
from loratune.errors import LoratuneError
from loratune.models import resolve_model_path
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.workspace import Workspace

HISTOGRAM_BINS = 10


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
        )
    summary = gr.Markdown(elem_id="data-summary")
    lengths = gr.BarPlot(x="tokens", y="samples", color="vs cutoff", title="Sample lengths", height=220)

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
        tokenizer = load_tokenizer(ws, names.model_source(ws, model))
        samples, report = build_samples(spec, tokenizer, ws)
        text = [
            f"**{report.kind}** data: {report.records} records → **{report.samples} samples**, "
            f"{report.tokens:,} tokens ({report.trained_tokens:,} trained)",
            f"dropped: {report.too_long} longer than the cutoff, {report.nothing_to_train} with nothing to train",
        ]
        bins = length_histogram([len(s.input_ids) for s in samples], spec.cutoff)
        return "\n\n".join(text), gr.BarPlot(bins, sort=list(bins["tokens"]))  # bins in length order

    upload.upload(on_upload, inputs=upload, outputs=choice)
    refresh.click(lambda: gr.update(choices=names.dataset_choices(ws)), outputs=choice)

    def connect(model_source: gr.components.Component) -> None:
        check.click(on_check, inputs=[choice, fmt, cutoff, model_source], outputs=[summary, lengths])

    return DatasetTab(choice=choice, format=fmt, cutoff=cutoff, connect=connect)


def length_histogram(lengths: list[int], cutoff: int) -> pd.DataFrame:
    width = max(1, -(-cutoff // HISTOGRAM_BINS))
    rows = []
    for low in range(0, max([cutoff, *lengths]), width):
        count = sum(low < n <= low + width for n in lengths)
        rows.append({"tokens": f"{low + 1}-{low + width}", "samples": count, "vs cutoff": _side(low, cutoff)})
    return pd.DataFrame(rows)


def _side(low: int, cutoff: int) -> str:
    return "within cutoff" if low < cutoff else "over cutoff"


_tokenizers: dict[str, object] = {}


def load_tokenizer(ws: Workspace, source: str):
    """The chosen model's tokenizer (loaded once), pad token set as training sets it."""
    from transformers import AutoTokenizer

    path = resolve_model_path(source, ws)
    if str(path) not in _tokenizers:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise LoratuneError(f"{path}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        _tokenizers[str(path)] = tokenizer
    return _tokenizers[str(path)]
