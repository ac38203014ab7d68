"""Tests of the exercise checks of notebook 05: right answers pass, wrong ones say what is wrong."""
import copy

import numpy as np
import pytest
import torch

from lora_edu import models, strategies
from lora_edu.exercises import nb05
from lora_edu.measure import count_trainable, lora_flop_ratio, measured_training_memory_bytes


def test_unanswered_checks_say_so():
    for result in (nb05.check_lora_layer_parameters(..., 256, 64, 2), nb05.check_training_bytes(..., 10),
                   nb05.check_flop_ratio(..., 64, 64, 2), nb05.check_adapter_parameters(..., 64, 8, 6)):
        assert result.passed is None and "not answered yet" in str(result)


def test_exercise_1_lora_parameters_agree_with_a_real_layer():
    model = strategies.apply_strategy(models.TinyGPT(), "lora", target_modules=["blocks.0.mlp.up_proj"], r=2,
                                      lora_alpha=4)
    right = count_trainable(model).trainable
    assert nb05.check_lora_layer_parameters(right, 256, 64, 2).passed
    wrong = nb05.check_lora_layer_parameters(256 * 64, 256, 64, 2)
    assert wrong.passed is False and "trainable numbers: too high (off by about a factor of 30)" in wrong.message
    assert "640" not in wrong.message
    assert "dense ΔW" in wrong.message
    assert "A alone" in nb05.check_lora_layer_parameters(128, 256, 64, 2).message
    assert "too high (within 1 %)" in nb05.check_lora_layer_parameters(641, 256, 64, 2).message
    assert nb05.check_lora_layer_parameters("640", 256, 64, 2).passed is False


def test_exercise_2_training_bytes_agree_with_measure():
    model = models.DigitsMLP()
    memory = measured_training_memory_bytes(model)
    trainable = count_trainable(model).trainable
    right = memory["trainable_weights"] + memory["gradients"] + 2 * memory["trainable_weights"]
    assert nb05.check_training_bytes(right, trainable).passed
    assert "weights alone" in nb05.check_training_bytes(4 * trainable, trainable).message
    assert "two more numbers" in nb05.check_training_bytes(8 * trainable, trainable).message
    assert "one AdamW state" in nb05.check_training_bytes(12 * trainable, trainable).message
    assert "counts numbers, not bytes" in nb05.check_training_bytes(trainable * 4, trainable, 8).message
    result = nb05.check_training_bytes(16 * trainable + 24, trainable)
    assert result.passed is False and "bytes: too high (within 1 %)" in result.message
    assert f"{16 * trainable:,}" not in result.message and "24" not in result.message
    with_counters = nb05.check_training_bytes(16 * trainable + 24, trainable, trainable_tensors=6)
    assert with_counters.passed is False and "step counter" in with_counters.message
    assert "16·n + 4·6" in with_counters.message
    for near in (16 * trainable - 32, 16 * trainable + 23, 16 * trainable + 25):  # close, but not off by the counters
        result = nb05.check_training_bytes(near, trainable, trainable_tensors=6)
        assert result.passed is False and "step counter" not in result.message, result.message
    assert "megabytes" in nb05.check_training_bytes(16 * trainable / 1e6, trainable).message
    assert "MiB" in nb05.check_training_bytes(16 * trainable / 2 ** 20, trainable).message
    for bad in (float("nan"), float("inf")):
        result = nb05.check_training_bytes(bad, trainable)
        assert result.passed is False and "NaN or infinity" in result.message
    with pytest.raises(ValueError, match="trainable_tensors must be a positive int"):
        nb05.check_training_bytes(1, trainable, trainable_tensors=0)


def test_exercise_3_flop_ratio():
    assert nb05.check_flop_ratio(lora_flop_ratio(2, 64, 64), 64, 64, 2).passed
    assert "extra part only" in nb05.check_flop_ratio(1.0625, 64, 64, 2).message
    assert "count both products" in nb05.check_flop_ratio(2 / 64, 64, 64, 2).message
    assert nb05.check_flop_ratio(0.5, 64, 64, 2).passed is False
    rounded = nb05.check_flop_ratio(0.0039, 4096, 4096, 8)
    assert rounded.passed is False and "do not round" in rounded.message
    percent = nb05.check_flop_ratio(0.390625, 4096, 4096, 8)
    assert percent.passed is False and "percentage" in percent.message


