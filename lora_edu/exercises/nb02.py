"""Checks for the exercises of notebook 02_svd_and_low_rank_approximation.

Each check takes the learner's ``answer`` (``...`` while unanswered) plus the exercise's inputs and
returns a `lora_edu.checks.CheckResult` that says what is wrong and by how much.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..checks import CheckResult, check_int, check_value, exercise, failed, is_number, with_hint
from ..linalg import _as_singular_values, energy_retained, truncation_error


def _hint(result: CheckResult, answer, expected: float, mistakes) -> CheckResult:
    """``result`` with the hint of the first ``(value, hint)`` in ``mistakes`` that a wrong numeric ``answer``
    matches (``np.isclose``); otherwise a near miss (within 1 %) is almost always a value typed in rounded."""
    if result.passed is not False or not is_number(answer):
        return result
    for candidate, hint in mistakes:
        if np.isclose(answer, candidate):
            return with_hint(result, hint)
    if abs(answer - expected) <= 0.01 * abs(expected):
        return with_hint(result, "close; compute the value in code instead of typing a rounded number.")
    return result


@exercise("Exercise 1")
def check_energy(name, answer, singular_values, r: int) -> CheckResult:
    """Exercise 1: the fraction of energy the top ``r`` singular values keep, ``Σ_{i≤r} σᵢ² / Σ σᵢ²``.

    A fraction between 0 and 1: an answer given in percent (e.g. 93.6) gets a hint to divide by 100.
    """
    sigma = _as_singular_values(singular_values)
    expected = energy_retained(sigma, r)
    result = check_value(name, answer, expected, rtol=1e-6, what="energy fraction")
    if is_number(answer) and 1 < answer <= 100 and abs(answer / 100 - expected) <= 0.01:
        return with_hint(result, f"{answer:g} looks like a percentage; the answer is a fraction between 0 and 1 "
                                 f"(divide by 100).")
    return _hint(result, answer, expected, [(sigma[:r].sum() / sigma.sum(), "energy uses squared singular values.")])


@exercise("Exercise 2")
def check_truncation_error(name, answer, singular_values, r: int) -> CheckResult:
    """Exercise 2: the Frobenius error of the best rank-``r`` approximation, ``sqrt(Σ_{i>r} σᵢ²)``."""
    sigma = _as_singular_values(singular_values)
    expected = truncation_error(sigma, r)
    result = check_value(name, answer, expected, rtol=1e-6, what="Frobenius error")
    return _hint(result, answer, expected, [
        (sigma[r:].sum(), "square the discarded σ's, sum, then take the root."),
        (expected ** 2, "that is the squared error; take the square root."),
        (expected / np.sqrt(np.sum(sigma**2)), "that is the relative error; the question asks for "
                                               "‖P − P_r‖_F itself (do not divide by ‖P‖_F)."),
    ])


def smallest_rank_for_error(singular_values, max_relative_error: float) -> int:
    """The smallest ``r`` whose best rank-``r`` approximation has relative Frobenius error ≤ the target."""
    sigma = _as_singular_values(singular_values)
    relative = np.sqrt(np.maximum(1.0 - energy_retained(sigma), 0.0))
    return int(np.argmax(relative <= max_relative_error)) + 1


@exercise("Exercise 3")
def check_rank_for_error(name, answer, singular_values, max_relative_error: float) -> CheckResult:
    """Exercise 3: the smallest rank whose relative error ``sqrt(1 − energy(r))`` is at most the target."""
    sigma = _as_singular_values(singular_values)
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        return failed(name, f"expected an int (a rank), got {type(answer).__name__} {answer!r}.")
    expected = smallest_rank_for_error(sigma, max_relative_error)
    if not 1 <= answer <= sigma.size:
        return failed(name, f"a rank must be between 1 and {sigma.size}, got {answer}.")
    error = float(np.sqrt(max(1.0 - energy_retained(sigma, int(answer)), 0.0)))
    return check_int(name, answer, expected,
                     f"correct: rank {expected} gives relative error {error:.4f} ≤ {max_relative_error}.",
                     f"rank {answer} gives relative error {error:.4f}, above {max_relative_error}: "
                     f"too low by {expected - answer}.",
                     f"rank {answer} works (error {error:.4f}) but is not the smallest: "
                     f"{answer - expected} lower still meets {max_relative_error}.")
