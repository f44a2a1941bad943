"""QLoRA: load the frozen base model in 4-bit (NF4) or 8-bit through bitsandbytes; the LoRA weights stay in 32 bits.

bitsandbytes' k-bit matmuls are CUDA kernels, so a quantized base needs a CUDA GPU; without one we say so in one line
rather than fall into a slow or unsupported path.
"""

from __future__ import annotations

import importlib.util

import torch

from loratune.config import ModelSpec
from loratune.errors import LoratuneError


def check_quant(quant: str, device: torch.device | str) -> None:
    """Refuse a quantized load that cannot work here, before any weights are read."""
    ModelSpec(quant=quant).validate()
    if quant == "none":
        return
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise LoratuneError(
            f"model.quant {quant} (QLoRA) needs a CUDA GPU and this machine has none; "
            "train without it (--model.quant none) or on a machine with an NVIDIA GPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LoratuneError(
            f"model.quant {quant} needs the bitsandbytes package: pip install 'loratune[qlora]' (or bitsandbytes)"
        )


def quantization_config(quant: str, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for '4bit' (NF4, double quantization: the QLoRA paper's) or '8bit'."""
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def prepare_for_training(model):
    """peft's k-bit preparation: base frozen, norms in fp32, inputs that need grads, gradient checkpointing on
    (activations are what is left to save once the weights take a quarter of their bf16 size)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
