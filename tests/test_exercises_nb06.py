"""The exercise checks of notebook 06: a right answer passes, wrong answers say what and by how much."""
import math

import numpy as np
import pytest

from lora_edu.checks import NOT_ANSWERED
from lora_edu.exercises import nb06

RANKS = [1, 2, 4, 8, 16, 32, 64]
NORMS = [13.5, 8.35, 6.24, 4.15, 3.37, 2.45, 1.81]


@pytest.mark.parametrize("check, args", [
    (nb06.check_rslora_ratio, (16, 64)),
    (nb06.check_equivalent_lr, (8, 0.004, 32)),
    (nb06.check_loglog_slope, (RANKS, NORMS)),
    (nb06.check_directions_for_energy, (np.eye(3), 0.9)),
])
def test_unanswered(check, args):
    result = check(NOT_ANSWERED, *args)
    assert result.passed is None and "not answered yet" in str(result)


def test_rslora_ratio():
    assert nb06.check_rslora_ratio(8.0, 16, 64)
    assert nb06.check_rslora_ratio((16 / math.sqrt(64)) / (16 / 64), 16, 64)
    wrong = nb06.check_rslora_ratio(0.125, 16, 64)
    assert not wrong and "too low (off by about a factor of 60)" in wrong.message and "upside down" in wrong.message
    assert "that is r" in nb06.check_rslora_ratio(64, 16, 64).message
    assert "rsLoRA's scaling itself" in nb06.check_rslora_ratio(2.0, 16, 64).message
    off = nb06.check_rslora_ratio(9, 16, 64)
    assert not off and "too high (off by more than 10 %)" in off.message and "12.5" not in off.message


def test_equivalent_lr():
    assert nb06.check_equivalent_lr(0.001, 8, 0.004, 32)
    assert nb06.check_equivalent_lr(0.00025, 8, 0.004, 32, optimizer="sgd")
    sgd_rule = nb06.check_equivalent_lr(0.00025, 8, 0.004, 32)
    assert not sgd_rule and "other optimizer" in sgd_rule.message and "too low" in sgd_rule.message
    upside = nb06.check_equivalent_lr(0.016, 8, 0.004, 32)
    assert not upside and "larger α needs a smaller learning rate" in upside.message
    assert "same learning rate" in nb06.check_equivalent_lr(0.004, 8, 0.004, 32).message
    with pytest.raises(ValueError, match="optimizer='rmsprop' is not allowed; allowed values: adam, sgd"):
        nb06.check_equivalent_lr(0.001, 8, 0.004, 32, optimizer="rmsprop")


def test_loglog_slope():
    expected = np.polyfit(np.log(RANKS), np.log(NORMS), 1)[0]
    assert nb06.check_loglog_slope(float(expected), RANKS, NORMS)
    assert nb06.check_loglog_slope(np.polyfit(np.log10(RANKS), np.log10(NORMS), 1)[0], RANKS, NORMS)  # any base
    linear = nb06.check_loglog_slope(float(np.polyfit(RANKS, NORMS, 1)[0]), RANKS, NORMS)
    assert not linear and "logarithm of both" in linear.message
    semilog = nb06.check_loglog_slope(float(np.polyfit(RANKS, np.log(NORMS), 1)[0]), RANKS, NORMS)
    assert not semilog and "logarithm of the ranks too" in semilog.message
    swapped = nb06.check_loglog_slope(float(np.polyfit(np.log(NORMS), np.log(RANKS), 1)[0]), RANKS, NORMS)
    assert not swapped and "swapped" in swapped.message
    theory = nb06.check_loglog_slope(-0.5, RANKS, NORMS)
    assert not theory and "theory value" in theory.message and "too low (within 10 %)" in theory.message
    whole = nb06.check_loglog_slope(np.polyfit(np.log(RANKS), np.log(NORMS), 1), RANKS, NORMS)
    assert not whole and "whole np.polyfit result" in whole.message and "take [0]" in whole.message
    assert "the slope you want" in whole.message
    assert "the slope you want" not in nb06.check_loglog_slope([1.0, 2.0], RANKS, NORMS).message
    wrong = nb06.check_loglog_slope(-1.0, RANKS, NORMS)
    assert not wrong and "too low (off by about a factor of 2)" in wrong.message and "-0.4" not in wrong.message


def test_directions_for_energy():
    m = np.diag([3.0, 2.0, 1.0, 0.5])  # energies 9, 4, 1, 0.25 of 14.25: 63 %, 91 %, 98 %, 100 %
    assert nb06.check_directions_for_energy(2, m, 0.9)
    assert "2 of 4 directions hold 90%" in nb06.check_directions_for_energy(2, m, 0.9).message
    few = nb06.check_directions_for_energy(1, m, 0.9)
    assert not few and "hold only 63.2%" in few.message and "too low" in few.message and "0-based" in few.message
    many = nb06.check_directions_for_energy(4, m, 0.9)
    assert not many and "too high (off by about a factor of 2)" in many.message
    sigma_sum = nb06.check_directions_for_energy(3, m, 0.9)  # Σσ: 3, 5, 6 of 6.5 → 3 directions for 90 %
    assert not sigma_sum and "σ², not σ" in sigma_sum.message
    assert "expected an int" in nb06.check_directions_for_energy(2.0, m, 0.9).message
    assert "between 1 and 4" in nb06.check_directions_for_energy(7, m, 0.9).message
