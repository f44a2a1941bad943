"""Checks on model and adapter folders before transformers / peft read them, so a broken folder is one line, not a
traceback: generate, serve, merge, train and the data check all load through these.

Only headers and small JSON files are read here (never tensor data), so the checks cost milliseconds.
"""

from __future__ import annotations

import json
import logging
import struct
from contextlib import contextmanager
from pathlib import Path

from loratune.errors import LoratuneError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
MAX_CONFIG = 10 * 1024 * 1024  # a config.json is a few kB; anything this big is not one


def read_json_file(path: Path, what: str) -> dict:
    """A small JSON object file (config.json, adapter_config.json) or one line saying what is wrong with it."""
    if path.stat().st_size > MAX_CONFIG:
        raise LoratuneError(f"{path}: {path.stat().st_size:,} bytes is too big for a {what}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise LoratuneError(f"{path}: not UTF-8 text, so not a {what}; restore the file") from None
    except json.JSONDecodeError as e:
        raise LoratuneError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise LoratuneError(f"{path}: JSON nested too deeply to be a {what}") from None
    if not isinstance(data, dict):
        raise LoratuneError(f"{path}: expected a JSON object, so not a {what}")
    return data


def check_safetensors(file: Path) -> dict:
    """The file's tensor table (name -> {dtype, shape, data_offsets}); a truncated or garbage file is refused."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 2 or length > min(MAX_HEADER, size - 8):
            raise LoratuneError(f"{file}: not a safetensors file (bad header); the file is damaged: download it again")
        raw = f.read(length)
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise LoratuneError(f"{file}: not a safetensors file (its header is not JSON); download it again") from None
    if not isinstance(table, dict):
        raise LoratuneError(f"{file}: not a safetensors file (bad header); download it again")
    table.pop("__metadata__", None)
    data = size - 8 - length
    for name, info in table.items():
        end = info.get("data_offsets", [0, 0])[1] if isinstance(info, dict) else None
        if not isinstance(end, int) or end > data:
            raise LoratuneError(
                f"{file}: truncated or damaged (tensor {name!r} ends past the end of the file, {size:,} bytes); "
                "download or save it again"
            )
    return table


def check_model_folder(path: Path) -> None:
    """A loadable transformers folder: a readable config.json of a known model type, safetensors weights that are
    whole, and a tokenizer. Pickled weights (pytorch_model.bin) are refused: unpickling can run any code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = read_json_file(path / "config.json", "model config")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise LoratuneError(f"{path / 'config.json'}: no 'model_type'; this is not a transformers model config")
    if model_type not in CONFIG_MAPPING and "auto_map" not in config:
        raise LoratuneError(
            f"{path / 'config.json'}: unknown model_type {model_type!r} (this transformers does not know it); "
            "fix config.json or upgrade transformers"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise LoratuneError(
                f"{path} holds only pickled weights ({', '.join(pickled[:3])}): refused to load a pickle weights file "
                "(unpickling could run code); loratune loads models from safetensors only: convert them once, or "
                "use a safetensors copy of the model"
            )
        raise LoratuneError(f"{path} has no weights (no *.safetensors file); download or copy the model again")
    for file in weights:
        check_safetensors(file)
    check_tokenizer_files(path)


def check_tokenizer_files(path: Path) -> None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise LoratuneError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the model's tokenizer files in"
        )


def check_chat_template(tokenizer, path: Path) -> None:
    """Render a two-turn chat once: a template that reaches for Python internals (template injection) is stopped by
    Jinja's sandbox with a SecurityError; say so in one line rather than at the first record or prompt."""
    from jinja2.exceptions import SecurityError

    if not getattr(tokenizer, "chat_template", None):
        return
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False)
    except SecurityError as e:
        raise LoratuneError(
            f"{path}: the chat template tries something Jinja's sandbox forbids ({first_line(e)}); "
            "it is refused: replace chat_template in the model folder with a trusted one"
        ) from None
    except Exception:
        pass  # or prompt that meets it says so; only a sandbox violation is refused here


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut at a word boundary, for a one-line message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def check_adapter_folder(path: Path) -> None:
    """One rule for adapters everywhere: adapter_config.json plus whole adapter_model.safetensors, never a pickle."""
    read_json_file(path / "adapter_config.json", "adapter config")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise LoratuneError(
            f"{path} has no adapter_model.safetensors; loratune loads adapter weights only from safetensors "
            "(a .bin file is a pickle that could run code): re-save the adapter with safetensors"
        )
    check_safetensors(weights)


def load_adapter(model, path: Path, adapter_name: str = "default"):
    """peft's PeftModel.from_pretrained (or load_adapter on a PeftModel), with an adapter trained on a model of
    another shape refused in one line instead of peft's state-dict traceback."""
    from peft import PeftModel

    check_adapter_folder(path)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(path, adapter_name=adapter_name)
            return model
        return PeftModel.from_pretrained(model, path, adapter_name=adapter_name)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), "")
        base = read_json_file(path / "adapter_config.json", "adapter config").get("base_model_name_or_path")
        raise LoratuneError(
            f"adapter {path} was trained on a model of another shape ({first.rstrip('.')}); "
            f"use it with the model it was trained on ({base or 'see its adapter_config.json'})"
        ) from None


@contextmanager
def quiet_size_mismatch_report():
    """transformers logs a long table of mismatched tensors before it raises; keep that table back when the load
    fails (our one line replaces it) and let it through unchanged when the load succeeds."""
    logger = logging.getLogger("transformers.utils.loading_report")
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record):
            held.append(record)

    handler, propagate = Hold(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    failed = False
    try:
        yield
    except RuntimeError:
        failed = True
        raise
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        if not failed:
            for record in held:
                logger.handle(record)
