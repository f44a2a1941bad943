"""The model card (README.md) written into every adapter folder when training ends: what it is and how to load it."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from loratune.config import RunConfig
from loratune.rundir import read_retention

CARD = "README.md"


def write_card(run_dir: Path, config: RunConfig, steps: int, final_loss: float) -> Path:
    """Write `run_dir/README.md` (replaced atomically) from the run's config and the saved adapter_config.json."""
    peft = json.loads((run_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base_path = str(peft.get("base_model_name_or_path") or config.model.source)
    base_name = Path(base_path).name or base_path
    targets = peft.get("target_modules") or []
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
    name, a, t, d = config.name, config.adapter, config.train, config.data
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    text = f"""---
library_name: peft
base_model: {base_name}
tags: [lora, loratune]
---

# {name}

A LoRA adapter (PEFT format) for **{base_name}**, trained with loratune on {_today()}.

| | |
|---|---|
| base model | `{config.model.source}` (`{base_path}`) |
| data | `{d.path}` (format `{d.format}`, cutoff {d.cutoff} tokens) |
| LoRA | rank {a.rank}, alpha {a.alpha}, dropout {a.dropout}, on {targets} |
| training | {length}, {steps} optimizer steps, batch {t.batch_size} (micro-batch {t.micro_batch}), lr {t.lr:g} \
({t.scheduler}, warmup {t.warmup_ratio:g}), seed {t.seed} |
| final loss | {final_loss:.4f} |{_retention_row(run_dir)}

The complete configuration is in `loratune.yaml`, the loss of every step in `metrics.jsonl`.

## peft

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_path}")
tokenizer = AutoTokenizer.from_pretrained("{base_path}")
model = PeftModel.from_pretrained(base, "loras/{name}")
```

Or with loratune: `loratune generate --lora {name} --prompt "..."`, and
`loratune loras merge {name} --out models/{name}-merged` for a plain transformers model with the adapter merged in.

## text-generation-webui

Copy this folder into text-generation-webui's `loras/` folder (`loras/{name}/`), load the base model
({base_name}) with the Transformers loader, then pick `{name}` under LoRA(s) on the Model tab (or start it with
`--lora {name}`).

## llama.cpp

```sh
loratune loras export {name} --format gguf        # writes loras/{name}/adapter.gguf
llama-cli -m {base_name}.gguf --lora loras/{name}/adapter.gguf -p "..."
```

The base must be a GGUF of the same model (any quantization); supported architectures: llama, mistral, qwen2, qwen3.
"""
    tmp = run_dir / f".{CARD}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, run_dir / CARD)
    return run_dir / CARD


def _retention_row(run_dir: Path) -> str:
    """The card's retention line: the last measured KL from the base and share of unchanged short answers."""
    figures = read_retention(run_dir)
    if not figures:
        return ""
    step = max(figures)
    kl, same = figures[step]["retention_kl"], figures[step]["retention_same"]
    unchanged = f"; {same:.0%} of short answers unchanged" if same is not None else ""
    return (
        f"\n| retention (step {step}) | KL {kl:.4f} per token from the base model on general prompts{unchanged} "
        "(`retention_kl`, `retention_same` in metrics.jsonl) |"
    )


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")
