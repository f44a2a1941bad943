"""Generate text with a base model, optionally with LoRAs (adapter folders or checkpoints) on top: several adapters
of the same base share one loaded copy of it (peft multi-adapter), switched per answer with `use`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.config import GenerateSpec
from loratune.errors import LoratuneError
from loratune.models import load_base, resolve_model_path
from loratune.models.checks import load_adapter
from loratune.prompting import (
    PromptContract,
    cut_at_stop,
    load_contract,
    model_contract,
    render_chat,
    render_completion,
    render_prompt,
)
from loratune.sampling import Sampling, generate_kwargs
from loratune.workspace import Workspace


class Generator:
    """A loaded base model (+ optional adapter) that answers prompts; `use_lora=False` answers as the base model.

    Prompts are built by the adapter's prompt contract (`self.contract`, from its prompt.json): the chat template,
    format file or bare text it was trained with, and generation stops at the tokens it was trained to end with.
    """

    def __init__(
        self,
        model: str | None = None,
        lora: str | None = None,
        home: str | Path | None = None,
        trust_remote_code: bool = False,
    ):
        self.ws = ws = Workspace.resolve(home)
        self.lora_path = adapter_path(lora, ws, folders=True) if lora else None
        if model is None:
            model = str(base_model_path(self.lora_path, ws, trust_remote_code)) if self.lora_path else "default"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_path = resolve_model_path(model, ws, trust_remote_code)
        self.model, self.tokenizer = load_base(self.model_path, device, trust_remote_code)
        self.model.eval()
        self.base_contract = model_contract(self.tokenizer, self.model_path)
        self.contract = self.base_contract
        self._loaded: dict[Path, tuple[str, PromptContract]] = {}  # adapter folder -> (peft name, its contract)
        if self.lora_path is not None:
            self.use(self.lora_path)

    def use(self, lora: str | Path | None) -> None:
        """Answer with this adapter from now on (None: the base model alone). An adapter not loaded yet is loaded
        beside the others on the same base model: a few MB each, not another copy of the model."""
        if lora is None:
            self.lora_path, self.contract = None, self.base_contract
            return
        path = lora if isinstance(lora, Path) else adapter_path(lora, self.ws)
        if path not in self._loaded:
            # peft's own name for the first (as PeftModel.from_pretrained names it); names are module keys: no dots
            name = f"lora{len(self._loaded)}" if self._loaded else "default"
            # an adapter of another model's shape: one line
            self.model = load_adapter(self.model, path, adapter_name=name).eval()
            self._loaded[path] = (name, load_contract(path, self.tokenizer, self.ws))
        name, self.contract = self._loaded[path]
        self.model.set_adapter(name)
        self.lora_path = path

    @property
    def raw_text_lora(self) -> bool:
        return self.lora_path is not None and self.contract.kind == "raw"

    def prompt_ids(self, prompt: str, spec: GenerateSpec | None = None) -> list[int]:
        """The token ids sent for `prompt`: through the contract, or bare with `spec.chat` False."""
        spec = spec or GenerateSpec()
        contract = self._contract(spec)
        if spec.chat is False:
            if spec.system:
                raise LoratuneError("a system prompt needs the chat template or format (drop --no-chat or --system)")
            return render_completion(contract, self.tokenizer, prompt)
        return render_prompt(contract, self.tokenizer, prompt, spec.system or None)

    def chat_ids(self, messages: list[dict], spec: GenerateSpec | None = None) -> list[int]:
        """A conversation (ending with a user turn) as prompt ids; `spec.system` is put first when it has none."""
        spec = spec or GenerateSpec()
        if spec.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": spec.system}, *messages]
        return render_chat(self._contract(spec), self.tokenizer, messages)

    def _contract(self, spec: GenerateSpec) -> PromptContract:
        if spec.chat is True and self.contract.kind != "chat":  # asked for the model's chat template explicitly
            if not getattr(self.tokenizer, "chat_template", None):
                raise LoratuneError("chat is on but this model has no chat template; leave chat on auto")
            return model_contract(self.tokenizer)
        return self.contract

    def complete(self, prompt: str, spec: GenerateSpec | None = None, use_lora: bool = True) -> str:
        return self.complete_all([prompt], spec, use_lora)[0]

    @torch.no_grad()
    def complete_all(
        self, prompts: list[str], spec: GenerateSpec | None = None, use_lora: bool = True, batch_size: int = 16
    ) -> list[str]:
        """One answer per prompt, in order; prompts of similar length are generated together, left-padded."""
        spec = spec or GenerateSpec()
        return self.answer_ids([self.prompt_ids(p, spec) for p in prompts], spec, use_lora, batch_size)

    @torch.no_grad()
    def answer_ids(
        self, encoded: list[list[int]], spec: GenerateSpec, use_lora: bool = True, batch_size: int = 16
    ) -> list[str]:
        tok = self.tokenizer
        options = self._options(spec)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        answers = [""] * len(encoded)
        with self._adapter(use_lora):
            for first in range(0, len(order), batch_size):
                chunk = order[first : first + batch_size]
                inputs = left_padded([encoded[i] for i in chunk], tok.pad_token_id, self.model.device)
                out = self.model.generate(**inputs, **options)
                new_tokens = out[:, inputs["input_ids"].shape[1] :]
                for i, row in zip(chunk, new_tokens, strict=True):
                    answers[i] = cut_at_stop(tok.decode(row, skip_special_tokens=True), self.contract).strip()
        return answers

    def stream(self, ids: list[int], spec: GenerateSpec | None = None, use_lora: bool = True) -> Iterator[str]:
        """The answer to prompt ids as text pieces, as they are generated (transformers' TextIteratorStreamer)."""
        from transformers import TextIteratorStreamer

        spec = spec or GenerateSpec()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        inputs = left_padded([ids], self.tokenizer.pad_token_id, self.model.device)
        failed: list[BaseException] = []

        def run() -> None:  # generate() in a thread feeds the streamer; an error is re-raised below
            try:
                with torch.no_grad(), self._adapter(use_lora):
                    self.model.generate(**inputs, **self._options(spec), streamer=streamer)
            except BaseException as e:
                failed.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text, sent = "", 0
        hold = max((len(s) for s in self.contract.stop), default=1) - 1  # a stop text may arrive in pieces
        for piece in streamer:
            text += piece
            cut = cut_at_stop(text, self.contract)
            if len(cut) < len(text):
                text = cut
                break
            if len(text) - hold > sent:
                yield text[sent : len(text) - hold]
                sent = len(text) - hold
        worker.join()
        if failed:
            raise failed[0]
        if len(text) > sent:
            yield text[sent:]

    def _options(self, spec: GenerateSpec) -> dict:
        spec.validate()  # a spec built in Python (generate(**options)) is checked as the CLI's and the UI's are
        sampling = Sampling.of(spec)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        return generate_kwargs(sampling, self.contract, self.tokenizer)

    def _adapter(self, use_lora: bool):
        with_adapters = bool(self._loaded)  # a PeftModel: its adapters are switched off for a base answer
        return self.model.disable_adapter() if with_adapters and not (self.lora_path and use_lora) else nullcontext()


def left_padded(rows: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask for rows of token ids, padded on the left so every row ends where generation
    starts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[n, width - len(row) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def generate(
    prompt: str, model: str | None = None, lora: str | None = None, home: str | Path | None = None, **options
) -> str:
    """One completion (loads the model each call; keep a `Generator` for many prompts)."""
    return Generator(model, lora, home).complete(prompt, GenerateSpec(**options))
