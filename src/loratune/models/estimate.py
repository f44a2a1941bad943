"""Will it fit? Training memory from a model's config.json alone (no weights are read).

Parameter counts are exact: the architecture is built on PyTorch's 'meta' device (shapes, no storage), so tied
embeddings, biases and fused projections count as they do in the real model, and the LoRA size comes from the real
target modules. Activations follow what autograd keeps for backward in one decoder layer with a frozen base
(weights frozen, so a frozen linear layer keeps nothing; LoRA keeps its inputs):

    per token and layer  2 h (two norm inputs) + 2 h + 2 kv (SDPA keeps q, k, v, out) + MLP (3 i gated, 2 i for
                         the SwiGLU MLPs training fuses and plain ones, 4 i for GPT-2's gelu_new)
                         + residual dropouts where the config has them
                         + per LoRA module: its input, the dropout mask (1 byte) and the rank-r output

plus one layer's worth again for backward's temporaries. On a CPU, glibc's allocator keeps some freed activation
memory fragmented; training hands freed pages back before each pass and after every third layer
(training/allocator.py), and 0.1x the activations on top puts the five rows of bench/estimate_memory.py within
-9 % to +3 % (2026-12-06; 0.4x before the releases inside passes). Logits: our loss projects only positions whose
next token is trained; we assume every position is trained (raw text, the worst case), so n = micro_batch *
(cutoff - 1) rows of the vocabulary. For the families whose head training projects in chunks of HEAD_CHUNK rows
(models/families.py PLAIN_HEAD_FAMILIES, one process) one fp32 chunk is alive at a time, plus the (n x hidden)
gradient it keeps; for the others all n rows, kept three times at the backward peak (logits, log-softmax, their
gradient), always in fp32. The runtime (Python, torch, transformers, peft, tokenizer; or the CUDA context) is a
constant measured on our CPU machine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.errors import LoratuneError
from loratune.models.families import HEAD_CHUNK

GB = 1024**3
CPU_RUNTIME = 0.55 * GB  # measured: peak RSS of a tiny model's training run less its weights and logits (2026-12-06)
CPU_ALLOCATOR = 0.1  # glibc's retained, fragmented activation memory (see above), x activations
CUDA_RUNTIME = 0.5 * GB  # the CUDA context and cuBLAS workspaces, outside torch's allocator statistics
_BITS = {"4bit": 4.127, "8bit": 8.0}  # NF4 with double-quantized block scales; int8 + per-row scales (small)


@dataclass
class Shape:
    """What the estimate needs from an architecture (all counted on the meta device)."""

    params: int
    quantizable: int  # params of linear layers a k-bit load quantizes (everything but embeddings, norms, LM head)
    lora: int  # LoRA parameters for the chosen targets and rank
    lora_inputs: int  # sum of in_features of the adapted modules in one layer
    lora_modules: int  # adapted modules per layer
    rank: int
    layers: int
    hidden: int
    kv: int  # key/value width (smaller than hidden with grouped-query attention)
    intermediate: int
    mlp_saved: int  # intermediate-sized tensors autograd keeps per token: 3 gated (2 fused), 4 GPT-2's gelu_new, else 2
    residual_dropout: bool  # dropout on the residual branches (GPT-2, GPT-J, OPT configs): outputs and masks kept
    vocab: int
    eager_heads: int  # attention heads when the model has no SDPA (then T x T scores are kept), else 0
    chunked_head: bool = False  # training projects the LM head in chunks (a plain-head family, bias-free head)


@dataclass
class Estimate:
    weights: int
    lora_and_optimizer: int
    activations: int
    logits: int
    runtime: int
    assumptions: str

    @property
    def total(self) -> int:
        return self.weights + self.lora_and_optimizer + self.activations + self.logits + self.runtime

    def table(self) -> str:
        rows = [
            ("weights", self.weights),
            ("LoRA + grads + AdamW state", self.lora_and_optimizer),
            ("activations", self.activations),
            ("logits (trained positions)", self.logits),
            ("runtime", self.runtime),
            ("total", self.total),
        ]
        return "\n".join(f"  {name:<28}{human(value):>10}" for name, value in rows)


def estimate(
    shape: Shape,
    micro_batch: int,
    cutoff: int,
    device: str = "cpu",
    quant: str = "none",
    dropout: bool = True,
    checkpointing: bool | None = None,
) -> Estimate:
    """Peak training memory in bytes for one micro-batch of `micro_batch` samples of `cutoff` tokens."""
    cuda = device == "cuda"
    act = 2 if cuda else 4  # bf16 on a GPU, fp32 on a CPU (as load_base loads them)
    checkpointing = quant != "none" if checkpointing is None else checkpointing
    if quant == "none":
        weights = shape.params * act
    else:  # prepare_model_for_kbit_training casts what is not quantized (embeddings, norms, LM head) to fp32
        weights = int(shape.quantizable * _BITS[quant] / 8) + (shape.params - shape.quantizable) * 4
    lora = shape.lora * 16  # fp32 weight, gradient, AdamW's two moments

    tokens = micro_batch * cutoff
    per_token = (4 * shape.hidden + 2 * shape.kv + shape.mlp_saved * shape.intermediate) * act
    if shape.residual_dropout:
        per_token += 2 * shape.hidden * (act + 1)
    per_token += shape.lora_inputs * (act + (1 if dropout else 0)) + shape.lora_modules * shape.rank * act
    per_layer = tokens * per_token + shape.eager_heads * micro_batch * cutoff * cutoff * act * 2
    if checkpointing:  # only each layer's input is kept; one layer is recomputed at a time
        activations = shape.layers * tokens * shape.hidden * act + 2 * per_layer
    else:
        activations = (shape.layers + 1) * per_layer
    if not cuda:
        activations = int(activations * (1 + CPU_ALLOCATOR))
    rows = micro_batch * (cutoff - 1)
    if shape.chunked_head:  # one chunk of logits (then probabilities, in place) + the gradient it keeps
        logits = min(rows, HEAD_CHUNK) * shape.vocab * 4 + rows * shape.hidden * 4
    else:
        logits = 3 * rows * shape.vocab * 4
    assumptions = (
        f"{'bf16' if cuda else 'fp32'} activations, every position trained (raw text; instruction data trains "
        f"fewer, so its logits cost less){', gradient checkpointing' if checkpointing else ''}"
    )
    return Estimate(weights, lora, activations, logits, CUDA_RUNTIME if cuda else CPU_RUNTIME, assumptions)


def check_request(quant: str, device: str, rank: int, targets: str, cutoff: int, micro_batch: int) -> None:
    """Refuse what training would refuse (one line naming the option), and a quantized base off CUDA."""
    from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec

    ModelSpec(quant=quant).validate()
    AdapterSpec(rank=rank, targets=targets).validate()
    DataSpec(cutoff=cutoff).validate()
    TrainSpec(micro_batch=micro_batch, batch_size=micro_batch).validate()  # one micro-batch: a valid batch_size
    if quant != "none" and device != "cuda":
        raise LoratuneError(f"model.quant {quant} runs only on CUDA GPUs; estimate for device cuda or model.quant none")


def largest_fit(shape: Shape, budget: int, micro_batch: int, cutoff: int, **kwargs) -> tuple[int, int]:
    """(largest micro-batch at this cutoff, largest cutoff at this micro-batch) within `budget` bytes; 0 if none."""
    best_batch = _largest(lambda b: estimate(shape, b, cutoff, **kwargs).total <= budget, 1, 4096)
    best_cutoff = _largest(lambda t: estimate(shape, micro_batch, t, **kwargs).total <= budget, 8, 1 << 20)
    return best_batch, best_cutoff


def _largest(fits, low: int, high: int) -> int:
    """Largest n in [low, high] with fits(n) (fits is monotonic), or 0."""
    if not fits(low):
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def shape_of(config, rank: int, targets: str) -> Shape:
    """Count an architecture on the meta device (no memory, no weights) and measure the LoRA it would get."""
    import torch  # here, not at the top: `loratune models list` formats sizes with human() and needs no torch
    from transformers import AutoModelForCausalLM

    from loratune.models.families import PLAIN_HEAD_FAMILIES, SWIGLU_MLPS, linear_module_paths, resolve_targets

    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError as e:
            raise LoratuneError(f"cannot build model type '{config.model_type}' ({str(e).splitlines()[0]})") from None
    names = resolve_targets(model, targets)
    linear = {p: model.get_submodule(p) for p in linear_module_paths(model)}
    if names == "all-linear":
        adapted = list(linear)
    else:
        adapted = [p for p in linear if any(p == n or p.endswith("." + n) for n in names)]
    fan = {p: _in_out(m) for p, m in linear.items()}
    layers = _count_layers(linear) or 1
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    heads = _first(text, "num_attention_heads", "n_head", default=1)  # RWKV has no attention heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    intermediate = _first(text, "intermediate_size", "ffn_dim", "n_inner", "d_ff", default=0) or 4 * hidden
    has_gate = any(re.search(r"gate", p) for p in linear)
    # counted with saved-tensor hooks: gelu_new (GPT-2, GPT-J) is a composite of elementwise ops that keeps 4; a
    # gated MLP 3, or 2 for the classes training fuses (training/fused_mlp.py)
    fused = any(type(m).__name__ in SWIGLU_MLPS for m in model.modules())
    gelu_new = getattr(text, "activation_function", "") == "gelu_new"
    mlp_saved = 2 if fused else 3 if has_gate else 4 if gelu_new else 2
    residual_dropout = any(getattr(text, n, 0) for n in ("resid_pdrop", "hidden_dropout", "dropout"))
    uses_sdpa = getattr(model, "_supports_sdpa", False) or config.model_type == "rwkv"  # RWKV has no T x T scores
    head = model.get_output_embeddings()
    return Shape(
        params=sum(p.numel() for p in model.parameters()),
        quantizable=sum(m.weight.numel() for m in linear.values()),
        lora=sum(rank * (fan[p][0] + fan[p][1]) for p in adapted),
        lora_inputs=sum(fan[p][0] for p in adapted) // layers,
        lora_modules=math.ceil(len(adapted) / layers),
        rank=rank,
        layers=layers,
        hidden=hidden,
        kv=kv_heads * head_dim,
        intermediate=intermediate,
        mlp_saved=mlp_saved,
        residual_dropout=bool(residual_dropout),
        vocab=text.vocab_size,
        eager_heads=0 if uses_sdpa else heads,
        chunked_head=config.model_type in PLAIN_HEAD_FAMILIES and getattr(head, "bias", None) is None,
    )


def load_config(source: str, home: str | Path | None = None, trust_remote_code: bool = False):
    """config.json of a folder, a name in models/, the default model (read from its GGUF header), or a hub id (only
    config.json is fetched)."""
    from transformers import AutoConfig

    from loratune.models import sources
    from loratune.workspace import Workspace

    ws = Workspace.resolve(home)
    path = Path(source).expanduser()
    if source in ("", "default"):
        local = ws.models / sources.DEFAULT_NAME
        if (local / "config.json").is_file():
            return AutoConfig.from_pretrained(local)
        return _gguf_config(sources.default_gguf())
    if path.suffix.lower() == ".gguf":  # the shape is in the GGUF's metadata, read as train reads it
        if not path.is_file():
            raise LoratuneError(f"GGUF file not found: {path}")
        local = ws.models / path.stem  # converted once by an earlier train / generate
        if (local / "config.json").is_file():
            return _auto_config(local, trust_remote_code)
        return _gguf_config(path)
    if path.is_dir() or (ws.models / source.replace("/", "_") / "config.json").is_file():
        folder = path if path.is_dir() else ws.models / source.replace("/", "_")
        if not (folder / "config.json").is_file():
            raise LoratuneError(f"{folder} is not a model folder (no config.json in it)")
        return _auto_config(folder, trust_remote_code)
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise LoratuneError(f"model not found: {source} (give a model folder, a name in models/ or a hub id)")
    return _auto_config(_hub_config(source), trust_remote_code)


def _hub_config(repo_id: str) -> Path:
    from huggingface_hub import HfApi, constants, hf_hub_download

    from loratune.models.checks import first_line

    if constants.HF_HUB_OFFLINE:
        raise LoratuneError(f"cannot fetch config.json of '{repo_id}': HF_HUB_OFFLINE is set; pass a model folder")
    try:
        # Ask the hub once first, as `models download` does: it fails at once offline, where hf_hub_download
        # retries for a minute and then blames the local cache.
        revision = HfApi().model_info(repo_id).sha
        return Path(hf_hub_download(repo_id, "config.json", revision=revision)).parent
    except Exception as e:
        raise LoratuneError(
            f"cannot fetch config.json of '{repo_id}' from the Hugging Face hub ({type(e).__name__}: "
            f"{first_line(e, 160)}); check the id and your connection, or pass a model folder"
        ) from None


def _gguf_config(gguf: Path):
    from transformers import AutoConfig

    from loratune.models.checks import first_line

    try:
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, OSError) as e:
        raise LoratuneError(f"{gguf}: transformers cannot read this GGUF file ({first_line(e)})") from None


def _auto_config(folder: Path, trust_remote_code: bool):
    from transformers import AutoConfig

    from loratune.models.checks import read_json_file

    read_json_file(folder / "config.json", "model config")  # malformed JSON: one line naming the file
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise LoratuneError(
                f"{folder} needs its own Python code; pass --trust-remote-code if you trust it"
            ) from None
        raise LoratuneError(f"{folder}/config.json: {str(e).splitlines()[0]}") from None


def parse_size(text: str) -> int:
    """'8GB', '8 GiB', '512MB', '8' (GB) -> bytes (binary units: a GB here is 1024^3 bytes)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise LoratuneError(f"cannot read the size {text!r}; write it like 8GB or 512MB")
    unit = {"": GB, "K": 1024, "M": 1024**2, "G": GB, "T": 1024**4}[match.group(2).upper()]
    return int(float(match.group(1)) * unit)


def human(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1024**2:.0f} MB"


def _in_out(module) -> tuple[int, int]:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):  # GPT-2 stores (in, out)
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


def _count_layers(linear: dict) -> int:
    """Distinct layer indices in the module paths ('model.layers.7.self_attn.q_proj' -> 7)."""
    return len({m.group(1) for p in linear for m in [re.search(r"\.(\d+)\.", p)] if m})


def _first(config, *names: str, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value:
            return value
    if default is not None:
        return default
    raise LoratuneError(f"config of model type '{config.model_type}' has none of {', '.join(names)}")
