"""Generate text with a base model, optionally with a LoRA (any adapter folder or checkpoint) on top."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from loratune.config import GenerateSpec
from loratune.data.build import is_raw_text
from loratune.errors import LoratuneError
from loratune.models import load_base, resolve_model_path
from loratune.models.checks import check_adapter_folder, load_adapter
from loratune.workspace import Workspace, inside


class Generator:
    """A loaded base model (+ optional adapter) that answers prompts; `use_lora=False` answers as the base model."""

    def __init__(
        self,
        model: str | None = None,
        lora: str | None = None,
        home: str | Path | None = None,
        trust_remote_code: bool = False,
    ):
        ws = Workspace.resolve(home)
        self.lora_path = resolve_lora(lora, ws) if lora else None
        if model is None:
            model = base_of(self.lora_path) if self.lora_path else "default"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        base, self.tokenizer = load_base(resolve_model_path(model, ws, trust_remote_code), device, trust_remote_code)
        if self.lora_path is not None:
            base = load_adapter(base, self.lora_path)  # an adapter of another model's shape: one line
        self.model = base.eval()
        self.raw_text_lora = self.lora_path is not None and trained_on_raw_text(self.lora_path)

    def complete(self, prompt: str, spec: GenerateSpec | None = None, use_lora: bool = True) -> str:
        return self.complete_all([prompt], spec, use_lora)[0]

    @torch.no_grad()
    def complete_all(
        self, prompts: list[str], spec: GenerateSpec | None = None, use_lora: bool = True, batch_size: int = 16
    ) -> list[str]:
        """One answer per prompt, in order; prompts of similar length are generated together, left-padded."""
        spec = spec or GenerateSpec()
        tok = self.tokenizer
        chat = spec.chat if spec.chat is not None else not self.raw_text_lora
        if chat and getattr(tok, "chat_template", None):
            texts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
            encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        else:
            encoded = [tok(p)["input_ids"] for p in prompts]
        sampling = (
            {"do_sample": True, "temperature": spec.temperature, "top_p": spec.top_p}
            if spec.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        answers = [""] * len(encoded)
        adapter_off = self.model.disable_adapter() if (self.lora_path and not use_lora) else nullcontext()
        with adapter_off:
            for first in range(0, len(order), batch_size):
                chunk = order[first : first + batch_size]
                inputs = left_padded([encoded[i] for i in chunk], tok.pad_token_id, self.model.device)
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=spec.max_new_tokens,
                    repetition_penalty=spec.repetition_penalty,
                    pad_token_id=tok.pad_token_id,
                    **sampling,
                )
                new_tokens = out[:, inputs["input_ids"].shape[1] :]
                for i, row in zip(chunk, new_tokens, strict=True):
                    answers[i] = tok.decode(row, skip_special_tokens=True).strip()
        return answers


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


def resolve_lora(lora: str, ws: Workspace) -> Path:
    """An adapter folder given as a path, or `name` / `name/checkpoint-000200` inside loras/."""
    path = Path(lora).expanduser()
    if not (path / "adapter_config.json").is_file():
        path = inside(ws.loras, lora)
    if not (path / "adapter_config.json").is_file():
        raise LoratuneError(f"no adapter at '{lora}' (looked for adapter_config.json as given and in {ws.loras})")
    check_adapter_folder(path)  # safetensors only: a pickled adapter_model.bin is never loaded
    return path


def trained_on_raw_text(adapter: Path) -> bool:
    """Did the run that made this adapter (or checkpoint) train on a raw text corpus? Then prompts are not chats."""
    for folder in (adapter, adapter.parent):
        if (folder / "loratune.yaml").is_file():
            saved = yaml.safe_load((folder / "loratune.yaml").read_text(encoding="utf-8")) or {}
            data_path = str(saved.get("data", {}).get("path", ""))  # absolute: train() saves it resolved
            return bool(data_path) and is_raw_text(Path(data_path))
    return False


def base_of(adapter: Path) -> str:
    """The base model an adapter was trained on, as recorded by peft."""
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise LoratuneError(f"{adapter}: its base model {base!r} is not on this machine; pass --model")
    return base
