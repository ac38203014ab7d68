"""Invariants of lora_edu.lora: the layer, injection by module name, merge/unmerge (notebook 04)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lora_edu
from lora_edu.lora import LoRALinear, add_lora, find_target_modules, lora_layers, lora_state_dict, \
    merge_lora, target_matches, unmerge_lora
from toy_models import MLP, Nested


def trained_like(layer: LoRALinear, seed=1):
    """Give B non-zero values, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
    return layer


def test_exported_at_top_level():
    for name in ("LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "lora_state_dict"):
        assert hasattr(lora_edu, name), name


def test_shapes_scaling_and_frozen_base():
    base = nn.Linear(7, 5)
    layer = LoRALinear(base, r=3, alpha=6)
    assert layer.base is base
    assert isinstance(layer.lora_A, nn.Parameter) and layer.lora_A.shape == (3, 7)
    assert isinstance(layer.lora_B, nn.Parameter) and layer.lora_B.shape == (5, 3)
    assert layer.scaling == 2.0
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert layer.merged is False
    assert LoRALinear(nn.Linear(7, 5), r=4, alpha=6, use_rslora=True).scaling == pytest.approx(3.0)


def test_init_is_peft_default():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(400, 20), r=50, alpha=1)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt 5): gain sqrt(1/3), bound gain*sqrt(3/fan_in)
    a = layer.lora_A.detach()
    assert a.abs().max() <= bound
    assert a.abs().max() > 0.95 * bound  # 20,000 draws fill the interval
    assert abs(a.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    # the same seed gives the same A
    torch.manual_seed(0)
    assert torch.equal(LoRALinear(nn.Linear(400, 20), r=50, alpha=1).lora_A, layer.lora_A)


def test_output_unchanged_at_init():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    expected = base(x)
    layer = LoRALinear(base, r=2, alpha=16, dropout=0.3)
    assert torch.equal(layer(x), expected)
    model = MLP()
    y0 = model(x)
    add_lora(model, ["fc1", "fc2"], r=4, alpha=8)
    assert torch.equal(model(x), y0)


def test_forward_formula_and_dropout_only_on_branch():
    torch.manual_seed(0)
    layer = trained_like(LoRALinear(nn.Linear(6, 4), r=2, alpha=3, dropout=0.5))
    x = torch.randn(9, 6)
    layer.eval()
    expected = layer.base(x) + 1.5 * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    # in training mode the base path sees the clean x: output - base(x) is the branch on a dropped x
    layer.train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(y, layer.base(x) + 1.5 * (dropped @ layer.lora_A.T) @ layer.lora_B.T,
                               rtol=0, atol=1e-6)
    assert not torch.allclose(y, expected)


def test_batched_inputs_of_any_leading_shape():
    layer = trained_like(LoRALinear(nn.Linear(6, 4), r=2, alpha=2))
    x = torch.randn(2, 3, 6)
    assert layer(x).shape == (2, 3, 4)
    torch.testing.assert_close(layer(x)[1, 2], layer(x[1, 2]))


def test_only_lora_factors_get_gradients():
    torch.manual_seed(0)
    model = Nested()
    add_lora(model, ["q", "v"], r=2, alpha=4)
    for layer in lora_layers(model).values():
        trained_like(layer)
    loss = model(torch.randn(4, 5)).pow(2).sum()
    loss.backward()
    for name, p in model.named_parameters():
        is_lora = name.endswith(".lora_A") or name.endswith(".lora_B")
        assert p.requires_grad == is_lora, name
        assert (p.grad is not None) == is_lora, name
        if is_lora:
            assert p.grad.abs().sum() > 0, name


def test_a_equal_b_zero_nothing_learns_but_b_zero_alone_does():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), r=2, alpha=2)
    x = torch.randn(8, 6)
    layer(x).pow(2).sum().backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0      # dL/dA = scaling Bᵀ g xᵀ = 0 while B = 0
    assert torch.count_nonzero(layer.lora_B.grad) > 0       # dL/dB = scaling g (A x)ᵀ ≠ 0
    with torch.no_grad():
        layer.lora_A.zero_()
    layer.zero_grad()
    layer(x).pow(2).sum().backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.lora_B.grad) == 0


def test_merge_unmerge_outputs_and_restore():
    torch.manual_seed(0)
    layer = trained_like(LoRALinear(nn.Linear(16, 12), r=4, alpha=8))
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(10, 16)
    y_unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, w0 + 2.0 * layer.lora_B @ layer.lora_A, rtol=0, atol=1e-6)
    y_merged = layer(x)
    torch.testing.assert_close(y_merged, layer.base(x), rtol=0, atol=0)  # merged = the plain layer
    assert (y_merged - y_unmerged).abs().max() <= 1e-5
    layer.unmerge()
    assert not layer.merged
    assert (layer.base.weight - w0).abs().max() <= 1e-6


def test_hundred_merge_cycles_drift_below_1e_5():
    torch.manual_seed(0)
    model = add_lora(Nested(d=32), ["q", "v", "head"], r=8, alpha=16)
    for i, layer in enumerate(lora_layers(model).values()):
        trained_like(layer, seed=i)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(100):
        merge_lora(model)
        unmerge_lora(model)
    drift = max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert drift <= 1e-5, drift


