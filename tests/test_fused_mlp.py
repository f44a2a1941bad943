"""SiluMul: the SwiGLU MLPs keep two activations instead of three, with the same outputs and gradients to the bit."""

import importlib
import inspect

import torch
from transformers import AutoModelForCausalLM

from loratune.config import AdapterSpec, RunConfig, TrainSpec
from loratune.models.families import SWIGLU_MLPS
from loratune.training.fused_mlp import SiluMul, fuse_swiglu
from loratune.training.setup import add_lora

STOCK = "down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"


def test_every_listed_class_is_the_plain_swiglu_forward():
    """Guards a transformers upgrade: a listed class whose forward changed must leave the list."""
    for name in SWIGLU_MLPS:  # LlamaMLP lives in transformers.models.llama.modeling_llama, and so on
        module = name.removesuffix("MLP").lower()
        cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name)
        body = [line.strip() for line in inspect.getsource(cls.forward).splitlines()[1:] if line.strip()]
        assert body == [STOCK, "return down_proj"], cls


def test_silu_mul_equals_autograd_bit_for_bit_and_keeps_two_tensors():
    torch.manual_seed(0)
    gate, up = torch.randn(37, 300, requires_grad=True), torch.randn(37, 300, requires_grad=True)
    grad = torch.randn(37, 300)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        fused = SiluMul.apply(gate, up)
    assert len(kept) == 2  # gate and up; autograd keeps silu's output as well
    stock = torch.nn.functional.silu(gate) * up
    assert torch.equal(fused, stock)
    fused_grads = torch.autograd.grad(fused, (gate, up), grad)
    stock_grads = torch.autograd.grad(stock, (gate, up), grad)
    for a, b in zip(fused_grads, stock_grads, strict=True):
        assert torch.equal(a, b)


def test_a_lora_model_trains_to_the_same_gradients_with_the_fused_mlp(tiny_model):
    """add_lora switches the tiny LLaMA's MLPs (LoRA on gate/up/down too) without changing a gradient."""
    config = RunConfig(adapter=AdapterSpec(rank=4, dropout=0.0, targets="all-linear"), train=TrainSpec())
    ids = torch.randint(4, 200, (2, 24))

    def grads(fused: bool):
        model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model), config)  # seeded: the same LoRA weights
        if not fused:  # the stock forward back on every MLP
            for module in model.modules():
                if type(module).__name__ in SWIGLU_MLPS:
                    module.__dict__.pop("forward", None)
        model.train()
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)  # B starts at 0: make every LoRA matrix carry gradient
        torch.manual_seed(1)
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fused, stock = grads(True), grads(False)
    assert any("gate_proj" in n for n in fused) and fused.keys() == stock.keys()
    for name in fused:
        assert torch.equal(fused[name], stock[name]), name


def test_fuse_swiglu_counts_the_switched_mlps(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert fuse_swiglu(model) == model.config.num_hidden_layers
