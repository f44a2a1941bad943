"""Typed run configuration: the dataclasses are the only source of truth.

A YAML file is a serialized `RunConfig`; the CLI exposes the same fields as dotted overrides (`--train.lr 2e-4`),
and every run folder keeps the fully resolved `loratune.yaml`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from loratune.errors import LoratuneError

# Reading options (values, dicts, YAML, overrides) is loratune.options; its public names are used from here too.
from loratune.options import (
    SHORTCUTS,
    _check_choices,
    _check_finite,
    _field_docs,
    coerce,
    from_dict,
    load_yaml,
    merge_options,
    parse_overrides,
    save_yaml,
    set_dotted,
    to_dict,
)

__all__ = [
    "QUANTS",
    "SHORTCUTS",
    "AdapterSpec",
    "DataSpec",
    "GenerateSpec",
    "ModelSpec",
    "RunConfig",
    "TrainSpec",
    "adapter_from_run",
    "coerce",
    "field_help",
    "from_dict",
    "load_yaml",
    "merge_options",
    "options_table",
    "parse_overrides",
    "save_yaml",
    "set_dotted",
    "to_dict",
]

Quant = Literal["none", "4bit", "8bit"]
QUANTS: tuple[str, ...] = typing.get_args(Quant)


@dataclass
class ModelSpec:
    source: str = "default"
    """'default' (SmolLM2-135M-Instruct), a hub id, a local folder, a .gguf file, or a name in models/."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own Python code. Off unless you trust the model's authors."""
    quant: Quant = "none"
    """QLoRA: load the frozen base in 4-bit (NF4) or 8-bit with bitsandbytes (CUDA only; gradient checkpointing on)."""

    def validate(self) -> ModelSpec:
        _refuse(self, "model.", [])
        return self


