"""Invariants of lora_edu.lora: the layer, injection by module name, merge/unmerge (notebook 04)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lora_edu
from lora_edu.lora import LoraConfig, LoRALinear, add_lora, find_target_modules, lora_layers, lora_state_dict, \
    merge_lora, target_matches, unmerge_lora
from toy_models import MLP, Nested


def trained_like(layer: LoRALinear, seed=1, adapter="default"):
    """Give B non-zero values, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        b = layer.lora_B[adapter]
        b.copy_(torch.randn(b.shape, generator=g))
    return layer


def cfg(targets=None, r=2, alpha=2, **kwargs) -> LoraConfig:
    return LoraConfig(target_modules=targets, r=r, lora_alpha=alpha, **kwargs)


def test_exported_at_top_level():
    for name in ("LoraConfig", "LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "lora_state_dict"):
        assert hasattr(lora_edu, name), name


def test_shapes_scaling_and_frozen_base():
    base = nn.Linear(7, 5)
    layer = LoRALinear(base, cfg(r=3, alpha=6))
    assert layer.base is base
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    assert isinstance(a, nn.Parameter) and a.shape == (3, 7)
    assert isinstance(b, nn.Parameter) and b.shape == (5, 3)
    assert layer.scaling["default"] == 2.0
    assert layer.r["default"] == 3 and layer.lora_alpha["default"] == 6
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert a.requires_grad and b.requires_grad  # a layer on its own trains its adapter
    assert layer.merged is False and layer.merged_adapters == []
    assert layer.active_adapter == "default"
    rs = LoRALinear(nn.Linear(7, 5), cfg(r=4, alpha=6, use_rslora=True))
    assert rs.scaling["default"] == pytest.approx(3.0)


def test_lora_factors_are_trainable_after_add_lora():
    model = add_lora(MLP(), cfg(["fc1"], r=3, alpha=6))
    assert model.fc1.lora_A["default"].requires_grad and model.fc1.lora_B["default"].requires_grad
    assert not model.fc1.base.weight.requires_grad


def test_init_is_peft_default():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(400, 20), cfg(r=50, alpha=1))
    assert torch.count_nonzero(layer.lora_B["default"]) == 0
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt 5): gain sqrt(1/3), bound gain*sqrt(3/fan_in)
    a = layer.lora_A["default"].detach()
    assert a.abs().max() <= bound
    assert a.abs().max() > 0.95 * bound  # 20,000 draws fill the interval
    assert abs(a.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    # the same seed gives the same A
    torch.manual_seed(0)
    assert torch.equal(LoRALinear(nn.Linear(400, 20), cfg(r=50, alpha=1)).lora_A["default"], a)


def test_output_unchanged_at_init():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    expected = base(x)
    layer = LoRALinear(base, cfg(r=2, alpha=16, lora_dropout=0.3))
    assert torch.equal(layer(x), expected)
    model = MLP()
    y0 = model(x)
    add_lora(model, cfg(["fc1", "fc2"], r=4, alpha=8))
    assert torch.equal(model(x), y0)


def test_forward_formula_and_dropout_only_on_branch():
    torch.manual_seed(0)
    layer = trained_like(LoRALinear(nn.Linear(6, 4), cfg(r=2, alpha=3, lora_dropout=0.5)))
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    x = torch.randn(9, 6)
    layer.eval()
    expected = layer.base(x) + 1.5 * (x @ a.T) @ b.T
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    # in training mode the base path sees the clean x: output - base(x) is the branch on a dropped x
    layer.train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(y, layer.base(x) + 1.5 * (dropped @ a.T) @ b.T, rtol=0, atol=1e-6)
    assert not torch.allclose(y, expected)


def test_batched_inputs_of_any_leading_shape():
    layer = trained_like(LoRALinear(nn.Linear(6, 4), cfg(r=2, alpha=2)))
    x = torch.randn(2, 3, 6)
    assert layer(x).shape == (2, 3, 4)
    torch.testing.assert_close(layer(x)[1, 2], layer(x[1, 2]))


def test_only_lora_factors_get_gradients():
    torch.manual_seed(0)
    model = Nested()
    add_lora(model, cfg(["q", "v"], r=2, alpha=4))
    for layer in lora_layers(model).values():
        trained_like(layer)
    loss = model(torch.randn(4, 5)).pow(2).sum()
    loss.backward()
    for name, p in model.named_parameters():
        is_lora = name.endswith(".lora_A.default") or name.endswith(".lora_B.default")
        assert p.requires_grad == is_lora, name
        assert (p.grad is not None) == is_lora, name
        if is_lora:
            assert p.grad.abs().sum() > 0, name


def test_a_equal_b_zero_nothing_learns_but_b_zero_alone_does():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), cfg(r=2, alpha=2))
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    x = torch.randn(8, 6)
    layer(x).pow(2).sum().backward()
    assert torch.count_nonzero(a.grad) == 0      # dL/dA = scaling Bᵀ g xᵀ = 0 while B = 0
    assert torch.count_nonzero(b.grad) > 0       # dL/dB = scaling g (A x)ᵀ ≠ 0
    with torch.no_grad():
        a.zero_()
    layer.zero_grad()
    layer(x).pow(2).sum().backward()
    assert torch.count_nonzero(a.grad) == 0 and torch.count_nonzero(b.grad) == 0


