"""SharedDropout: standard dropout per module, one mask per input tensor, the same gradients with checkpointing."""

import pytest
import torch

from loratune.config import AdapterSpec, RunConfig, TrainSpec
from loratune.models import load_base
from loratune.training.lora_dropout import SharedDropout
from loratune.training.setup import add_lora, enable_gradient_checkpointing


def test_shared_dropout_is_standard_dropout_with_one_mask_per_input():
    torch.manual_seed(0)
    drop = SharedDropout(0.25).train()
    x = torch.randn(400, 500, requires_grad=True)
    out = drop(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01  # 200,000 draws: 5 standard deviations is 0.005
    assert torch.allclose(out[kept], x[kept] / 0.75)
    assert drop(x) is out  # the same tensor again (q then v of one layer): the same mask
    other = drop(x.detach().clone())
    assert not torch.equal(other != 0, kept)  # another tensor: a new mask
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, kept.float() / 0.75)  # d out / d x = mask / (1 - p)


def test_shared_dropout_redraws_after_an_in_place_change_and_is_identity_in_eval():
    drop = SharedDropout(0.5).train()
    x = torch.randn(100, 100)
    first = drop(x)
    x.mul_(2)  # same object, new contents: its version moved on
    assert drop(x) is not first
    drop.eval()
    assert drop(x) is x


@pytest.fixture
def lora_model(tiny_model):
    def build(checkpointing: bool):
        config = RunConfig(adapter=AdapterSpec(rank=4, dropout=0.3, targets="q_proj,k_proj,v_proj"), train=TrainSpec())
        model, _ = load_base(tiny_model, "cpu")
        model = add_lora(model, config)
        if checkpointing:
            enable_gradient_checkpointing(model)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B = 0 at initialisation would give lora_A no gradient to compare
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(name)))
        return model.train()

    return build


def test_modules_reading_one_input_share_its_mask(lora_model):
    model = lora_model(False)
    seen = {}

    def keep_input(name):
        def hook(module, args, out):
            seen[name] = args[0]

        return hook

    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj")) and hasattr(module, "lora_A"):
            module.lora_A["default"].register_forward_hook(keep_input(name))
    model(torch.tensor([[1, 2, 3, 4, 5, 6]]))
    for layer in ("layers.0", "layers.1"):
        q, k, v = (
            next(x for n, x in seen.items() if layer in n and n.endswith(p)) for p in ("q_proj", "k_proj", "v_proj")
        )
        assert q is k is v
    assert not torch.equal(*(next(x for n, x in seen.items() if f"layers.{i}." in n) != 0 for i in (0, 1)))


def test_gradients_equal_with_gradient_checkpointing(lora_model):
    """Checkpointing recomputes the forward pass in backward: it must draw the same masks (the RNG is restored)."""
    grads = []
    for checkpointing in (False, True):
        model = lora_model(checkpointing)
        torch.manual_seed(123)
        ids = torch.tensor([[5, 9, 2, 7, 3, 8, 1, 4]])
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)