def test_exercise_4_adapter_parameters_agree_with_the_strategy():
    model = strategies.apply_strategy(models.TinyGPT(), "adapters", bottleneck=8)
    right = count_trainable(model).trainable
    assert nb05.check_adapter_parameters(right, 64, 8, 6).passed
    assert "biases" in nb05.check_adapter_parameters(6 * 2 * 64 * 8, 64, 8, 6).message
    assert "one adapter" in nb05.check_adapter_parameters(2 * 64 * 8 + 72, 64, 8, 6).message
    assert nb05.check_adapter_parameters(1.5, 64, 8, 6).passed is False
    for count in (2, 3):
        result = nb05.check_adapter_parameters(count * (2 * 64 * 8 + 72), 64, 8, 6)
        assert result.passed is False and f"you counted {count} adapters" in result.message


def test_checks_reject_bad_exercise_inputs():
    with pytest.raises(ValueError, match="r must be a positive int"):
        nb05.check_lora_layer_parameters(1, 4, 4, 0)
    with pytest.raises(ValueError, match="bytes_per_number must be a positive int"):
        nb05.check_training_bytes(1, 4, 0)


def test_exercise_1_accepts_a_zero_dimensional_tensor_and_rejects_non_finite():
    assert nb05.check_lora_layer_parameters(torch.tensor(640), 256, 64, 2).passed
    assert nb05.check_lora_layer_parameters(np.int64(640), 256, 64, 2).passed
    assert nb05.check_lora_layer_parameters(torch.tensor(641), 256, 64, 2).passed is False
    assert nb05.check_lora_layer_parameters(torch.tensor([640]), 256, 64, 2).passed is False
    result = nb05.check_lora_layer_parameters(float("nan"), 256, 64, 2)
    assert result.passed is False and "NaN or infinity" in result.message


class Adapter(torch.nn.Module):
    """The solution of exercise 5, with switches for the usual slips."""

    def __init__(self, d, m, zero=True, residual=True, act=torch.nn.functional.gelu, act_after_up=False):
        super().__init__()
        self.down, self.up = torch.nn.Linear(d, m), torch.nn.Linear(m, d)
        if zero:
            torch.nn.init.zeros_(self.up.weight), torch.nn.init.zeros_(self.up.bias)
        self.residual, self.act, self.act_after_up = residual, act, act_after_up

    def forward(self, h):
        out = self.act(self.up(self.down(h))) if self.act_after_up else self.up(self.act(self.down(h)))
        return h + out if self.residual else out


def test_adapter_block_solution_passes_and_stub_is_unanswered():
    result = nb05.check_adapter_block(lambda d, m: Adapter(d, m))
    assert result.passed, result.message
    assert nb05.check_adapter_block(lambda d, m: None).passed is None
    assert nb05.check_adapter_block(...).passed is None
    state = torch.random.get_rng_state()
    nb05.check_adapter_block(lambda d, m: Adapter(d, m))
    assert torch.equal(state, torch.random.get_rng_state()), "the check must not move the learner's random numbers"


@pytest.mark.parametrize("make, diagnosis", [
    (lambda d, m: Adapter(d, m, zero=False), "not zero at initialisation"),
    (lambda d, m: Adapter(d, m, residual=False), "the residual is missing"),  # returns 0, not h, at the start
    (lambda d, m: Adapter(d, m, act=lambda t: t), "nonlinearity is missing"),
    (lambda d, m: Adapter(d, m, act=torch.relu), "ReLU"),
    (lambda d, m: Adapter(d, m, act_after_up=True), "after up"),
    (lambda d, m: Adapter(m, d), "wrong shape: down maps"),
    (lambda d, m: torch.nn.Linear(d, d), "needs an attribute 'down'"),
    (lambda d, m: 1 / 0, "ZeroDivisionError"),
    (lambda d, m: "adapter", "expected an nn.Module"),
])
def test_adapter_block_mistakes_are_diagnosed(make, diagnosis):
    result = nb05.check_adapter_block(make)
    assert result.passed is False and diagnosis in result.message, result.message
    assert "case 1" in result.message  # the failing case is named


def test_adapter_block_no_residual_with_trained_weights_is_named():
    class LateResidual(Adapter):  # right at the start, drops the residual once the weights are not zero
        def forward(self, h):
            out = self.up(torch.nn.functional.gelu(self.down(h)))
            return h + out if torch.count_nonzero(self.up.weight) == 0 else out
    result = nb05.check_adapter_block(lambda d, m: LateResidual(d, m))
    assert result.passed is False and "residual is missing" in result.message, result.message


