"""The exercise checks of notebooks 01-03: a right answer passes, wrong answers say what and by how much."""
import numpy as np
import pytest

from lora_edu.checks import NOT_ANSWERED
from lora_edu.counting import GPT2_SMALL, LLAMA_7B
from lora_edu.exercises import nb01, nb02, nb03


def rank2(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(10, 2)) @ rng.normal(size=(2, 10))


@pytest.mark.parametrize("check, args", [
    (nb01.check_stored_numbers, (12, 8, 3)), (nb01.check_matrix_of_rank, ((6, 5), 3)),
    (nb01.check_tolerance, (np.eye(3), 2)), (nb01.check_factors, (np.eye(3), 2)),
    (nb02.check_energy, ([3.0, 1.0], 1)), (nb02.check_truncation_error, ([3.0, 1.0], 1)),
    (nb02.check_rank_for_error, ([3.0, 1.0], 0.5)), (nb03.check_lora_params, (10, 10, 2)),
    (nb03.check_break_even, (10, 10)), (nb03.check_full_finetuning_memory, (GPT2_SMALL,)),
    (nb03.check_adapter_checkpoint, (LLAMA_7B, 16, ("q", "v"))),
])
def test_unanswered(check, args):
    result = check(NOT_ANSWERED, *args)
    assert result.passed is None and "not answered yet" in str(result)


def test_nb01_stored_numbers():
    assert nb01.check_stored_numbers(60, 12, 8, 3)
    wrong = nb01.check_stored_numbers(96, 12, 8, 3)
    assert not wrong and "too high" in wrong.message and "dense matrix" in wrong.message
    assert "60" not in wrong.message and "36" not in wrong.message
    assert "add them" in nb01.check_stored_numbers(288, 12, 8, 3).message
    assert "B has 12×3 entries and A has 3×8" in nb01.check_stored_numbers(61, 12, 8, 3).message
    assert "expected a number" in nb01.check_stored_numbers("sixty", 12, 8, 3).message


def test_nb01_matrix_of_rank():
    rng = np.random.default_rng(0)
    assert nb01.check_matrix_of_rank(rng.normal(size=(6, 3)) @ rng.normal(size=(3, 5)), (6, 5), 3)
    too_many = nb01.check_matrix_of_rank(rng.normal(size=(6, 5)), (6, 5), 3)
    assert not too_many and "rank 5, not 3: too many" in too_many.message
    assert "shape (5, 6)" in nb01.check_matrix_of_rank(np.ones((5, 6)), (6, 5), 3).message
    assert "2-D" in nb01.check_matrix_of_rank(np.ones(4), (6, 5), 3).message


def test_nb01_tolerance():
    noisy = rank2() + 0.01 * np.random.default_rng(1).normal(size=(10, 10))
    sigma = np.linalg.svd(noisy, compute_uv=False)
    assert nb01.check_tolerance(float(sigma[2] + sigma[1]) / 2, noisy, 2)
    low = nb01.check_tolerance(1e-6, noisy, 2)
    assert not low and "numerical rank is 10, not 2" in low.message and "too small" in low.message
    assert "more than a factor of 1000" in low.message and f"{sigma[2]:.3g}" not in low.message
    high = nb01.check_tolerance(float(sigma[0]) * 2, noisy, 2)
    assert not high and "numerical rank is 0" in high.message and "too large" in high.message
    assert f"{sigma[1]:.3g}" not in high.message
    assert f"{sigma[2]:.3g} up to" in nb01.check_tolerance(float(sigma[2] + sigma[1]) / 2, noisy, 2).message
    assert not nb01.check_tolerance(-1.0, noisy, 2)
    for bad in (float("nan"), float("inf")):
        result = nb01.check_tolerance(bad, noisy, 2)
        assert not result and "must be a finite number" in result.message and "too large" not in result.message


def test_nb01_factors():
    m = rank2()
    u, s, vt = np.linalg.svd(m)
    assert nb01.check_factors((u[:, :2] * s[:2], vt[:2]), m, 2)
    wrong = nb01.check_factors((u[:, :2], vt[:2]), m, 2)
    assert not wrong and "B @ A: 100 of 100 entries are off; the worst is at index" in wrong.message
    shapes = nb01.check_factors((u[:, :3], vt[:3]), m, 2)
    assert not shapes and "expected B (10, 2)" in shapes.message
    assert "pair" in nb01.check_factors(m, m, 2).message


