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


def scaling_solution(alpha, r, rule):
    if rule == "alpha/r":
        return alpha / r
    if rule == "alpha/sqrt(r)":
        return alpha / math.sqrt(r)
    raise ValueError(f"rule must be 'alpha/r' or 'alpha/sqrt(r)', got {rule!r}")


def test_scaling_function_solution_passes_and_stub_is_unanswered():
    assert nb06.check_scaling_function(scaling_solution)
    assert nb06.check_scaling_function(lambda alpha, r, rule: np.float32(scaling_solution(alpha, r, rule)))
    assert nb06.check_scaling_function(lambda alpha, r, rule: None).passed is None
    state = np.random.get_state()[1].copy()
    nb06.check_scaling_function(scaling_solution)
    assert np.array_equal(state, np.random.get_state()[1]), "the check must not move the learner's random numbers"


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda alpha, r, rule: alpha / math.sqrt(r) if rule == "alpha/r" else alpha / r, "that is rsLoRA's α / √r"),
    (lambda alpha, r, rule: alpha / r, "that is LoRA's α / r; rule 'alpha/sqrt(r)'"),
    (lambda alpha, r, rule: alpha // r if rule == "alpha/r" else alpha / math.sqrt(r), "case 5"),
    (lambda alpha, r, rule: r / alpha if rule == "alpha/r" else r ** 0.5 / alpha, "upside down"),
    (lambda alpha, r, rule: alpha, "α alone"),
    (lambda alpha, r, rule: alpha * r, "do not multiply"),
    (lambda alpha, r, rule: alpha / r ** 2 if rule == "alpha/r" else alpha / math.sqrt(r), "divided by r²"),
    (lambda alpha, r, rule: 1 / r if rule == "alpha/r" else 1 / math.sqrt(r), "α is missing"),
    (lambda alpha, r, rule: alpha / r if rule == "alpha/r" else alpha / r ** 0.25, "it is not the α / √r"),
    (lambda alpha, r, rule: alpha / r if rule == "alpha/r" else alpha / math.sqrt(r), "rule='alpha' returned a value"),
    (lambda alpha, r, rule: scaling_solution(alpha, r, rule) if rule != "alpha" else 1 / 0, "ZeroDivisionError"),
    (lambda alpha, r, rule: str(alpha / r), "expected a number"),
    (lambda alpha, r: alpha / r, "raised TypeError"),
    ("alpha / r", "expected a function"),
])
def test_scaling_function_mistakes_are_diagnosed(wrong, diagnosis):
    result = nb06.check_scaling_function(wrong)
    assert result.passed is False and diagnosis in result.message, result.message
    assert "case" in result.message or "rule='alpha'" in result.message or "function" in result.message


def test_scaling_function_names_the_failing_case_without_the_value():
    wrong = nb06.check_scaling_function(lambda alpha, r, rule: alpha / math.sqrt(r) if rule == "alpha/r" else alpha / r)
    assert "case 1 (alpha=16.0, r=8, rule='alpha/r')" in wrong.message and "too high" in wrong.message
    assert "2.0" not in wrong.message.replace("alpha=16.0", "")  # 16 / 8 is not shown


def test_scaling_function_refuses_lora_edus_own_function():
    from lora_edu.scaling_rules import lora_scaling

    def shortcut(alpha, r, rule):
        return lora_scaling(alpha, r, rule)

    result = nb06.check_scaling_function(shortcut)
    assert result.passed is False and "write the formula yourself" in result.message
    import lora_edu.scaling_rules as rules
    hidden = lambda alpha, r, rule: rules.__dict__["lora_" + "scaling"](alpha, r, rule)  # no name to spot
    result = nb06.check_scaling_function(hidden)
    assert result.passed is False and "write the formula yourself" in result.message


class FakeSweep:
    """The part of an LRSweep that Exercise 6 reads: the seeds and each seed's best rate."""
    seeds = (0, 1)

    def best_lr(self, method):
        return np.array({32: [0.02, 0.04], 8: [0.04, 0.04]}[method])


def test_predicted_best_lr():
    sweep = FakeSweep()
    measured = float(np.median([0.02, 0.04]))                      # 0.03
    assert nb06.measured_best_lr(sweep, 32) == measured
    assert nb06.check_predicted_best_lr(NOT_ANSWERED, sweep, 32).passed is None
    for close in (measured, 0.02, 0.04, 0.06, 0.015):               # within a factor of 2: one grid step
        assert nb06.check_predicted_best_lr(close, sweep, 32), close
    high = nb06.check_predicted_best_lr(0.1, sweep, 32)
    assert not high and "too high, off by more than 2x" in high.message and "0.03" not in high.message
    low = nb06.check_predicted_best_lr(0.001, sweep, 32)
    assert not low and "too low, off by more than 8x" in low.message
    assert "more than 4x" in nb06.check_predicted_best_lr(0.006, sweep, 32).message
    for bad in (0.0, -0.03, "0.03", [0.03, 0.04], float("nan")):
        result = nb06.check_predicted_best_lr(bad, sweep, 32)
        assert result.passed is False and "expected a positive number" in result.message
    assert "0.03" in str(nb06.check_predicted_best_lr(nb06.REVEAL, sweep, 32))
