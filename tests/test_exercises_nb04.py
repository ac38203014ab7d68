"""The exercise checks of notebook 04: a right answer passes, wrong answers say what and by how much, and the
build-it checks refuse the package's shortcuts (calling the layer, merge(), merge_lora, delta_weight)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import lora_edu
from lora_edu import LoraConfig
from lora_edu.checks import NOT_ANSWERED, reveal
from lora_edu.exercises import nb04


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))


# --- Exercise 2 (build it): the forward pass ---

def lora_forward(x, layer):
    h = x @ layer.base.weight.T
    if layer.base.bias is not None:
        h = h + layer.base.bias
    return h + layer.scaling["default"] * (x @ layer.lora_A["default"].T) @ layer.lora_B["default"].T


def stub(*args): ...


def test_lora_forward_solution_passes_and_stub_is_unanswered():
    assert nb04.check_lora_forward(lora_forward)
    assert nb04.check_lora_forward(stub).passed is None
    state = torch.random.get_rng_state()
    nb04.check_lora_forward(lora_forward)
    assert torch.equal(state, torch.random.get_rng_state()), "the check must not move the learner's random numbers"


@pytest.mark.parametrize("shortcut", [lambda x, layer: layer(x), lambda x, layer: layer.forward(x),
                                      lambda x, layer: nn.Module.__call__(layer, x),
                                      lambda x, layer: layer.lora_variant["default"].forward(layer, "default", x,
                                                                                             layer.base(x))])
def test_lora_forward_calling_the_layer_fails(shortcut):
    result = nb04.check_lora_forward(shortcut)
    assert result.passed is False and "which the task forbids" in result.message, result.message
    x = torch.randn(2, 5)
    layer = lora_edu.LoRALinear(nn.Linear(5, 3), LoraConfig(r=2))
    assert layer(x).shape == (2, 3), "the forbidden layer works again after the check"


def biased(x, layer):
    return x @ layer.base.weight.T + layer.base.bias + layer.scaling["default"] * (
        x @ layer.lora_A["default"].T) @ layer.lora_B["default"].T


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda x, layer: layer.base(x), "frozen layer alone"),
    (lambda x, layer: layer.base(x) + (x @ layer.lora_A["default"].T) @ layer.lora_B["default"].T,
     "missing its scaling"),
    (lambda x, layer: layer.base(x) + layer.lora_alpha["default"] * (x @ layer.lora_A["default"].T)
     @ layer.lora_B["default"].T, "scaled by α"),
    (lambda x, layer: layer.base(x) + layer.lora_alpha["default"] / layer.r["default"] * (
        x @ layer.lora_A["default"].T) @ layer.lora_B["default"].T, "rsLoRA"),
    (lambda x, layer: x @ layer.base.weight.T + layer.scaling["default"] * (x @ layer.lora_A["default"].T)
     @ layer.lora_B["default"].T, "bias is missing"),
    (lambda x, layer: lora_forward(x, layer).T, "shape"),
    (biased, "no bias: base.bias is None"),
    (lambda x, layer: lora_forward(x, layer).reshape(-1, layer.out_features), "case 4"),
    (lambda x, layer: layer.base(x) + layer.scaling["default"] * x @ layer.lora_A["default"] @ layer.lora_B["default"],
     "multiply by their transposes"),
])
def test_lora_forward_mistakes_are_diagnosed(wrong, diagnosis):
    result = nb04.check_lora_forward(wrong)
    assert result.passed is False and diagnosis in result.message, result.message


# --- Exercise 3 (build it): merge and unmerge ---

def merge(layer):
    name = layer.active_adapter
    with torch.no_grad():
        layer.base.weight += layer.scaling[name] * layer.lora_B[name] @ layer.lora_A[name]
    layer.merged_adapters.append(name)


def unmerge(layer):
    name = layer.active_adapter
    with torch.no_grad():
        layer.base.weight -= layer.scaling[name] * layer.lora_B[name] @ layer.lora_A[name]
    layer.merged_adapters.remove(name)


def test_merge_solution_passes_and_stubs_are_unanswered():
    assert nb04.check_merge(merge, unmerge)
    assert nb04.check_merge(stub, stub).passed is None
    unchanged = nb04.check_merge(merge, stub)
    assert not unchanged and "after your unmerge, base.weight is unchanged" in unchanged.message


@pytest.mark.parametrize("merge_way, unmerge_way, forbidden", [
    (lambda layer: layer.merge(), unmerge, "layer.merge()"),
    (merge, lambda layer: layer.unmerge(), "layer.unmerge()"),
    (lambda layer: lora_edu.merge_lora(layer), unmerge, "lora_edu.merge_lora"),
    (merge, lambda layer: lora_edu.unmerge_lora(layer), "lora_edu.unmerge_lora"),
    (lambda layer: layer.base.weight.data.add_(layer.delta_weight()) and layer.merged_adapters.append("default"),
     unmerge, "layer.delta_weight()"),
])
def test_merge_shortcuts_fail(merge_way, unmerge_way, forbidden):
    result = nb04.check_merge(merge_way, unmerge_way)
    assert result.passed is False and forbidden in result.message and "forbids" in result.message, result.message
    layer = lora_edu.LoRALinear(nn.Linear(4, 3), LoraConfig(r=2, init_lora_weights=False))
    w0 = layer.base.weight.clone()
    lora_edu.unmerge_lora(lora_edu.merge_lora(layer))   # the package's own functions are back
    assert torch.allclose(layer.base.weight, w0, atol=1e-6)


def merge_twice_active(layer):
    with torch.no_grad():
        layer.base.weight += layer.scaling["default"] * layer.lora_B["default"] @ layer.lora_A["default"]


def unmerge_keeping_the_record(layer):
    with torch.no_grad():
        layer.base.weight -= layer.scaling["default"] * layer.lora_B["default"] @ layer.lora_A["default"]


def merge_without_scaling(layer):
    with torch.no_grad():
        layer.base.weight += layer.lora_B["default"] @ layer.lora_A["default"]
    layer.merged_adapters.append("default")


def merge_subtracting(layer):
    with torch.no_grad():
        layer.base.weight -= layer.scaling["default"] * layer.lora_B["default"] @ layer.lora_A["default"]
    layer.merged_adapters.append("default")


def merge_new_parameter(layer):
    delta = layer.scaling["default"] * layer.lora_B["default"] @ layer.lora_A["default"]
    layer.base.weight = nn.Parameter(layer.base.weight + delta)
    layer.merged_adapters.append("default")


def unmerge_adding(layer):
    with torch.no_grad():
        layer.base.weight += layer.scaling["default"] * layer.lora_B["default"] @ layer.lora_A["default"]
    layer.merged_adapters.remove("default")


def merge_with_autograd(layer):
    layer.base.weight += layer.scaling["default"] * layer.lora_B["default"] @ layer.lora_A["default"]
    layer.merged_adapters.append("default")


def merge_touching_b(layer):
    merge(layer)
    with torch.no_grad():
        layer.lora_B["default"].zero_()


@pytest.mark.parametrize("merge_way, unmerge_way, diagnosis", [
    (merge_twice_active, unmerge, "the adapter is active twice"),
    (merge, unmerge_keeping_the_record, "still counts as merged"),
    (merge_without_scaling, unmerge, "without the scaling"),
    (merge_subtracting, unmerge, "you subtracted ΔW"),
    (merge_new_parameter, unmerge, "requires a gradient"),
    (merge, unmerge_adding, "added ΔW a second time"),
    (merge_touching_b, unmerge, "changed lora_A or lora_B"),
    (lambda layer: 1 / 0, unmerge, "ZeroDivisionError"),
    (merge_with_autograd, unmerge, "with torch.no_grad()"),
])
def test_merge_mistakes_are_diagnosed(merge_way, unmerge_way, diagnosis):
    result = nb04.check_merge(merge_way, unmerge_way)
    assert result.passed is False and diagnosis in result.message, result.message


def test_build_it_reveals_on_request():
    assert "layer.scaling['default']" in reveal(nb04.check_lora_forward).message
    assert "merged_adapters.append" in reveal(nb04.check_merge, unmerge).message


# --- Value checks ---

def test_unanswered():
    for result in (nb04.check_scaling(NOT_ANSWERED, 16, 8),
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


def test_answer_types_are_accepted_consistently():
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


# --- Exercise 5: predict, then measure ---

def fresh_experiment():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    model = lora_edu.add_lora(model, LoraConfig(target_modules=["0", "2"], r=2, lora_alpha=4))
    x = torch.randn(32, 6)
    return model, x, torch.randn(32, 3)


def test_gradient_counts():
    model, x, y = fresh_experiment()
    a_entries, b_entries = 2 * 6 + 2 * 8, 8 * 2 + 3 * 2
    assert nb04.measure_gradient_counts(model, x, y, 1e-2) == (b_entries, a_entries + b_entries)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert nb04.check_gradient_counts((b_entries, a_entries + b_entries), model, x, y, lr=1e-2)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # measured on a copy
    assert all(p.grad is None for p in model.parameters())
    both = nb04.check_gradient_counts((a_entries + b_entries, a_entries + b_entries), model, x, y, lr=1e-2)
    assert not both and "first step" in both.message and "B = 0" in both.message and "second" not in both.message
    still = nb04.check_gradient_counts((b_entries, b_entries), model, x, y, lr=1e-2)
    assert not still and "B ≠ 0" in still.message
    assert "two whole numbers" in nb04.check_gradient_counts(22, model, x, y, lr=1e-2).message
    assert nb04.check_gradient_counts(NOT_ANSWERED, model, x, y, lr=1e-2).passed is None
    shown = reveal(nb04.check_gradient_counts, model, x, y, lr=1e-2).message
    assert f"({b_entries}, {a_entries + b_entries})" in shown
