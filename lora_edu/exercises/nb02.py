"""Checks for the exercises of notebook 02_svd_and_low_rank_approximation: energy, the truncation error, a
prediction of the photo's rank measured by the notebook, the smallest rank for an error, and a truncated SVD built
by hand."""
from __future__ import annotations

import numpy as np

from ..checks import (REVEAL, CheckResult, as_numbers, check_int, check_value, exercise, failed, hint_for_mistake,
                      how_far, not_answered, passed, revealed)
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


@exercise("Exercise 4", int_answer="a rank")
def check_rank_for_error(name, answer, singular_values, max_relative_error: float) -> CheckResult:
    """Exercise 4: the smallest rank whose relative error ``sqrt(1 − energy(r))`` is at most the target."""
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


@exercise("Exercise 3", int_answer="a rank")
def check_rank_prediction(name, answer, measured: int) -> CheckResult:
    """Exercise 3 (predict, then measure): the learner's predicted rank next to the ``measured`` smallest rank
    whose reconstruction of the photo meets the stated error. Within 25 % passes (it is a prediction); otherwise
    the direction and a coarse size, never the measured rank."""
    if answer is REVEAL:
        return revealed(name, f"rank {measured:,} (measured by the cell)")
    if answer < 1:
        return failed(name, f"a rank is at least 1, got {answer}.")
    if answer == measured:
        return passed(name, "spot on: your prediction is the measured rank.")
    if abs(answer - measured) <= 0.25 * measured:
        return passed(name, f"a good prediction: within 25 % of the measured rank; yours is {how_far(answer, measured)}.")
    hint = ("the error falls more slowly at high ranks: each extra layer σᵢuᵢvᵢᵀ adds less than the one before, so "
            "extrapolate from the table's last rows, not its first." if answer < measured else
            "the error still falls steadily at the table's last rows; extrapolate how much it shrinks per 50 ranks.")
    return failed(name, f"next to the measured rank, your prediction is {how_far(answer, measured)}. Hint: {hint}")


def _truncation_cases():
    """(description, matrix, r) for the build-it check: tall, wide and square, r = 0 and r = min(d, k)."""
    rng = np.random.default_rng(11)
    tall, wide, square = rng.normal(size=(6, 4)), rng.normal(size=(3, 7)), rng.normal(size=(5, 5))
    low_rank = rng.normal(size=(8, 2)) @ rng.normal(size=(2, 5))
    return [("a tall 6×4 matrix, r = 2", tall, 2), ("a wide 3×7 matrix, r = 1", wide, 1),
            ("a square 5×5 matrix, r = 3", square, 3), ("the 6×4 matrix of case 1, r = 0", tall, 0),
            ("the 3×7 matrix of case 2, r = 3 = min(d, k)", wide, 3),
            ("an 8×5 matrix of rank 2, r = 4 (more than its rank)", low_rank, 4)]


def _truncation_slip(got, matrix, r) -> str:
    """The usual slip a wrong truncation shows, if one explains it (computed without showing the right one)."""
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    p = s.size

    def keep(indices, sigma=s, right=vt):
        return sum((sigma[i] * np.outer(u[:, i], right[i]) for i in indices), np.zeros_like(matrix))

    slips = [(matrix, "it returns the matrix unchanged: keep only the first r layers σᵢuᵢvᵢᵀ"),
             (keep(range(p - r, p)), "it keeps the r smallest singular values; np.linalg.svd sorts them largest "
                                     "first, so keep the first r"),
             (keep(range(r), sigma=np.ones(p)), "the singular values are missing: each layer is σᵢuᵢvᵢᵀ, not uᵢvᵢᵀ")]
    if r + 1 <= p:
        slips.append((keep(range(r + 1)), "it keeps one layer too many (r + 1)"))
    if r >= 1:
        slips.append((keep(range(r - 1)), "it keeps one layer too few (r − 1)"))
    if vt.shape[0] == vt.shape[1]:  # Vt is square for a tall or square matrix, so the slip runs
        slips.append((keep(range(r), right=vt.T), "it uses the columns of Vt: the right singular vectors vᵢ are the "
                                                  "rows of Vt"))
    scale = np.linalg.norm(matrix)
    return next((hint for value, hint in slips if np.allclose(got, value, atol=1e-8 * scale)), "")


