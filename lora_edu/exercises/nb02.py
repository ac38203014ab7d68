"""Checks for the exercises of notebook 02_svd_and_low_rank_approximation."""
from __future__ import annotations

import numpy as np

from ..checks import REVEAL, CheckResult, check_int, check_value, exercise, failed, hint_for_mistake, how_far, revealed
from ..linalg import _as_singular_values, energy_retained, truncation_error

ROUNDED = "close; compute the value in code instead of typing a rounded number."


@exercise("Exercise 1")
def check_energy(name, answer, singular_values, r: int) -> CheckResult:
    """Exercise 1: the fraction of energy the top ``r`` singular values keep, ``Σ_{i≤r} σᵢ² / Σ σᵢ²``.

    A fraction between 0 and 1: an answer given in percent (e.g. 93.6) gets a hint to divide by 100.
    """
    sigma = _as_singular_values(singular_values)
    expected = energy_retained(sigma, r)
    result = check_value(name, answer, expected, rtol=1e-6, what="energy fraction")
    return hint_for_mistake(result, answer, [
        (100 * expected, "that looks like a percentage; the answer is a fraction between 0 and 1 (divide by 100).",
         0.01),
        (sigma[:r].sum() / sigma.sum(), "energy uses squared singular values."),
        (expected, ROUNDED, 0.01),
    ], rtol=1e-5, atol=1e-8)


@exercise("Exercise 2")
def check_truncation_error(name, answer, singular_values, r: int) -> CheckResult:
    """Exercise 2: the Frobenius error of the best rank-``r`` approximation, ``sqrt(Σ_{i>r} σᵢ²)``."""
    sigma = _as_singular_values(singular_values)
    expected = truncation_error(sigma, r)
    result = check_value(name, answer, expected, rtol=1e-6, what="Frobenius error")
    return hint_for_mistake(result, answer, [
        (sigma[r:].sum(), "square the discarded σ's, sum, then take the root."),
        (expected ** 2, "that is the squared error; take the square root."),
        (expected / np.sqrt(np.sum(sigma**2)), "that is the relative error; the question asks for "
                                               "‖P − P_r‖_F itself (do not divide by ‖P‖_F)."),
        (expected, ROUNDED, 0.01),
    ], rtol=1e-5, atol=1e-8)


def smallest_rank_for_error(singular_values, max_relative_error: float) -> int:
    """The smallest ``r`` whose best rank-``r`` approximation has relative Frobenius error ≤ the target."""
    sigma = _as_singular_values(singular_values)
    relative = np.sqrt(np.maximum(1.0 - energy_retained(sigma), 0.0))
    return int(np.argmax(relative <= max_relative_error)) + 1


@exercise("Exercise 3", int_answer="a rank")
def check_rank_for_error(name, answer, singular_values, max_relative_error: float) -> CheckResult:
    """Exercise 3: the smallest rank whose relative error ``sqrt(1 − energy(r))`` is at most the target."""
    sigma = _as_singular_values(singular_values)
    expected = smallest_rank_for_error(sigma, max_relative_error)
    if answer is REVEAL:
        return revealed(name, f"rank {expected}")
    if not 1 <= answer <= sigma.size:
        return failed(name, f"a rank must be between 1 and {sigma.size}, got {answer}.")
    error = float(np.sqrt(max(1.0 - energy_retained(sigma, int(answer)), 0.0)))
    return check_int(name, answer, expected,
                     f"correct: rank {expected} gives relative error {error:.4f} ≤ {max_relative_error}.",
                     f"rank {answer} gives relative error {error:.4f}, above {max_relative_error}: "
                     f"{how_far(answer, expected)}.",
                     f"rank {answer} works (error {error:.4f}) but is not the smallest, a lower one still meets "
                     f"{max_relative_error}: {how_far(answer, expected)}.")