def test_merge_unmerge_outputs_and_restore():
    torch.manual_seed(0)
    layer = trained_like(LoRALinear(nn.Linear(16, 12), cfg(r=4, alpha=8)))
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(10, 16)
    y_unmerged = layer(x)
    layer.merge()
    assert layer.merged and layer.merged_adapters == ["default"]
    torch.testing.assert_close(layer.base.weight, w0 + 2.0 * b @ a, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * b @ a, rtol=0, atol=1e-6)
    y_merged = layer(x)
    torch.testing.assert_close(y_merged, layer.base(x), rtol=0, atol=0)  # merged = the plain layer
    assert (y_merged - y_unmerged).abs().max() <= 1e-5
    layer.unmerge()
    assert not layer.merged
    assert (layer.base.weight - w0).abs().max() <= 1e-6


def test_hundred_merge_cycles_drift_below_1e_5():
    torch.manual_seed(0)
    model = add_lora(Nested(d=32), cfg(["q", "v", "head"], r=8, alpha=16))
    for i, layer in enumerate(lora_layers(model).values()):
        trained_like(layer, seed=i)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(100):
        merge_lora(model)
        unmerge_lora(model)
    drift = max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert drift <= 1e-5, drift


def test_merge_twice_raises_and_never_applies_delta_twice():
    layer = trained_like(LoRALinear(nn.Linear(5, 3), cfg(r=2, alpha=2)))
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
    model = add_lora(Nested(), cfg(r"blocks\.\d+\.mlp\.[02]", r=3, alpha=5))
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
    assert add_lora(model, cfg(["q", "blocks.1.v"])) is model
    assert sorted(lora_layers(model)) == ["blocks.0.q", "blocks.1.q", "blocks.1.v"]
    assert isinstance(model.blocks[0].v, nn.Linear) and not isinstance(model.blocks[0].v, LoRALinear)


def test_add_lora_by_regex_is_a_full_match():
    model = Nested()
    add_lora(model, cfg(r"blocks\.0\.(q|v|mlp\.[02])"))
    assert sorted(lora_layers(model)) == ["blocks.0.mlp.0", "blocks.0.mlp.2", "blocks.0.q", "blocks.0.v"]
    # "q" as a regex must match the whole name, so it selects nothing in a model whose q's are nested
    assert not target_matches("blocks.0.q", "q") and target_matches("blocks.0.q", ["q"])


