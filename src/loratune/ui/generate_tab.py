"""Generate tab: a multi-turn chat, streamed token by token, with the base model and any number of LoRAs (or
checkpoints) side by side; in compare mode each message goes to every column, else to the one chosen.

All LoRAs of one base model share a single loaded copy of it (peft multi-adapter, `Generator.use` switches adapters
per answer). Each turn is rendered by the column's prompt contract (its chat template or format file), the code path
of `loratune chat`; a LoRA trained on raw text continues the message instead. The base column gets the first LoRA's
prompt with its adapter switched off, so the columns differ only by the adapter.
"""

from __future__ import annotations

import html
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import gradio as gr

from loratune.adapters import adapter_path
from loratune.config import GenerateSpec, field_help
from loratune.ui import names
from loratune.ui.feedback import shows_errors
from loratune.ui.form import build_form, read_form
from loratune.ui.loras_tab import lora_choices
from loratune.workspace import Workspace

LORA_BASE = "(the LoRA's base model)"
BASE = "base model"  # the column of the base model alone
KEEP_LOADED = 2  # base models kept in memory (each with all its adapters) between messages
REDRAW_S = 0.05  # streamed pieces are sent to the browser at most this often (the last one always)


@dataclass
class GenerateTab:
    loras: gr.Dropdown
    reload: object
    """(chosen LoRAs, base model) -> fresh choices for the reload outputs, keeping what is still there; the base
    model starts loading in the background."""
    reload_inputs: list
    reload_outputs: list