def test_merge_twice_raises_and_never_applies_delta_twice():
    layer = trained_like(LoRALinear(nn.Linear(5, 3), r=2, alpha=2))
    layer.merge()
    merged_weight = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, merged_weight) and layer.merged
    layer.unmerge()
    restored = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()
    assert torch.equal(layer.base.weight, restored) and not layer.merged


def test_merged_and_unmerged_model_outputs_agree():
    torch.manual_seed(0)
    model = add_lora(Nested(), r"blocks\.\d+\.mlp\.[02]", r=3, alpha=5)
    for i, layer in enumerate(lora_layers(model).values()):
        trained_like(layer, seed=i)
    x = torch.randn(7, 5)
    y = model(x)
    assert merge_lora(model) is model
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-5)
    assert unmerge_lora(model) is model
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-5)


def test_add_lora_by_list_suffix_and_full_name():
    model = Nested()
    assert add_lora(model, ["q", "blocks.1.v"], r=2, alpha=2) is model
    assert sorted(lora_layers(model)) == ["blocks.0.q", "blocks.1.q", "blocks.1.v"]
    assert isinstance(model.blocks[0].v, nn.Linear) and not isinstance(model.blocks[0].v, LoRALinear)


def test_add_lora_by_regex_is_a_full_match():
    model = Nested()
    add_lora(model, r"blocks\.0\.(q|v|mlp\.[02])", r=2, alpha=2)
    assert sorted(lora_layers(model)) == ["blocks.0.mlp.0", "blocks.0.mlp.2", "blocks.0.q", "blocks.0.v"]
    # "q" as a regex must match the whole name, so it selects nothing in a model whose q's are nested
    assert not target_matches("blocks.0.q", "q") and target_matches("blocks.0.q", ["q"])


def test_add_lora_freezes_every_other_parameter_and_counts():
    model = Nested(d=8)
    add_lora(model, ["q"], r=2, alpha=2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * 2 * (8 + 8)  # two q layers, r (in + out) each
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "head.weight" in frozen and "blocks.0.norm.weight" in frozen


def test_add_lora_in_two_steps_keeps_existing_layers():
    model = Nested()
    add_lora(model, ["q"], r=2, alpha=2)
    add_lora(model, ["v"], r=4, alpha=4)
    layers = lora_layers(model)
    assert sorted(layers) == ["blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.v"]
    assert all(l.lora_A.requires_grad for l in layers.values())
    assert layers["blocks.0.q"].r == 2 and layers["blocks.0.v"].r == 4


def test_find_target_modules_changes_nothing():
    model = Nested()
    before = repr(model)
    assert find_target_modules(model, ["head", "embed"]) == ["embed", "head"]
    assert repr(model) == before


def test_lora_state_dict_has_only_lora_tensors_and_round_trips():
    torch.manual_seed(0)
    model = add_lora(MLP(), ["fc1", "fc2"], r=2, alpha=4)
    for i, layer in enumerate(lora_layers(model).values()):
        trained_like(layer, seed=i)
    sd = lora_state_dict(model)
    assert sorted(sd) == ["fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B"]
    assert sd["fc1.lora_A"].shape == (2, 6) and sd["fc2.lora_B"].shape == (4, 2)
    x = torch.randn(3, 6)
    y = model(x)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for layer in lora_layers(other).values():
            layer.lora_A.zero_()
            layer.lora_B.zero_()
    assert not torch.equal(other(x), y)
    missing, unexpected = other.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and sorted(missing) == sorted(k for k in model.state_dict() if "lora" not in k)
    assert torch.equal(other(x), y)


def test_extra_repr_names_the_settings():
    text = repr(LoRALinear(nn.Linear(3, 2), r=2, alpha=4, use_rslora=True))
    assert "r=2" in text and "alpha/sqrt(r)" in text and "merged=False" in text


def test_half_precision_merge_stays_in_weight_dtype():
    base = nn.Linear(8, 8).to(torch.bfloat16)
    layer = trained_like(LoRALinear(base, r=2, alpha=2))
    assert layer.lora_A.dtype == torch.bfloat16 and layer.lora_B.dtype == torch.bfloat16
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    y = layer(torch.randn(2, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_layer_lives_on_the_base_device():
    base = nn.Linear(8, 4).cuda()
    cpu_base = nn.Linear(8, 4)  # made before seeding: its own init must not shift the generator
    torch.manual_seed(0)
    layer = LoRALinear(base, r=2, alpha=2)
    torch.manual_seed(0)
    cpu_layer = LoRALinear(cpu_base, r=2, alpha=2)
    assert layer.lora_A.device.type == "cuda" and layer.lora_B.device.type == "cuda"
    assert torch.equal(layer.lora_A.cpu(), cpu_layer.lora_A)  # same init on every device
    trained_like(layer)
    x = torch.randn(3, 8, device="cuda")
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=0, atol=1e-5)
    layer.unmerge()
