"""Tests of the exercise checks of notebook 05: right answers pass, wrong ones say what is wrong."""
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
