"""Checks for the exercises of notebook 06_rank_and_alpha_explorer, with a hint for the usual mistakes (the two
scaling rules swapped, the SGD rule used for Adam, σ instead of σ², a slope fitted without logarithms, the theory
value or the whole np.polyfit result given as the slope)."""
from __future__ import annotations

import math

import numpy as np

from ..checks import (REVEAL, CheckResult, as_numbers, check_int, check_value, exercise, failed, hint_for_mistake,
                      how_far, revealed)
from ..scaling_rules import lora_scaling
from ..update_analysis import directions_for_energy, loglog_slope


@exercise("Exercise 1")
def check_rslora_ratio(name, answer, alpha: float, r: int) -> CheckResult:
    """Exercise 1: how many times larger rsLoRA's scaling is than LoRA's at rank ``r``:
    ``(α/√r) / (α/r) = √r`` (α cancels)."""
    lora, rslora = lora_scaling(alpha, r, "alpha/r"), lora_scaling(alpha, r, "alpha/sqrt(r)")
    result = check_value(name, answer, rslora / lora, rtol=1e-6, what="ratio")
    return hint_for_mistake(result, answer, [
        (lora / rslora, "upside down: rsLoRA divides by √r, LoRA by r, so rsLoRA's factor is the larger one."),
        (r, "that is r; the ratio of α/√r to α/r is r/√r."),
        (rslora, "that is rsLoRA's scaling itself; divide it by LoRA's, α/r."),
        (lora, "that is LoRA's scaling itself; divide rsLoRA's, α/√r, by it."),
    ])


@exercise("Exercise 2")
def check_equivalent_lr(name, answer, alpha: float, lr: float, new_alpha: float,
                        optimizer: str = "adam") -> CheckResult:
    """Exercise 2: the learning rate that makes ``new_alpha`` start like ``(alpha, lr)`` (same rank, α/r).

    Adam: the step on ``ΔW`` is proportional to ``α·lr``, so ``lr · alpha / new_alpha``.
    SGD: it is proportional to ``α²·lr``, so ``lr · (alpha / new_alpha)²``.
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer={optimizer!r} is not allowed; allowed values: adam, sgd")
    ratio = alpha / new_alpha
    adam, sgd = lr * ratio, lr * ratio ** 2
    expected = adam if optimizer == "adam" else sgd
    result = check_value(name, answer, expected, rtol=1e-6, what="learning rate")
    return hint_for_mistake(result, answer, [
        (sgd if optimizer == "adam" else adam,
         "that is the rule for the other optimizer: Adam's step ignores the gradient's scale (α·lr matters), "
         "SGD's step on B grows with α too (α²·lr matters)."),
        (lr / ratio, "the other way round: a larger α needs a smaller learning rate."),
        (lr, "the same learning rate gives a larger α a larger step on ΔW."),
    ])


@exercise("Exercise 3")
def check_loglog_slope(name, answer, ranks, norms) -> CheckResult:
    """Exercise 3: the slope of ``log(norm)`` against ``log(r)`` (least squares): ``norm ∝ r^slope``."""
    x, y = np.asarray(ranks, dtype=float), np.asarray(norms, dtype=float)
    expected = loglog_slope(x, y)
    coefficients = as_numbers(answer)
    if coefficients is not None and coefficients.shape == (2,):  # np.polyfit(x, y, 1) itself
        slope = float(coefficients[0])
        verdict = "its first entry is the slope you want" if math.isclose(slope, expected, rel_tol=1e-4) else \
            "its first entry is the slope"
        return failed(name, f"that is the whole np.polyfit result [slope, intercept] (shape (2,)); {verdict}: "
                            f"take [0].")
    result = check_value(name, answer, expected, rtol=1e-4, atol=1e-6, what="slope")
    linear = float(np.polyfit(x, y, 1)[0])
    semilog = float(np.polyfit(x, np.log(y), 1)[0])
    swapped = float(np.polyfit(np.log(y), np.log(x), 1)[0])
    return hint_for_mistake(result, answer, [
        (-0.5, "that is the theory value; fit the measured norms (np.polyfit on their logarithms): the "
               "exercise asks what the measurement gives."),
        (linear, "that is the slope of the plain numbers; take the logarithm of both the ranks and the norms."),
        (semilog, "take the logarithm of the ranks too (a power law is a line in log-log)."),
        (swapped, "x and y are swapped: fit log(norm) as a function of log(r)."),
    ], rtol=1e-4)


@exercise("Exercise 4", int_answer="a number of directions")
def check_directions_for_energy(name, answer, matrix, fraction: float) -> CheckResult:
    """Exercise 4: how many singular directions of ``matrix`` hold ``fraction`` of ``Σσ²`` (the smallest n)."""
    expected = directions_for_energy(matrix, fraction)
    if answer is REVEAL:
        return revealed(name, f"{expected} directions")
    sigma = np.linalg.svd(np.asarray(matrix, dtype=float), compute_uv=False)
    by_sigma = int(np.searchsorted(np.cumsum(sigma) / sigma.sum(), fraction - 1e-12) + 1)  # Σσ instead of Σσ²
    if not 1 <= answer <= sigma.size:
        result = failed(name, f"the count must be between 1 and {sigma.size}, got {answer}.")
    else:
        kept = float(np.sum(sigma[:answer] ** 2) / np.sum(sigma ** 2))
        result = check_int(name, answer, expected,
                           f"correct: {expected} of {sigma.size} directions hold {fraction:.0%} of the energy.",
                           f"{answer} directions hold only {kept:.1%} of the energy, below {fraction:.0%}: "
                           f"{how_far(answer, expected)}.",
                           f"{answer} directions hold {kept:.1%}, but fewer already reach {fraction:.0%}: "
                           f"{how_far(answer, expected)}.")
    return hint_for_mistake(result, answer, [
        (by_sigma, "energy adds up squared singular values, σ², not σ."),
        (expected - 1, "np.argmax gives a 0-based index: count the directions up to and including the first "
                       "whose cumulative share reaches the fraction."),
    ], rtol=0)