def test_add_lora_freezes_every_other_parameter_and_counts():
    model = Nested(d=8)
    add_lora(model, cfg(["q"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * 2 * (8 + 8)  # two q layers, r (in + out) each
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "head.weight" in frozen and "blocks.0.norm.weight" in frozen


def test_add_lora_in_two_steps_keeps_existing_layers():
    """A second add_lora adds a second, named adapter; the first one's layers and factors stay as they were
    (and stay the trainable ones: the new adapter arrives frozen, as in PEFT's add_adapter)."""
    model = Nested()
    add_lora(model, cfg(["q"], r=2, alpha=2))
    first = {n: l.lora_A["default"].detach().clone() for n, l in lora_layers(model).items()}
    add_lora(model, cfg(["v"], r=4, alpha=4), "second")
    layers = lora_layers(model)
    assert sorted(layers) == ["blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.v"]
    for name in ("blocks.0.q", "blocks.1.q"):
        assert list(layers[name].lora_A) == ["default"] and layers[name].r["default"] == 2
        assert torch.equal(layers[name].lora_A["default"], first[name])
        assert layers[name].lora_A["default"].requires_grad
    for name in ("blocks.0.v", "blocks.1.v"):
        assert list(layers[name].lora_A) == ["second"] and layers[name].r["second"] == 4
        assert not layers[name].lora_A["second"].requires_grad
    assert all(l.active_adapter == "default" for l in layers.values())


def test_find_target_modules_changes_nothing():
    model = Nested()
    before = repr(model)
    assert find_target_modules(model, ["head", "embed"]) == ["embed", "head"]
    assert repr(model) == before


def test_lora_state_dict_has_only_lora_tensors_and_round_trips():
    torch.manual_seed(0)
    model = add_lora(MLP(), cfg(["fc1", "fc2"], r=2, alpha=4))
    for i, layer in enumerate(lora_layers(model).values()):
        trained_like(layer, seed=i)
    sd = lora_state_dict(model)
    assert sorted(sd) == ["fc1.lora_A.default", "fc1.lora_B.default", "fc2.lora_A.default", "fc2.lora_B.default"]
    assert sd["fc1.lora_A.default"].shape == (2, 6) and sd["fc2.lora_B.default"].shape == (4, 2)
    x = torch.randn(3, 6)
    y = model(x)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for layer in lora_layers(other).values():
            layer.lora_A["default"].zero_()
            layer.lora_B["default"].zero_()
    assert not torch.equal(other(x), y)
    missing, unexpected = other.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and sorted(missing) == sorted(k for k in model.state_dict() if "lora" not in k)
    assert torch.equal(other(x), y)


def test_extra_repr_names_the_settings():
    text = repr(LoRALinear(nn.Linear(3, 2), cfg(r=2, alpha=4, use_rslora=True)))
    assert "r=2" in text and "lora_alpha=4" in text and "alpha/sqrt(r)" in text
    assert "active='default'" in text and "merged=[]" in text


def test_half_precision_merge_stays_in_weight_dtype():
    base = nn.Linear(8, 8).to(torch.bfloat16)
    layer = trained_like(LoRALinear(base, cfg(r=2, alpha=2)))
    assert layer.lora_A["default"].dtype == torch.bfloat16 and layer.lora_B["default"].dtype == torch.bfloat16
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    y = layer(torch.randn(2, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_draw_false_leaves_factors_at_zero_and_draws_nothing():
    base = nn.Linear(6, 4)
    torch.manual_seed(5)
    layer = LoRALinear(base, cfg(r=2, alpha=2), draw=False)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)
    assert torch.count_nonzero(layer.lora_A["default"]) == 0 and torch.count_nonzero(layer.lora_B["default"]) == 0


def test_init_lora_weights_false_and_gaussian():
    torch.manual_seed(0)
    both = LoRALinear(nn.Linear(50, 40), cfg(r=8, alpha=8, init_lora_weights=False))
    assert torch.count_nonzero(both.lora_B["default"]) == 40 * 8  # ΔW ≠ 0 from the start
    assert both.lora_B["default"].abs().max() <= 1 / math.sqrt(8)
    gauss = LoRALinear(nn.Linear(400, 20), cfg(r=50, alpha=8, init_lora_weights="gaussian"))
    assert torch.count_nonzero(gauss.lora_B["default"]) == 0
    assert abs(gauss.lora_A["default"].std().item() - 1 / 50) < 0.05 / 50


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_layer_lives_on_the_base_device():
    base = nn.Linear(8, 4).cuda()
    cpu_base = nn.Linear(8, 4)  # made before seeding: its own init must not shift the generator
    torch.manual_seed(0)
    layer = LoRALinear(base, cfg(r=2, alpha=2))
    torch.manual_seed(0)
    cpu_layer = LoRALinear(cpu_base, cfg(r=2, alpha=2))
    assert layer.lora_A["default"].device.type == "cuda" and layer.lora_B["default"].device.type == "cuda"
    assert torch.equal(layer.lora_A["default"].cpu(), cpu_layer.lora_A["default"])  # same init on every device
    trained_like(layer)
    x = torch.randn(3, 8, device="cuda")
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=0, atol=1e-5)
    layer.unmerge()
