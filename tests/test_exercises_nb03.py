"""Notebook 03's build-it savings calculator and its predict-then-measure exercise: the solution passes, the usual
mistakes are named with the failing case, the forbidden shortcuts fail, and no message shows the expected value."""
import pytest
import torch
from torch import nn

from lora_edu import counting
from lora_edu.checks import NOT_ANSWERED, reveal
from lora_edu.counting import lora_params, savings_ratio
from lora_edu.exercises import nb03


def lora_savings(d, k, r):
    lora = r * (d + k)
    return lora, d * k / lora


def stub(d, k, r): ...


def test_savings_solution_passes_and_stub_is_unanswered():
    assert nb03.check_lora_savings(lora_savings)
    assert nb03.check_lora_savings(stub).passed is None
    assert "r * (d + k)" in reveal(nb03.check_lora_savings).message


def test_savings_cases_cover_every_regime():
    regimes = {nb03._regime(d, k, r).split(":")[0] for d, k, r in nb03._savings_cases()}
    assert regimes == {"below the break-even rank", "at the break-even rank", "above the break-even rank"}
    assert any(d != k for d, k, _ in nb03._savings_cases())


@pytest.mark.parametrize("shortcut", [
    lambda d, k, r: (counting.lora_params(d, k, r), counting.savings_ratio(d, k, r)),
    lambda d, k, r: (r * (d + k), counting.savings_ratio(d, k, r)),
    lambda d, k, r: (lora_params(d, k, r), d * k / (r * (d + k))),       # imported by name
    lambda d, k, r: (r * (d + k), savings_ratio(d, k, r)),
])
def test_savings_shortcuts_fail(shortcut):
    result = nb03.check_lora_savings(shortcut)
    assert result.passed is False and "which the task forbids" in result.message, result.message
    assert counting.lora_params(10, 10, 2) == lora_params(10, 10, 2) == 40      # restored afterwards
    assert savings_ratio(2500, 2500, 8) == 156.25


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda d, k, r: (d * k, 1.0), "the dense matrix"),
    (lambda d, k, r: (r * d * k, 1.0), "add their sizes"),
    (lambda d, k, r: (2 * r * d, d / (2 * r)), "case 3 (d = 768, k = 3072, r = 16"),
    (lambda d, k, r: (r * (d + k), r * (d + k) / (d * k)), "upside down"),
    (lambda d, k, r: (r * (d + k), d / (2 * r)), "only for a square matrix"),
    (lambda d, k, r: (r * (d + k), (d * k) // (r * (d + k))), "integer division"),
    (lambda d, k, r: (r * (d + k), round(d * k / (r * (d + k)), 2)), "do not round"),
    (lambda d, k, r: (r * (d + k), max(1.0, d * k / (r * (d + k)))), "above the break-even rank"),
    (lambda d, k, r: r * (d + k), "expected two numbers"),
    (lambda d, k, r: (r * (d + k), d * k / (r * (d + k) - r * (d + k))), "ZeroDivisionError"),
])
def test_savings_mistakes_are_diagnosed(wrong, diagnosis):
    result = nb03.check_lora_savings(wrong)
    assert result.passed is False and diagnosis in result.message, result.message


def test_savings_failures_do_not_show_the_expected_values():
    for wrong in (lambda d, k, r: (r * (d + k) + 1, 1.0), lambda d, k, r: (r * (d + k), 1.01 * d * k / (r * (d + k)))):
        message = nb03.check_lora_savings(wrong).message
        d, k, r = 10, 10, 2                                                # case 1 fails
        assert "case 1" in message and "40," not in message and " 40 " not in message and "2.5" not in message


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_optimizer_state_prediction_is_measured():
    model = mlp()
    n = 2 * (32 + 16) + 2 * (16 + 4)
    right = 8 * n + 4 * 4                                   # m and v, and a 4-byte step for each of 4 tensors
    assert nb03.measure_optimizer_state(model, ["0", "4"], 2) == right
    state = torch.random.get_rng_state()
    assert nb03.check_optimizer_state(right, model, ["0", "4"], r=2)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())   # measured on a copy
    no_step = nb03.check_optimizer_state(8 * n, model, ["0", "4"], r=2)
    assert not no_step and "step counter" in no_step.message and "too low" in no_step.message
    full = nb03.check_optimizer_state(8 * sum(p.numel() for p in model.parameters()), model, ["0", "4"], r=2)
    assert not full and "full fine-tuning" in full.message
    with_weights = nb03.check_optimizer_state(16 * n + 16, model, ["0", "4"], r=2)
    assert not with_weights and "weights and gradients" in with_weights.message
    assert "whole number" in nb03.check_optimizer_state(10.5, model, ["0", "4"], r=2).message
    assert nb03.check_optimizer_state(NOT_ANSWERED, model, ["0", "4"], r=2).passed is None
    assert f"{right:,}" in reveal(nb03.check_optimizer_state, model, ["0", "4"], r=2).message