@dataclass
class AdapterSpec:
    rank: int = 32
    """LoRA rank r: size of the low-rank update. Higher learns more and costs more memory."""
    alpha: int = 64
    """LoRA alpha: the update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    targets: str = "attention+mlp"
    """'attention+mlp', 'attention' (q_proj,v_proj on LLaMA), 'all-linear', or module names (e.g. 'q_proj,v_proj')."""
    copy_from: str = ""
    """Take this group's values (rank, alpha, ...) from an existing LoRA's saved loratune.yaml (name or folder)."""
    init_from: str = ""
    """Start from this LoRA's trained weights and shape (name, name/checkpoint-N or an adapter folder): SFT, then
    DPO on top of it; dpo/ipo/kto then measure their reference with this starting adapter on, not the bare base."""
    rslora: bool = False
    """Rank-stabilised LoRA: scale the update by alpha / sqrt(rank), so high ranks keep learning."""
    dora: bool = False
    """DoRA: learn a magnitude per output beside the LoRA direction (slower, sometimes better at low rank)."""

    def validate(self) -> AdapterSpec:
        checks = [
            (
                lambda: not (self.copy_from and self.init_from),
                "adapter.copy_from and adapter.init_from both set: init_from already takes the adapter's shape",
            ),
            (lambda: self.rank > 0, "adapter.rank must be > 0"),
            (lambda: self.alpha > 0, "adapter.alpha must be > 0"),
            (lambda: 0 <= self.dropout < 1, "adapter.dropout must be in [0, 1)"),
            (
                lambda: any(name.strip() for name in self.targets.split(",")),
                "adapter.targets is empty: use attention+mlp, attention, all-linear or module names like q_proj,v_proj",
            ),
        ]
        _refuse(self, "adapter.", checks)
        return self


@dataclass
class DataSpec:
    path: list[str] | str = ""
    """A data file (.jsonl/.json, .csv/.tsv, .parquet, .arrow, .txt/.md), a folder of them, a hub dataset
    (hf:org/name), or a list of these (several datasets in one run)."""
    format: str = "auto"
    """'auto' (chat template if the model has one, else alpaca), 'alpaca', 'chat', or a format file / formats/ name."""
    chat_template: str = "auto"
    """Chat template for chat data: 'auto' (the model's own), 'chatml', 'llama3', 'alpaca', 'vicuna', a .jinja file."""
    cutoff: int = 256
    """Maximum tokens per sample. Longer instruction samples are dropped (and counted)."""
    overlap: int = 128
    """Raw text: tokens shared by consecutive chunks."""
    newline_cut: int = 0
    """Raw text: move a chunk's start / end to a newline when one lies within this many characters (0: off)."""
    hard_cut: str = "\n\n\n"
    """Raw text: no chunk crosses this string."""
    min_chunk: int = 16
    """Raw text: chunks shorter than this many tokens are dropped ('ignore small blocks')."""
    add_eos: bool = True
    """Append EOS at the end of each response / document, so the model learns to stop."""
    too_long: Literal["drop", "truncate"] = "drop"
    """Instruction samples longer than the cutoff: 'drop' them, or 'truncate' them to the cutoff (both are counted)."""
    add_bos: Literal["auto", "always", "never"] = "auto"
    """Put BOS first in each sample: 'auto' when the tokenizer adds one by itself, 'always', or 'never'."""
    train_only_after: str = ""
    """Instruction data: train only on the text after the first occurrence of this marker (e.g. '### Response:')."""
    eval_path: str = ""
    """A separate evaluation file (same kind as data.path); its loss is measured, never trained on."""
    eval_split: float = 0.0
    """Hold out this fraction of the samples for evaluation (e.g. 0.05) when no eval_path is given."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename the data's columns to the names the record shapes use, e.g. {instruction: question, output: answer}."""
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    """Chats: train every assistant turn ('all_assistant') or only the last one ('last_assistant')."""
    mix: list[float] = field(default_factory=list)
    """One weight per dataset of a data.path list: 1 keeps its samples, 0.5 a seeded half, 2 each sample twice."""
    split: str = "train"
    """Hub datasets: the split to read (train, validation, test, ...)."""
    subset: str = ""
    """Hub datasets: the subset (configuration) to read, when the dataset has several."""
    revision: str = ""
    """Hub datasets: a branch, tag or commit to download (empty: the main branch)."""

    def __post_init__(self) -> None:
        # Values typed on the command line or in the web UI arrive as text: '[a.jsonl, b.csv]', '{output: answer}'.
        self.path = _parsed(self.path, "data.path", list) if _looks_like(self.path, "[") else self.path
        if isinstance(self.path, list):
            if not self.path or not all(isinstance(p, str) and p for p in self.path):
                raise LoratuneError("data.path as a list needs one or more file, folder or hub names")
            if len(self.path) == 1:
                self.path = self.path[0]
        elif not isinstance(self.path, str):
            self.path = str(self.path)
        self.columns = _parsed(self.columns, "data.columns", dict) if isinstance(self.columns, str) else self.columns
        if not isinstance(self.columns, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in self.columns.items()
        ):
            raise LoratuneError("data.columns maps names to the data's columns, e.g. {instruction: question}")
        self.mix = _parsed(self.mix, "data.mix", list) if isinstance(self.mix, str) else self.mix
        if not isinstance(self.mix, list) or not all(_positive(w) for w in self.mix):
            raise LoratuneError("data.mix is a list of weights > 0, one per dataset of data.path, e.g. [1, 0.5]")
        self.mix = [float(w) for w in self.mix]
        datasets = len(self.path) if isinstance(self.path, list) else 1
        if self.mix and len(self.mix) != datasets:
            raise LoratuneError(f"data.mix has {len(self.mix)} weights for {datasets} dataset(s) in data.path")

    def validate(self) -> DataSpec:
        checks = [
            (lambda: self.cutoff >= 8, "data.cutoff must be at least 8 tokens"),
            (lambda: self.overlap >= 0, "data.overlap must be >= 0"),
            (lambda: self.min_chunk > 0, "data.min_chunk must be > 0"),
            (lambda: 0 <= self.eval_split < 1, "data.eval_split must be in [0, 1), e.g. 0.05"),
            (lambda: self.newline_cut >= 0, "data.newline_cut must be >= 0"),
        ]
        _refuse(self, "data.", checks)
        return self


@dataclass
class TrainSpec:
    epochs: float = 3.0
    """Passes over the data (fractions allowed). Ignored when max_steps > 0."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: use epochs)."""
    lr: float = 3e-4
    """Peak learning rate."""
    scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial", "inverse_sqrt"
    ] = "linear"
    """Learning-rate schedule (after warmup; 'constant' has none): names as in transformers."""
    lr_cycles: int = 3
    """cosine_with_restarts: how many cosine cycles the run makes."""
    lr_power: float = 2.0
    """polynomial: the decay's power (1.0 is linear)."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming the learning rate up from 0."""
    warmup_steps: int = 0
    """Warm up over this many steps instead (used when > 0)."""
    optimizer: Literal["adamw_torch", "adamw_8bit", "adafactor", "sgd"] = "adamw_torch"
    """adamw_torch, adamw_8bit (bitsandbytes, CUDA), adafactor (less memory), or sgd."""
    batch_size: int = 16
    """Samples per optimizer step (pairs, for a preference method); gradient accumulation = batch_size / micro_batch."""
    micro_batch: int = 4
    """Samples per forward/backward pass (lower it if memory runs out); a preference method puts micro_batch / 2
    pairs (both sides of each) in a pass."""
    packing: bool = True
    """Lay samples end to end, no padding (up to micro_batch x cutoff tokens per pass); attention stays per sample."""
    packed_tokens: int = 0
    """Tokens per packed pass (0: micro_batch x cutoff, or data.cutoff with train.low_memory). Fewer use less memory."""
    weight_decay: float = 0.0
    """Weight decay on the LoRA weights (decoupled for adamw and adafactor)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    save_every: int = 100
    """Write a resumable checkpoint every N optimizer steps (0: only at the end)."""
    log_every: int = 1
    """Write a metrics.jsonl line every N optimizer steps."""
    seed: int = 42
    """Seed of the LoRA initialisation, the data order, dropout and the eval split."""
    resume: bool | Literal["auto"] = False
    """Continue from the newest complete checkpoint of this run ('auto': if there is one, else start)."""
    keep_checkpoints: int = 0
    """Keep only the newest N complete checkpoints (0: keep all); the newest complete one is never deleted."""
    stop_at_loss: float = 0.0
    """End the run (and save the adapter) once a step's training loss is at or below this (0: off)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more compute per step."""
    low_memory: bool = False
    """Train in about half the memory, a little slower: activation checkpointing, and packed passes of data.cutoff
    tokens (unless train.packed_tokens is given)."""
    memory_check: bool = True
    """Before loading, refuse a run whose estimated peak memory exceeds the free RAM / VRAM (false: try anyway)."""
    eval_every: int = 0
    """Evaluate on the eval data every N optimizer steps (0: only at the end)."""
    retention: bool = True
    """Measure how far the adapter drifts from the base model on ~90 general prompts, at each evaluation and at the
    end: retention_kl (mean per-token KL from the base's answers, 0: unchanged) and retention_same (share of short
    answers still the base's). Off: not measured."""
    retention_prompts: str = ""
    """Your own retention probe instead of the shipped one: a .jsonl of {"prompt" (or "messages", or "opening" for
    raw-text runs), "short": true|false}, or a .txt of one prompt per line."""
    retention_items: int = 0
    """Probe items to use (0: as many as keep the probe within ~6 % of the run's compute, at least 32; the shipped
    probe has 93 prompts and 16 raw-text openings)."""
    retention_tokens: int = 32
    """Tokens of the base model's answer to each probe prompt (fewer: a cheaper probe)."""
    retain: float = 0.0
    """Keep the base's behaviour elsewhere (0: off): each step also trains on the base's own answers to general
    prompts with the KL to the base as their loss, times this weight (e.g. 1.0). For a task adapter, not for a style
    meant to change every answer."""
    method: Literal["sft", "dpo", "ipo", "simpo", "orpo", "kto"] = "sft"
    """sft: supervised fine-tuning on the responses. On preference data (prompt / chosen / rejected records): dpo
    (Rafailov et al. 2023), ipo (Azar et al. 2023), simpo (Meng et al. 2024, no reference model) or orpo (Hong et al.
    2024, no reference model, an SFT term on the chosen side). On unpaired prompt / completion / label records: kto
    (Ethayarajh et al. 2024). The reference is the base with the adapter disabled."""
    beta: float = 0.0
    """Preference methods: the strength of the preference (0: the paper's default, dpo/ipo/kto 0.1, simpo 2.0)."""
    label_smoothing: float = 0.0
    """dpo: the share of pairs assumed mislabelled (conservative DPO, Mitchell 2023; 0: plain DPO), below 0.5."""
    simpo_gamma: float = 1.0
    """simpo: the target reward margin gamma (the paper's gamma / beta = 0.5 at beta 2.0)."""
    orpo_lambda: float = 0.1
    """orpo: the weight lambda of the odds-ratio term beside the chosen side's NLL (the paper's 0.1)."""
    kto_desirable_weight: float = 1.0
    """kto: the weight lambda_D of the desirable samples' loss (the paper: lambda_D n_D / (lambda_U n_U) in [1, 4/3]
    for n_D desirable and n_U undesirable samples)."""
    kto_undesirable_weight: float = 1.0
    """kto: the weight lambda_U of the undesirable samples' loss."""
    precompute_reference: bool = True
    """dpo/ipo/kto: the reference log-probs of every pair (kto: sample) once before the first step, instead of a
    forward pass of the base per step (the same figures, fewer passes)."""
    report_to: Literal["none", "tensorboard"] = "none"
    """Also log to TensorBoard (in <run>/tensorboard/); metrics.jsonl is always written."""
    overwrite: bool = False
    """Replace an existing adapter of the same name instead of refusing."""

    def validate(self) -> TrainSpec:
        checks = [  # in order: a failed test (lambdas) never lets a later one divide by zero
            (lambda: 0 < self.lr < float("inf"), "train.lr must be a number > 0"),
            (
                lambda: self.epochs >= 0 and self.max_steps >= 0,
                "train.epochs and train.max_steps must not be negative",
            ),
            (lambda: self.epochs <= MAX_EPOCHS, f"train.epochs must be at most {MAX_EPOCHS:,} (use train.max_steps)"),
            (lambda: 0 <= self.seed <= MAX_SEED, f"train.seed must be a whole number from 0 to {MAX_SEED}"),
            (lambda: self.lr_power > 0, "train.lr_power must be > 0 (the polynomial decay's power; 1.0 is linear)"),
            (lambda: self.save_every >= 0, "train.save_every must be >= 0 (0: save only at the end)"),
            (lambda: self.log_every > 0, "train.log_every must be > 0"),
            (lambda: self.eval_every >= 0, "train.eval_every must be >= 0 (0: evaluate only at the end)"),
            (lambda: self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (lambda: self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0: no clipping)"),
            (lambda: self.keep_checkpoints >= 0, "train.keep_checkpoints must be >= 0 (0: keep all)"),
            (lambda: self.stop_at_loss >= 0, "train.stop_at_loss must be >= 0 (0: off)"),
            (lambda: 1 <= self.retention_tokens <= 1024, "train.retention_tokens must be from 1 to 1024"),
            (lambda: self.retention_items >= 0, "train.retention_items must be >= 0 (0: sized to the run)"),
            (lambda: self.retain >= 0, "train.retain must be >= 0 (0: off; e.g. 1.0)"),
            (lambda: self.beta >= 0, "train.beta must be >= 0 (0: the method's default)"),
            (lambda: 0 <= self.label_smoothing < 0.5, "train.label_smoothing must be in [0, 0.5)"),
            (lambda: self.orpo_lambda >= 0, "train.orpo_lambda must be >= 0"),
            (
                lambda: self.kto_desirable_weight >= 0 and self.kto_undesirable_weight >= 0,
                "train.kto_desirable_weight and train.kto_undesirable_weight must be >= 0",
            ),
            (lambda: self.micro_batch > 0, "train.micro_batch must be > 0"),
            (
                lambda: self.batch_size % self.micro_batch == 0 and self.batch_size > 0,
                "train.batch_size must be a multiple of train.micro_batch",
            ),
            (lambda: self.packed_tokens >= 0, "train.packed_tokens must be >= 0 (0: micro_batch x cutoff)"),
            (lambda: self.epochs > 0 or self.max_steps > 0, "set train.epochs > 0 or train.max_steps > 0"),
            (lambda: 0 <= self.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
            (lambda: self.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (lambda: self.lr_cycles >= 1, "train.lr_cycles must be >= 1"),
            (  # each step multiplies the weights by (1 - lr x weight_decay): at 1 or more they vanish or flip sign
                lambda: self.lr * self.weight_decay < 1,
                f"train.weight_decay {self.weight_decay:g} x train.lr {self.lr:g} must be below 1 (each step shrinks "
                "the weights by that fraction); lower train.weight_decay",
            ),
        ]
        _refuse(self, "train.", checks)
        return self


@dataclass
class GenerateSpec:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 0.9
    top_k: int = 0
    """Sample only from the k likeliest tokens (0: off)."""
    repetition_penalty: float = 1.0
    seed: int = -1
    """Seed for sampling, so a sampled answer can be repeated (-1: not seeded)."""
    system: str = ""
    """System prompt (empty: the adapter's default, or the chat template's own)."""
    chat: bool | None = None
    """None: prompt as the adapter was trained (its prompt.json: chat template, format file or raw text); false: the
    bare text; true: the model's chat template."""

    def validate(self) -> GenerateSpec:
        """Named as the Python keyword and the UI field; the CLI flag is the same with dashes (--max-new-tokens)."""
        checks = [
            (lambda: self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (lambda: self.temperature >= 0, "temperature must be >= 0 (0: greedy)"),
            (lambda: 0 < self.top_p <= 1, "top_p must be in (0, 1] (1: off)"),
            (lambda: self.top_k >= 0, "top_k must be >= 0 (0: off)"),
            (lambda: self.repetition_penalty > 0, "repetition_penalty must be > 0 (1.0: off)"),
            (
                lambda: -1 <= self.seed <= MAX_SEED,
                f"seed must be -1 (not seeded) or a whole number from 0 to {MAX_SEED}",
            ),
        ]
        _refuse(self, "", checks)
        return self


@dataclass
class RunConfig:
    name: str = ""
    """Adapter name: the run folder is loras/<name>/."""
    model: ModelSpec = field(default_factory=ModelSpec)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def validate(self) -> RunConfig:
        for group in (self.model, self.adapter, self.data, self.train):
            group.validate()
        packed, cutoff = self.train.packed_tokens, self.data.cutoff
        if 0 < packed < cutoff:
            raise LoratuneError(
                f"train.packed_tokens {packed} must be 0 (micro_batch x cutoff) or at least data.cutoff ({cutoff}), "
                "so a packed pass holds the longest sample"
            )
        return self

    def packed_tokens(self) -> int:
        """Tokens per packed pass (0: not packed): train.packed_tokens, else data.cutoff with train.low_memory, else
        micro_batch x cutoff, the most a padded micro-batch could hold."""
        tc, cutoff = self.train, self.data.cutoff
        return tc.packing * (tc.packed_tokens or (cutoff if tc.low_memory else tc.micro_batch * cutoff))

    def checkpointing(self) -> bool:
        """Whether activations are recomputed in the backward pass (train.gradient_checkpointing or low_memory)."""
        return self.train.gradient_checkpointing or self.train.low_memory


def _looks_like(value: Any, opening: str) -> bool:
    return isinstance(value, str) and value.lstrip().startswith(opening)


def _parsed(text: str, name: str, kind: type) -> Any:
    """An option's YAML flow text ('[a, b]', '{k: v}'; empty: empty) as a list or dict."""
    if not text.strip():
        return kind()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LoratuneError(
            f"option '{name}': {text!r} is not a YAML {kind.__name__} ({str(e).splitlines()[0]})"
        ) from None
    if not isinstance(value, kind):
        raise LoratuneError(f"option '{name}' expects a {kind.__name__}, e.g. {'[a, b]' if kind is list else '{a: b}'}")
    return value


def _positive(weight: Any) -> bool:
    import math

    return isinstance(weight, int | float) and not isinstance(weight, bool) and 0 < weight and math.isfinite(weight)


MAX_EPOCHS = 1_000_000  # far beyond any real run, and small enough that epochs x steps per epoch stays finite
MAX_SEED = 2**32 - 1  # as numpy and transformers' set_seed; torch takes it, and seed + epoch stays in range


def _refuse(spec: Any, prefix: str, checks: list[tuple[Callable[[], bool], str]]) -> None:
    """Raise the first failed check's message, after the finite and choice checks every group shares."""
    _check_finite(spec, prefix)  # first: inf / nan pass comparisons like 'x >= 0', then overflow much later
    _check_choices(spec, prefix)
    for ok, message in checks:
        if not ok():
            raise LoratuneError(message)


def adapter_from_run(run_dir: Path, current: AdapterSpec) -> AdapterSpec:
    """The adapter group of an earlier run's loratune.yaml (for adapter.copy_from); copy_from itself is kept."""
    from loratune.rundir import CONFIG, read_run_config

    saved = read_run_config(run_dir)
    if saved is None:
        raise LoratuneError(f"adapter.copy_from: {run_dir / CONFIG} not found; name an existing LoRA in loras/")
    copied = from_dict(AdapterSpec, saved.get("adapter") or {}, f"{run_dir / CONFIG}: adapter")
    return dataclasses.replace(copied, copy_from=current.copy_from)


def field_help(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, default, help) for every leaf option, in declaration order; help comes from field docstrings."""
    docs = _field_docs(cls)
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += field_help(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, value, docs.get(f.name, "")))
    return rows


def options_table() -> str:
    """Every option as a Markdown table (the README's "All options" section is this text)."""
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for name, default, doc in field_help():
        shown = (
            repr(default)
            if isinstance(default, str)
            else str(default).lower()
            if isinstance(default, bool)
            else default
        )
        cells = [f"`{name}`", f"`{shown}`", doc]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m loratune.config: the README's options table
    print(options_table(), end="")
