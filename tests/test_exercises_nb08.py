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
     "lora_alpha = 2·r"),
    (lambda b: peft.LoraConfig(r=b // 768, lora_alpha=2 * (b // 768), target_modules=r".*layers\.[01]\..*(q|v)_proj"),
     "in only 2 of the 3 blocks"),
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
        count, kinds, blocks = nb08._count_with(solution(budget))
        assert count == nb08.lora_count(solution(budget).r, ("q_proj", "v_proj")) <= budget
        assert kinds == ["q_proj", "v_proj"] and blocks == 3


def test_budget_config_a_regex_over_every_block_passes():
    def every_block(budget):
        r = budget // 1152
        return peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=r".*layers\.\d+\.self_attn\.(q|v)_proj")

    assert nb08.check_budget_config(every_block)


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


def test_small_slice_weight():
    assert nb08.check_small_slice_weight(16 / (2 * 4), batch=16, small=4)
    assert nb08.check_small_slice_weight(NOT_ANSWERED).passed is None
    inverted = nb08.check_small_slice_weight(0.5, batch=16, small=4)
    assert not inverted and "inverted" in inverted.message
    large = nb08.check_small_slice_weight(16 / (2 * 12), batch=16, small=4)
    assert not large and "large slice" in large.message
    equal = nb08.check_small_slice_weight(1.0, batch=16, small=4)
    assert not equal and "equal" in equal.message
    with pytest.raises(ValueError, match="small"):
        nb08.check_small_slice_weight(2.0, batch=16, small=16)


def test_small_slice_weight_matches_the_gradients():
    """What the check expects is what the gradients do: the plain mean of two slices' mean gradients weights a
    window of the small slice batch / (2 small) times its share (a linear model, the same mean-over-windows loss)."""
    g = torch.Generator().manual_seed(0)
    w, x, y = torch.randn(3, requires_grad=True), torch.randn(16, 3, generator=g), torch.randn(16, generator=g)

    def grad(rows):
        w.grad = None
        ((x[rows] @ w - y[rows]) ** 2).mean().backward()
        return w.grad.clone()

    per_window = [grad(slice(i, i + 1)) for i in range(16)]
    plain = (grad(slice(0, 12)) + grad(slice(12, 16))) / 2
    factor = 16 / (2 * 4)  # the answer the check accepts
    assert nb08.check_small_slice_weight(factor, batch=16, small=4)
    weights = [1 / 16 * 16 / (2 * 12)] * 12 + [1 / 16 * factor] * 4
    assert torch.allclose(plain, sum(wt * gw for wt, gw in zip(weights, per_window)), atol=1e-5)


def test_bf16_spacing():
    assert nb08.bf16_gap(1.0) == 2.0 ** -7 and nb08.bf16_gap(0.1) == 2.0 ** -11 and nb08.bf16_gap(0.2) == 2.0 ** -10
    assert nb08.check_bf16_spacing(2.0 ** -11)
    assert nb08.check_bf16_spacing(NOT_ANSWERED).passed is None
    near_one = nb08.check_bf16_spacing(2.0 ** -7)
    assert not near_one and "next to 1.0" in near_one.message
    fp16 = nb08.check_bf16_spacing(2.0 ** -14)
    assert not fp16 and "float16" in fp16.message
    scaled = nb08.check_bf16_spacing(0.1 * 2.0 ** -7)
    assert not scaled and "power of two" in scaled.message
    assert "0.000488281" in reveal(nb08.check_bf16_spacing).message
    with pytest.raises(ValueError, match="value"):
        nb08.check_bf16_spacing(1.0, value=0.0)
