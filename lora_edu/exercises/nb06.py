"""Checks for the exercises of notebook 06_rank_and_alpha_explorer, with a hint for the usual mistakes (the two
scaling rules swapped, the SGD rule used for Adam, σ instead of σ², a slope fitted without logarithms, the theory
value or the whole np.polyfit result given as the slope), a scaling rule built by hand, and a learning rate predicted,
then measured on the notebook's own task."""
from __future__ import annotations

import math

import numpy as np

from ..checks import (REVEAL, CheckResult, as_numbers, check_int, check_value, exercise, failed, hint_for_mistake,
                      how_far, not_answered, passed, revealed)
from ..scaling_rules import SCALING_RULES, lora_scaling
from ..update_analysis import directions_for_energy, loglog_slope
from ._build_it import run_watched


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


def _scaling_cases() -> list[tuple[float, int, str]]:
    """(α, r, rule) cases for the build-it check: fixed easy ones first, then random ones from a private
    generator (the learner's random state is not touched)."""
    rng = np.random.default_rng(6)
    cases = [(16.0, 8, "alpha/r"), (16.0, 64, "alpha/sqrt(r)"), (8.0, 1, "alpha/sqrt(r)"), (32.0, 16, "alpha/r")]
    for _ in range(12):
        cases.append((round(float(rng.uniform(0.5, 64.0)), 2), int(rng.integers(2, 257)),
                      SCALING_RULES[int(rng.integers(0, 2))]))
    return cases


def _scaling_diagnosis(got: float, alpha: float, r: int, rule: str) -> str:
    """Which usual slip a wrong scaling shows (without showing the right value)."""
    other = ("that is rsLoRA's α / √r; rule 'alpha/r' is LoRA's α / r" if rule == "alpha/r" else
             "that is LoRA's α / r; rule 'alpha/sqrt(r)' is rsLoRA's α / √r")
    slips = [(alpha / math.sqrt(r) if rule == "alpha/r" else alpha / r, other),
             (r / alpha, "upside down: the scale is α divided by r (or √r), not r / α"),
             (alpha, "α alone: the scale divides α by the rank (r, or √r for rsLoRA)"),
             (alpha * r, "α · r: divide by the rank, do not multiply"),
             (alpha / r ** 2, "divided by r²: LoRA divides α by r once"),
             (1 / r if rule == "alpha/r" else 1 / math.sqrt(r), "α is missing from the numerator")]
    for value, hint in slips:
        if math.isclose(got, value, rel_tol=1e-6):
            return hint
    return f"it is not the {'α / r' if rule == 'alpha/r' else 'α / √r'} this rule asks for"


def check_scaling_function(function) -> CheckResult:
    """Exercise 5 (build it): ``function(alpha, r, rule)`` must return LoRA's scale, ``α / r`` for
    ``rule="alpha/r"`` and ``α / √r`` for ``rule="alpha/sqrt(r)"``, equal to `lora_edu.scaling_rules.lora_scaling`
    (relative 1e-6, so float32 passes) on 16 cases (4 fixed, 12 random), and raise ``ValueError`` for any other rule. Calling
    lora_edu's own ``lora_scaling`` is refused: the exercise is to write the formula."""
    name = "Exercise 5"
    if function is REVEAL:
        return revealed(name, "if rule == 'alpha/r': return alpha / r; if rule == 'alpha/sqrt(r)': return "
                              "alpha / math.sqrt(r); otherwise raise ValueError(...)")
    if not callable(function):
        return failed(name, f"expected a function scaling(alpha, r, rule), got {type(function).__name__}.")
    code = getattr(function, "__code__", None)
    if code is not None and "lora_scaling" in code.co_names + code.co_freevars:
        return failed(name, "it calls lora_edu's lora_scaling: write the formula yourself (that function is what "
                            "the check compares against).")
    for number, (alpha, r, rule) in enumerate(_scaling_cases(), start=1):
        expected = lora_scaling(alpha, r, rule)
        try:  # watched: lora_scaling is refused however it is reached (an alias, a module's __dict__, ...)
            got, called = run_watched(function, (alpha, r, rule), {"lora_scaling": lora_scaling})
        except Exception as error:  # the learner's code: report whatever it raised
            return failed(name, f"case {number} (alpha={alpha}, r={r}, rule={rule!r}) raised "
                                f"{type(error).__name__}: {error}")
        if called:
            return failed(name, "it calls lora_edu's lora_scaling: write the formula yourself (that function is "
                                "what the check compares against).")
        if got is None and number == 1:
            return not_answered(name)
        if isinstance(got, bool) or not isinstance(got, (int, float, np.floating, np.integer)):
            return failed(name, f"case {number}: expected a number, got {type(got).__name__}.")
        if not math.isclose(float(got), expected, rel_tol=1e-6):  # float32 results pass too
            return failed(name, f"case {number} (alpha={alpha}, r={r}, rule={rule!r}) is {how_far(float(got), expected)}"
                                f": {_scaling_diagnosis(float(got), alpha, r, rule)}.")
    try:
        function(16.0, 8, "alpha")
    except ValueError:
        pass
    except Exception as error:
        return failed(name, f"rule='alpha' raised {type(error).__name__}; it should raise ValueError naming the "
                            f"allowed rules.")
    else:
        return failed(name, "every allowed case is right, but rule='alpha' returned a value: an unknown rule must "
                            "raise ValueError naming the allowed rules ('alpha/r', 'alpha/sqrt(r)').")
    return passed(name, "correct: equal to lora_scaling on all 16 cases, and an unknown rule raises ValueError.")


def measured_best_lr(sweep, method) -> float:
    """The median over seeds of ``method``'s best learning rate in ``sweep`` (a `lora_edu.batched.LRSweep`)."""
    return float(np.median(sweep.best_lr(method)))


@exercise("Exercise 6")
def check_predicted_best_lr(name, answer, sweep, method) -> CheckResult:
    """Exercise 6 (predict, then measure): a prediction of ``method``'s best learning rate, compared with the
    median over seeds measured in ``sweep`` (a `lora_edu.batched.LRSweep` whose rates are factors of 2 apart).

    A prediction within a factor of 2 of the measurement passes (one step of the grid: the resolution of the
    measurement); otherwise the check says the direction and a coarse size (more than 2×, 4× or 8× off),
    never the measured rate."""
    measured = measured_best_lr(sweep, method)
    if answer is REVEAL:
        return revealed(name, f"measured best learning rate {measured:g} (median over {len(sweep.seeds)} seeds)")
    value = as_numbers(answer)
    if value is None or value.shape != () or not np.isfinite(value) or float(value) <= 0:
        return failed(name, f"expected a positive number (a learning rate), got {answer!r}.")
    got = float(value)
    factor = max(got / measured, measured / got)
    if factor <= 2 * (1 + 1e-9):
        return passed(name, f"your prediction {got:g} is within a factor of 2 of the measured best rate "
                            f"{measured:g} (median over {len(sweep.seeds)} seeds): the grid's resolution.")
    size = next(f"more than {k}x" for k in (8, 4, 2) if factor > k)
    direction = "too high" if got > measured else "too low"
    return failed(name, f"your prediction is {direction}, off by {size}. Look again at how the best rate moved "
                        f"between the ranks that were measured under the same rule, and by how much.")
