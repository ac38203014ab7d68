"""The exercise checks of notebook 04: a right answer passes, wrong answers say what and by how much."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu import LoraConfig, LoRALinear
from lora_edu.checks import NOT_ANSWERED
from lora_edu.exercises import nb04


@pytest.fixture
def layer():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(5, 3), LoraConfig(r=2, lora_alpha=6))
    with torch.no_grad():
        layer.lora_B["default"].normal_()
    return layer


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))


def test_unanswered(layer):
    x = torch.randn(4, 5)
    for result in (nb04.check_scaling(NOT_ANSWERED, 16, 8), nb04.check_lora_output(NOT_ANSWERED, x, layer),
                   nb04.check_delta_weight(NOT_ANSWERED, layer),
                   nb04.check_trainable_parameters(NOT_ANSWERED, small_model(), ["0", "2"], 2)):
        assert result.passed is None and "not answered yet" in str(result)


def test_scaling():
    assert nb04.check_scaling(2.0, 16, 8)
    assert nb04.check_scaling(16 / math.sqrt(8), 16, 8, use_rslora=True)
    wrong = nb04.check_scaling(16, 16, 8)
    assert not wrong and "too high" in wrong.message and "α itself" in wrong.message and "14" not in wrong.message
    other_rule = nb04.check_scaling(2.0, 16, 8, use_rslora=True)
    assert not other_rule and "rsLoRA" in other_rule.message
    assert "upside down" in nb04.check_scaling(0.5, 16, 8).message
    assert "expected a number" in nb04.check_scaling("two", 16, 8).message


def test_lora_output(layer):
    x = torch.randn(4, 5)
    layer.eval()
    branch = (x @ layer.lora_A["default"].T) @ layer.lora_B["default"].T
    right = layer.base(x) + 3.0 * branch
    assert nb04.check_lora_output(right, x, layer)
    assert nb04.check_lora_output(layer(x), x, layer)
    frozen_only = nb04.check_lora_output(layer.base(x), x, layer)
    assert not frozen_only and "frozen layer alone" in frozen_only.message
    assert "entries are off; the worst is at index" in frozen_only.message
    no_scaling = nb04.check_lora_output(layer.base(x) + branch, x, layer)
    assert not no_scaling and "missing its scaling" in no_scaling.message
    alpha = nb04.check_lora_output(layer.base(x) + 6 * branch, x, layer)
    assert not alpha and "scaled by α" in alpha.message
    transposed = nb04.check_lora_output(right.T, x, layer)
    assert not transposed and "shape (3, 4), expected (4, 3)" in transposed.message


def test_delta_weight(layer):
    right = 3.0 * layer.lora_B["default"] @ layer.lora_A["default"]
    assert nb04.check_delta_weight(right, layer)
    unscaled = nb04.check_delta_weight(layer.lora_B["default"] @ layer.lora_A["default"], layer)
    assert not unscaled and "carries the scaling" in unscaled.message
    merged = nb04.check_delta_weight(layer.base.weight + right, layer)
    assert not merged and "merged weight" in merged.message
    transposed = nb04.check_delta_weight(right.T, layer)
    assert not transposed and "has shape (5, 3), expected (3, 5)" in transposed.message


def test_trainable_parameters():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(9)
    assert nb04.check_trainable_parameters(2 * (10 + 20) + 2 * (20 + 4), model, ["0", "2"], r=2)
    after_check = torch.rand(3)
    torch.manual_seed(9)
    assert torch.equal(torch.rand(3), after_check)  # the check drew no random numbers of the learner's
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # model untouched
    assert all(p.requires_grad for p in model.parameters())
    everything = nb04.check_trainable_parameters(10 * 20 + 20 + 20 * 4 + 4, model, ["0", "2"], r=2)
    assert not everything and "counts every parameter" in everything.message
    only_a = nb04.check_trainable_parameters(2 * 10 + 2 * 20, model, ["0", "2"], r=2)
    assert not only_a and "only the A's" in only_a.message and "too low" in only_a.message
    dense = nb04.check_trainable_parameters(10 * 20 + 20 * 4, model, ["0", "2"], r=2)
    assert not dense and "dense ΔW" in dense.message
    assert "whole number" in nb04.check_trainable_parameters(12.5, model, ["0", "2"], r=2).message
    assert nb04.check_trainable_parameters(108.0, model, ["0", "2"], r=2)


def test_lora_output_refuses_a_merged_layer(layer):
    x = torch.randn(4, 5)
    true_output = layer(x).detach()
    layer.merge()
    merged = nb04.check_lora_output(true_output, x, layer)  # would count ΔW twice if checked against base.weight
    assert not merged and "layer_ex is merged" in merged.message and "layer_ex.unmerge() first" in merged.message
    by_merged_weight = nb04.check_lora_output(x @ layer.base.weight.T + layer.base.bias, x, layer)
    assert not by_merged_weight and "unmerge" in by_merged_weight.message
    layer.unmerge()
    assert nb04.check_lora_output(true_output, x, layer)


def test_delta_weight_is_the_same_for_a_merged_layer(layer):
    w0 = layer.base.weight.detach().clone()
    right = 3.0 * layer.lora_B["default"] @ layer.lora_A["default"]
    layer.merge()
    assert nb04.check_delta_weight(right, layer)
    assert nb04.check_delta_weight(layer.base.weight - w0, layer)      # measured from merge() itself
    merged_weight = nb04.check_delta_weight(layer.base.weight, layer)   # W0 + ΔW, not ΔW
    assert not merged_weight and "merged weight" in merged_weight.message


def test_answer_types_are_accepted_consistently(layer):
    model = small_model()
    for right in (108, 108.0, np.int64(108), np.array(108), torch.tensor(108), torch.tensor(108.0)):
        assert nb04.check_trainable_parameters(right, model, ["0", "2"], r=2), right
    for wrong in ("108", True, torch.tensor(True), None, torch.tensor(12.5)):
        result = nb04.check_trainable_parameters(wrong, model, ["0", "2"], r=2)
        assert not result and ("whole number" in result.message or "expected a number" in result.message)
    off = nb04.check_trainable_parameters(torch.tensor(110), model, ["0", "2"], r=2)
    assert not off and "too high (within 10 %)" in off.message
    for right in (2.0, 2, np.float64(2.0), torch.tensor(2.0)):
        assert nb04.check_scaling(right, 16, 8), right
    assert not nb04.check_scaling(True, 16, 8) and not nb04.check_scaling("2", 16, 8)
    right_delta = 3.0 * layer.lora_B["default"] @ layer.lora_A["default"]
    assert nb04.check_delta_weight(right_delta.detach().numpy(), layer)