def test_adapter_block_extra_trainable_numbers_and_shapes():
    class Extra(Adapter):
        def __init__(self, d, m):
            super().__init__(d, m)
            self.gain = torch.nn.Parameter(torch.ones(d))
    assert "numbers train" in nb05.check_adapter_block(lambda d, m: Extra(d, m)).message
    class Flat(Adapter):
        def forward(self, h):
            return super().forward(h).reshape(-1)
    result = nb05.check_adapter_block(lambda d, m: Flat(d, m))
    assert result.passed is False and "wrong shape" in result.message
    assert "not callable" not in nb05.check_adapter_block(3).message and nb05.check_adapter_block(3).passed is False


def test_adapter_block_agrees_with_the_strategy_on_a_real_model():
    """The solution's block, given the weights of apply_strategy's adapters, gives the same GPT logits."""
    torch.manual_seed(0)
    adapted = strategies.apply_strategy(models.TinyGPT(), "adapters", bottleneck=8)
    with torch.no_grad():
        for p in adapted.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move the adapters off their start
    rebuilt = copy.deepcopy(adapted)
    for block in rebuilt.blocks:
        for sub in ("attn", "mlp"):
            wrapper = getattr(block, sub)
            mine = Adapter(64, 8)
            mine.load_state_dict({k: v for k, v in wrapper.state_dict().items() if k.startswith(("down.", "up."))})
            setattr(block, sub, torch.nn.Sequential(wrapper.sublayer, mine))
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert torch.allclose(rebuilt(ids), adapted(ids), atol=1e-5)


FULL_ROTATED = [0.964, 0.968, 0.972]  # the notebook's stored run: full fine-tuning and LoRA r = 16, rotated digits
LORA16_ROTATED = [0.930, 0.950, 0.933]


def test_gap_prediction_solution_passes_and_wrong_predictions_get_direction_and_size():
    assert nb05.check_gap_prediction(0.04, FULL_ROTATED, LORA16_ROTATED).passed  # the notebook's solution
    measured = np.mean(FULL_ROTATED) - np.mean(LORA16_ROTATED)
    assert nb05.check_gap_prediction(measured, FULL_ROTATED, LORA16_ROTATED).passed
    assert nb05.check_gap_prediction(..., FULL_ROTATED, LORA16_ROTATED).passed is None
    for tied_or_ahead in (0.0, -0.05):
        result = nb05.check_gap_prediction(tied_or_ahead, FULL_ROTATED, LORA16_ROTATED)
        assert result.passed is False and "wrong direction" in result.message
    as_at_rank_4 = nb05.check_gap_prediction(0.115, FULL_ROTATED, LORA16_ROTATED)
    assert as_at_rank_4.passed is False and "too large" in as_at_rank_4.message and "factor of 4" in as_at_rank_4.message
    small = nb05.check_gap_prediction(0.002, FULL_ROTATED, LORA16_ROTATED)
    assert small.passed is False and "too small" in small.message
    percent = nb05.check_gap_prediction(3.1, FULL_ROTATED, LORA16_ROTATED)
    assert percent.passed is False and "percentage points" in percent.message
    for message in (as_at_rank_4.message, small.message, percent.message):
        assert "0.031" not in message and "0.014" not in message and "0.042" not in message
    # the band is the range of pairwise differences, widened by PREDICTION_MARGIN: its edges pass, beyond fails
    low, high = min(FULL_ROTATED) - max(LORA16_ROTATED), max(FULL_ROTATED) - min(LORA16_ROTATED)
    assert nb05.check_gap_prediction(low - nb05.PREDICTION_MARGIN + 1e-9, FULL_ROTATED, LORA16_ROTATED).passed
    assert not nb05.check_gap_prediction(high + nb05.PREDICTION_MARGIN + 1e-3, FULL_ROTATED, LORA16_ROTATED).passed
    assert nb05.check_gap_prediction("0.04", FULL_ROTATED, LORA16_ROTATED).passed is False
    assert nb05.check_gap_prediction(float("nan"), FULL_ROTATED, LORA16_ROTATED).passed is False
    ahead = nb05.check_gap_prediction(0.05, [0.80, 0.81, 0.82], [0.90, 0.91, 0.92])  # LoRA ahead in every pair
    assert ahead.passed is False and "wrong direction" in ahead.message


def test_gap_prediction_rejects_bad_measurements():
    with pytest.raises(ValueError, match="full must be a list of at least 2 test accuracies in \\[0, 1\\]"):
        nb05.check_gap_prediction(0.04, [0.9], LORA16_ROTATED)
    with pytest.raises(ValueError, match="lora must be a list of at least 2 test accuracies"):
        nb05.check_gap_prediction(0.04, FULL_ROTATED, [93.0, 95.0, 93.3])