class LoadedModels:
    """One Generator per base model (all its adapters loaded on it), the least recently used dropped first."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.cache: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, model_source: str | None, lora: str | None, switch: bool = True):
        """The Generator answering as `lora` (a choice in loras/; None: the base model alone) on `model_source`
        (None: the base model the LoRA was trained on). `switch` False only loads the base model."""
        from loratune.adapters.catalog import base_model_path
        from loratune.generator import Generator
        from loratune.models import resolve_model_path

        path = adapter_path(lora, self.ws) if lora else None
        if model_source is None and path is not None:
            base = str(base_model_path(path, self.ws))
        else:
            base = str(resolve_model_path(model_source or "default", self.ws))
        with self.lock:
            if base not in self.cache:
                while len(self.cache) >= KEEP_LOADED:
                    self.cache.popitem(last=False)
                self.cache[base] = Generator(base, None, self.ws.home)
            self.cache.move_to_end(base)
            generator = self.cache[base]
            if switch:
                generator.use(path)
            return generator

    def warm(self, model_choice: str, chosen: list[str] | None) -> None:
        """Load the base model in the background when the tab opens, so the first message does not wait for it."""

        def load():
            try:
                source = None if model_choice == LORA_BASE else names.model_source(self.ws, model_choice)
                self.get(source, (chosen or [None])[0], switch=False)
            except Exception:  # only a head start: sending a message loads again and reports the problem
                pass

        threading.Thread(target=load, daemon=True).start()


@dataclass
class Chat:
    """The conversation: each turn is the user's message and each column's answer to it."""

    turns: list[dict] = field(default_factory=list)  # {"user": text, "answers": {column: text}}
    titles: dict[str, str] = field(default_factory=dict)

    def history(self, column: str) -> list[dict]:
        """The messages `column` has seen: the turns it answered, then the newest message."""
        messages = []
        for turn in self.turns[:-1]:
            if column in turn["answers"]:
                messages += [{"role": "user", "content": turn["user"]}]
                messages += [{"role": "assistant", "content": turn["answers"][column]}]
        return [*messages, {"role": "user", "content": self.turns[-1]["user"]}]


def build(ws: Workspace) -> GenerateTab:
    loaded = LoadedModels(ws)
    with gr.Row():
        loras = gr.Dropdown(
            lora_choices(ws),
            multiselect=True,
            label="LoRAs",
            info="adapters and checkpoints in loras/; each is a column",
            scale=4,
            elem_id="generate-loras",
        )
        refresh = gr.Button("↻", scale=0, min_width=40)
        model = gr.Dropdown(
            [LORA_BASE, *names.model_choices(ws)], value=LORA_BASE, label="Base model", info="models/ folders", scale=2
        )
    with gr.Row():
        with_base = gr.Checkbox(True, label="Also answer with the base model alone")
        compare = gr.Checkbox(True, label="Compare: every column answers each message", elem_id="compare")
        target = gr.Dropdown([BASE], value=BASE, label="Otherwise, answer with", elem_id="answer-with")
    answers = gr.HTML(side_by_side(Chat(), []), elem_id="answers")
    with gr.Row():
        prompt = gr.Textbox(label="Message", lines=2, scale=6, elem_id="prompt", placeholder="Enter sends")
        with gr.Column(scale=1, min_width=120):
            send = gr.Button("Send", variant="primary")
            clear = gr.Button("New conversation")
    with gr.Accordion("Sampling options", open=False, elem_id="sampling"):
        every_option = tuple(name for name, _, _ in field_help(GenerateSpec))
        form = build_form(GenerateSpec, essentials=every_option, per_row=4)
    chat_state = gr.State(Chat())

    @shows_errors
    def on_send(chosen, model_choice, base_too, every, only, text, chat, *values):
        if not text or not text.strip():
            raise gr.Error("write a message first")
        spec = read_form(GenerateSpec, list(form), list(values))
        chosen = list(chosen or [])
        model_source = None if model_choice == LORA_BASE else names.model_source(ws, model_choice)
        shown = columns(chosen, base_too)
        answering = shown if every else [only if only in shown else shown[0]]
        chat = Chat([*chat.turns, {"user": text.strip(), "answers": {}}], dict(chat.titles))
        for column in answering:
            lora = None if column == BASE else column
            generator = loaded.get(model_source, lora if lora else (chosen[0] if chosen else None))
            raw = spec.chat is False or generator.contract.kind == "raw"
            how = "continues the text" if raw else generator.contract.describe()
            chat.titles[column] = f"{column} · {how}"
            if raw:  # trained on raw text (or chat off): a continuation of the message, no conversation
                ids = generator.prompt_ids(text.strip(), spec)
            else:
                ids = generator.chat_ids(chat.history(column), spec)
            chat.turns[-1]["answers"][column] = ""
            sent = 0.0
            for piece in generator.stream(ids, spec, use_lora=lora is not None):
                chat.turns[-1]["answers"][column] += piece
                if time.monotonic() - sent >= REDRAW_S:
                    sent = time.monotonic()
                    yield side_by_side(chat, shown), chat, ""
            chat.turns[-1]["answers"][column] = chat.turns[-1]["answers"][column].strip()
        yield side_by_side(chat, shown), chat, ""

    inputs = [loras, model, with_base, compare, target, prompt, chat_state, *form.values()]
    outputs = [answers, chat_state, prompt]
    # One answer at a time, however it is sent: the columns share one model, switched between adapters.
    gr.on(
        [send.click, prompt.submit],
        on_send,
        inputs=inputs,
        outputs=outputs,
        show_progress="minimal",
        concurrency_id="chat",
        concurrency_limit=1,
    )
    clear.click(lambda: (side_by_side(Chat(), []), Chat()), outputs=[answers, chat_state], queue=False)

    def on_columns(chosen, base_too, only):
        shown = columns(list(chosen or []), base_too)
        return gr.update(choices=shown, value=only if only in shown else shown[-1])

    for trigger in (loras.change, with_base.change):
        trigger(on_columns, inputs=[loras, with_base, target], outputs=target, queue=False)

    def reload(chosen, model_choice):
        loaded.warm(model_choice, chosen)
        available = lora_choices(ws)
        kept = [c for c in chosen or [] if c in available]
        return gr.update(choices=available, value=kept), gr.update(choices=[LORA_BASE, *names.model_choices(ws)])

    refresh.click(reload, inputs=[loras, model], outputs=[loras, model])
    return GenerateTab(loras=loras, reload=reload, reload_inputs=[loras, model], reload_outputs=[loras, model])


def columns(chosen: list[str], base_too: bool) -> list[str]:
    """The columns shown: the base model (when asked for, or when no LoRA is chosen), then each LoRA."""
    return ([BASE] if base_too or not chosen else []) + chosen


def side_by_side(chat: Chat, shown: list[str]) -> str:
    """Each column's conversation in a card, side by side: the user's messages and that column's answers."""
    cards = []
    for column in shown:
        turns = [t for t in chat.turns if column in t["answers"]]
        if not turns:
            continue
        body = "".join(
            f'<div class="chat-turn"><div class="chat-user">{html.escape(t["user"])}</div>'
            f'<pre class="answer-text">{html.escape(t["answers"][column]) or "<i>…</i>"}</pre></div>'
            for t in turns
        )
        title = html.escape(chat.titles.get(column, column))
        cards.append(f'<div class="answer"><div class="answer-title">{title}</div>{body}</div>')
    if not cards:
        return '<div class="answers"><i>Choose LoRAs (or none: the base model) and send a message.</i></div>'
    return f'<div class="answers">{"".join(cards)}</div>'
