"""The checks of notebook 08's exercises: each solution passes, each usual mistake fails with its diagnosis, and no
failure message gives the expected value away (the value checks are also in test_checks_do_not_reveal.py)."""
import copy

import pytest
import torch

from lora_edu.checks import NOT_ANSWERED, reveal
from lora_edu.exercises import nb08

peft = pytest.importorskip("peft")


def solution(budget):
    r = budget // (3 * 2 * (96 + 96))
    return peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def test_budget_config_solution_passes_and_stub_is_unanswered():
    assert nb08.check_budget_config(solution)
    assert nb08.check_budget_config(lambda budget: None).passed is None
    state = torch.random.get_rng_state()
    nb08.check_budget_config(solution)
    assert torch.equal(state, torch.random.get_rng_state()), "the check must not move the learner's random numbers"


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda b: peft.LoraConfig(r=b // 1152 + 1, lora_alpha=2 * (b // 1152 + 1), target_modules=["q_proj", "v_proj"]),
     "over the budget"),
    (lambda b: peft.LoraConfig(r=max(b // 1152 - 1, 1), lora_alpha=2 * max(b // 1152 - 1, 1),
                               target_modules=["q_proj", "v_proj"]), "a larger rank would fit"),
    (lambda b: peft.LoraConfig(r=b // 1152, lora_alpha=b // 1152, target_modules=["q_proj", "v_proj"]),
     "lora_alpha = 2 r"),
    (lambda b: peft.LoraConfig(r=b // 576, lora_alpha=2 * (b // 576), target_modules=["q_proj"]), "adapt exactly"),
    (lambda b: peft.LoraConfig(r=b // 1152, lora_alpha=2 * (b // 1152), target_modules="all-linear"),
     "adapt exactly"),
    (lambda b: {"r": 4}, "expected a peft.LoraConfig"),
    (lambda b: peft.LoraConfig(r=0), "refused the config"),
    (lambda b: 1 / 0, "ZeroDivisionError"),
])
def test_budget_config_mistakes_are_diagnosed(wrong, diagnosis):
    result = nb08.check_budget_config(wrong)
    assert result.passed is False and diagnosis in result.message, result.message
    for budget in nb08.BUDGETS:  # never the expected count or rank of the failing case
        expected = solution(budget)
        assert f"{nb08.lora_count(expected.r, ('q_proj', 'v_proj')):,}" not in result.message


def test_budget_config_counts_agree_with_peft():
    for budget in nb08.BUDGETS:
        count, kinds = nb08._count_with(solution(budget))
        assert count == nb08.lora_count(solution(budget).r, ("q_proj", "v_proj")) <= budget
        assert kinds == ["q_proj", "v_proj"]


def test_all_linear_count_agrees_with_peft():
    model = peft.get_peft_model(copy.deepcopy(nb08._base()), peft.LoraConfig(r=4, target_modules="all-linear"))
    trainable, _ = model.get_nb_trainable_parameters()
    assert nb08.check_all_linear_count(trainable, r=4)
    assert nb08.check_all_linear_count(NOT_ANSWERED, r=4).passed is None
    with_head = nb08.check_all_linear_count(trainable + 4 * (96 + 97), r=4)
    assert not with_head and "lm_head" in with_head.message
    one_block = nb08.check_all_linear_count(trainable // 3, r=4)
    assert not one_block and "one block" in one_block.message
    assert not nb08.check_all_linear_count(float(trainable), r=4)  # an int is asked for


def test_code_loss_drop():
    assert nb08.check_code_loss_drop(0.52, 2.30, 1.78)
    flipped = nb08.check_code_loss_drop(-0.52, 2.30, 1.78)
    assert not flipped and "the sign" in flipped.message
    ratio = nb08.check_code_loss_drop(1.78 / 2.30, 2.30, 1.78)
    assert not ratio and "ratio" in ratio.message


def test_bf16_spacing():
    assert nb08.check_bf16_spacing(2.0 ** -7)
    fp16 = nb08.check_bf16_spacing(2.0 ** -10)
    assert not fp16 and "float16" in fp16.message
    assert "0.0078125" in reveal(nb08.check_bf16_spacing).message