def check_truncate(function) -> CheckResult:
    """Exercise 5 (build it): ``truncate(matrix, r)`` must return the best rank-``r`` approximation of the
    ``(d, k)`` NumPy array ``matrix``, the sum of its top ``r`` layers ``σᵢ uᵢ vᵢᵀ``, shape ``(d, k)``; ``r`` runs
    from 0 (the zero matrix) to ``min(d, k)`` (the matrix itself). Checked against
    `lora_edu.linalg.best_rank_r_approximation` within 1e-8 on six cases (tall, wide, square, r = 0, r = min(d, k),
    r above the rank), without changing its input. A ready-made low-rank routine (lora_edu's, scikit-learn's
    ``randomized_svd``/``TruncatedSVD``, SciPy's ``svds``, torch's ``svd_lowrank``/``pca_lowrank``) fails: the
    exercise is to write it from ``np.linalg.svd``."""
    import torch

    from .. import linalg
    from ._build_it import loaded, run_watched

    name = "Exercise 5"
    if function is REVEAL:
        return revealed(name, "U, S, Vt = np.linalg.svd(matrix, full_matrices=False); "
                              "return (U[:, :r] * S[:r]) @ Vt[:r]")
    if not callable(function):
        return failed(name, f"expected a function truncate(matrix, r), got {type(function).__name__}.")
    forbidden = {"lora_edu.linalg.best_rank_r_approximation": linalg.best_rank_r_approximation,
                 "lora_edu.linalg.rank_r_factors": linalg.rank_r_factors,
                 "lora_edu.linalg.fit_rank_r_factors": linalg.fit_rank_r_factors,
                 "torch.svd_lowrank": torch.svd_lowrank, "torch.pca_lowrank": torch.pca_lowrank,
                 "sklearn's randomized_svd": loaded("sklearn.utils.extmath", "randomized_svd"),
                 "sklearn's TruncatedSVD": loaded("sklearn.decomposition", "TruncatedSVD.fit_transform"),
                 "scipy.sparse.linalg.svds": loaded("scipy.sparse.linalg", "svds")}
    forbidden = {label: f for label, f in forbidden.items() if f is not None}
    cases = _truncation_cases()
    for number, (description, matrix, r) in enumerate(cases, start=1):
        expected = np.zeros_like(matrix) if r == 0 else linalg.best_rank_r_approximation(matrix, r)
        given = matrix.copy()
        try:
            got, shortcuts = run_watched(function, (given, r), forbidden)
        except Exception as error:  # the learner's code: report whatever it raised
            allowed = " (r = 0 is allowed: it keeps no layer)" if r == 0 else ""
            return failed(name, f"case {number} ({description}) raised {type(error).__name__}: {error}{allowed}")
        if got is None and number == 1:
            return not_answered(name)
        if shortcuts:
            return failed(name, f"it calls {' and '.join(shortcuts)}, a ready-made low-rank routine: the exercise is "
                                f"to write the truncation yourself from np.linalg.svd.")
        if not np.array_equal(given, matrix):
            return failed(name, f"case {number} ({description}): it changed the matrix it was given; work on a copy.")
        if isinstance(got, tuple):
            return failed(name, f"case {number} ({description}): it returns a tuple; return the {matrix.shape[0]}×"
                                f"{matrix.shape[1]} matrix itself (multiply the factors back together).")
        array = as_numbers(got)
        if array is None:
            return failed(name, f"case {number} ({description}): expected an array, got {type(got).__name__}.")
        if array.shape != matrix.shape:
            empty_sum = " (with r = 0 an empty sum is the number 0: return a zero matrix)" if r == 0 else ""
            return failed(name, f"case {number} ({description}): it returns shape {array.shape}; the approximation "
                                f"has the matrix's shape {matrix.shape}{empty_sum}.")
        if not np.allclose(array, expected, rtol=0, atol=1e-8 * np.linalg.norm(matrix)):
            detail = _truncation_slip(array, matrix, r) if np.all(np.isfinite(array)) else "it contains NaN or infinity"
            if not detail and np.linalg.matrix_rank(array) > r:
                detail = f"its rank is {np.linalg.matrix_rank(array)}, and a rank-{r} approximation has rank at most {r}"
            elif not detail:
                yours, best = np.linalg.norm(matrix - array), np.linalg.norm(matrix - expected)
                detail = f"its error ‖matrix − yours‖_F is {how_far(yours, best)} next to the best rank-{r} error"
            return failed(name, f"case {number} ({description}): not the best rank-{r} approximation: {detail}.")
    return passed(name, f"correct: equal to lora_edu.linalg.best_rank_r_approximation on all {len(cases)} cases.")