def test_nb02_checks():
    sigma = np.array([4.0, 2.0, 1.0, 0.5])
    energy = 20 / 21.25
    assert nb02.check_energy(energy, sigma, 2)
    wrong = nb02.check_energy(6 / 7.5, sigma, 2)
    assert not wrong and "off by" in wrong.message and "squared" in wrong.message
    assert nb02.check_truncation_error(np.sqrt(1.25), sigma, 2)
    assert "square root" in nb02.check_truncation_error(1.25, sigma, 2).message
    assert "square the discarded" in nb02.check_truncation_error(1.5, sigma, 2).message
    relative = nb02.check_truncation_error(np.sqrt(1.25 / 21.25), sigma, 2)
    assert not relative and "that is the relative error" in relative.message


def test_nb02_unit_and_rounding_hints():
    sigma = np.array([4.0, 2.0, 1.0, 0.5])
    energy = 20 / 21.25                                   # 0.941176...
    percent = nb02.check_energy(94.12, sigma, 2)
    assert not percent and "looks like a percentage" in percent.message and "divide by 100" in percent.message
    rounded = nb02.check_energy(0.9412, sigma, 2)
    assert not rounded and "typing a rounded number" in rounded.message
    far = nb02.check_energy(0.5, sigma, 2)
    assert not far and "Hint" not in far.message
    assert nb02.check_energy(energy, sigma, 2)
    # relative errors: r=1 sqrt(5.25/21.25)=0.497, r=2 0.243, r=3 0.108
    assert nb02.smallest_rank_for_error(sigma, 0.25) == 2
    assert nb02.check_rank_for_error(2, sigma, 0.25)
    low = nb02.check_rank_for_error(1, sigma, 0.25)
    assert not low and "too low (off by about a factor of 2)" in low.message
    high = nb02.check_rank_for_error(4, sigma, 0.25)
    assert not high and "not the smallest" in high.message and "too high (off by about a factor of 2)" in high.message
    assert "expected an int" in nb02.check_rank_for_error(2.0, sigma, 0.25).message


def test_nb03_checks():
    assert nb03.check_lora_params(16 * (4096 + 11008), 4096, 11008, 16)
    dense = nb03.check_lora_params(4096 * 11008, 4096, 11008, 16)
    assert not dense and "too high" in dense.message and "dense matrix" in dense.message
    assert nb03.check_break_even(614, 768, 3072)
    assert "too high (within 1 %)" in nb03.check_break_even(615, 768, 3072).message
    assert "too low (within 10 %)" in nb03.check_break_even(600, 768, 3072).message
    assert "614" not in nb03.check_break_even(613, 768, 3072).message
    assert "at least 1" in nb03.check_break_even(0, 768, 3072).message
    assert nb03.check_break_even(4, 10, 10)  # r = 5 is a tie, not a saving
    n = 124_439_808
    assert nb03.check_full_finetuning_memory(16 * n, GPT2_SMALL)
    weights_only = nb03.check_full_finetuning_memory(4 * n, GPT2_SMALL)
    assert not weights_only and "too low (off by about a factor of 4)" in weights_only.message
    assert "weights only" in weights_only.message
    adapter = 2 * 16 * 8192 * 32
    assert nb03.check_adapter_checkpoint(2 * adapter, LLAMA_7B, 16, ("q", "v"))
    fp32 = nb03.check_adapter_checkpoint(4 * adapter, LLAMA_7B, 16, ("q", "v"))
    assert not fp32 and "fp32" in fp32.message


@pytest.mark.parametrize("answer, unit", [(1.99, "GB"), (1991, "MB"), (1_991_037, "kB"), (1.854, "GiB")])
def test_nb03_answer_in_the_wrong_unit_gets_a_hint(answer, unit):
    result = nb03.check_full_finetuning_memory(answer, GPT2_SMALL)            # expected 1,991,036,928 bytes
    assert not result and f"looks like the size in {unit}" in result.message and "in bytes" in result.message


def test_nb03_unit_hint_only_for_unit_slips():
    adapter_bytes = 2 * 2 * 16 * 8192 * 32                                     # 16,777,216 bytes
    in_mb = nb03.check_adapter_checkpoint(16.8, LLAMA_7B, 16, ("q", "v"))
    assert not in_mb and "in MB" in in_mb.message
    off = nb03.check_adapter_checkpoint(adapter_bytes + 1000, LLAMA_7B, 16, ("q", "v"))
    assert not off and "Hint" not in off.message
    assert "Hint" not in nb03.check_full_finetuning_memory(3.7, GPT2_SMALL).message
