"""Checks for the exercises of notebook 01_rank_and_decomposition: counts, a matrix of given rank, a tolerance,
factors from the SVD, a prediction of the notebook's own fit, and a numerical-rank function built by hand."""
from __future__ import annotations

import numpy as np

from ..checks import (REVEAL, CheckResult, check_value, exercise, failed, hint_for_mistake, how_far, is_number,
                      not_answered, passed, revealed)
from ..linalg import as_matrix, numerical_rank


@exercise("Exercise 1")
def check_stored_numbers(name, answer, d: int, k: int, r: int) -> CheckResult:
    """Exercise 1: how many numbers the factors ``B (d, r)`` and ``A (r, k)`` of a rank-r matrix hold: r·(d + k)."""
    result = check_value(name, answer, r * (d + k), what="stored numbers")
    return hint_for_mistake(result, answer, [
        (d * k, f"{d}·{k} is the dense matrix; count the entries of B and of A instead."),
        (r * d * k, "B has d·r entries and A has r·k: add them, don't multiply."),
    ], rtol=0, otherwise=f"B has {d}×{r} entries and A has {r}×{k}.")


@exercise("Exercise 2")
def check_matrix_of_rank(name, answer, shape: tuple[int, int], rank: int) -> CheckResult:
    """Exercise 2: build a matrix of the given ``shape`` whose (numerical) rank is exactly ``rank``."""
    if answer is REVEAL:
        d, k = shape
        return revealed(name, f"any product of a {d}×{rank} and a {rank}×{k} random matrix, e.g. "
                              f"rng.normal(size=({d}, {rank})) @ rng.normal(size=({rank}, {k}))")
    try:
        matrix = as_matrix(answer, "answer")
    except (TypeError, ValueError) as exc:
        return failed(name, str(exc))
    if matrix.shape != tuple(shape):
        return failed(name, f"the matrix has shape {matrix.shape}, expected {tuple(shape)}.")
    got = numerical_rank(matrix)
    if got != rank:
        more = "too many: make some columns combinations of others" if got > rank else \
            "too few: the factors need more independent columns"
        return failed(name, f"the matrix has rank {got}, not {rank}: {more}.")
    return passed(name, f"correct: a {shape[0]}×{shape[1]} matrix of rank {rank}.")


@exercise("Exercise 3")
def check_tolerance(name, answer, noisy, rank: int) -> CheckResult:
    """Exercise 3: a tolerance ``tol`` at which ``numerical_rank(noisy, tol)`` equals ``rank``."""
    sigma = np.linalg.svd(as_matrix(noisy, "noisy"), compute_uv=False)
    low, high = sigma[rank], sigma[rank - 1]
    works = f"any tol from σ_{rank + 1} = {low:.3g} up to σ_{rank} = {high:.3g} works"
    if answer is REVEAL:
        return revealed(name, works)
    if not is_number(answer):
        return failed(name, f"expected a number (the tolerance), got {type(answer).__name__}.")
    if not np.isfinite(answer):
        return failed(name, f"a tolerance must be a finite number, got {answer}.")
    if answer < 0:
        return failed(name, f"a tolerance is a size, it must be >= 0; got {answer}.")
    got = int(np.sum(sigma > answer))
    if got == rank:
        return passed(name, f"correct: with tol = {answer:g} the numerical rank is {rank} ({works}).")
    side = "too small: noise still counts" if got > rank else "too large: real structure is ignored"
    nearest = low if got > rank else high
    size = f"; it is {how_far(answer, nearest)} next to the nearest tolerance that works" if answer > 0 else ""
    return failed(name, f"with tol = {answer:g} the numerical rank is {got}, not {rank}: tol is {side}{size}.")


@exercise("Exercise 4")
def check_factors(name, answer, target, r: int, atol: float = 1e-8) -> CheckResult:
    """Exercise 4: factors ``(B, A)`` with ``B`` ``(d, r)``, ``A`` ``(r, k)`` and ``B @ A`` equal to ``target``."""
    matrix = as_matrix(target, "target")
    d, k = matrix.shape
    if answer is REVEAL:
        u, s, vt = np.linalg.svd(matrix)
        return revealed(name, f"B = U[:, :{r}] * S[:{r}], A = Vt[:{r}] from U, S, Vt = np.linalg.svd(target):\n"
                              f"B = {np.array2string(u[:, :r] * s[:r], precision=4)}\n"
                              f"A = {np.array2string(vt[:r], precision=4)}")
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return failed(name, "expected a pair (B, A).")
    try:
        b, a = as_matrix(answer[0], "B"), as_matrix(answer[1], "A")
    except (TypeError, ValueError) as exc:
        return failed(name, str(exc))
    if b.shape != (d, r) or a.shape != (r, k):
        return failed(name, f"B has shape {b.shape} and A has shape {a.shape}; expected B {(d, r)} and A {(r, k)}.")
    result = check_value(name, b @ a, matrix, rtol=0.0, atol=atol, what="B @ A")
    if not result:
        return result
    return passed(name, f"correct: B @ A reproduces the {d}×{k} matrix with {r * (d + k)} numbers instead of {d * k}.")


@exercise("Exercise 5")
def check_fit_prediction(name, answer, measured: float) -> CheckResult:
    """Exercise 5 (predict, then measure): the learner's prediction of the final relative error
    ``‖B A − M‖_F / ‖M‖_F`` of notebook 01's gradient-descent loop run with ``r = 1`` on the rank-2 ``M``, next
    to the ``measured`` one. Within 10 % passes; otherwise the direction and a coarse size, never the value."""
    if answer is REVEAL:
        return revealed(name, f"{measured:.6g} (the measured final relative error)")
    if not is_number(answer) or not np.isfinite(answer):
        return failed(name, f"expected a finite number (your predicted relative error), got {answer!r:.40}.")
    if answer < 0:
        return failed(name, f"a relative error is a ratio of norms, it cannot be negative; got {answer}.")
    if abs(answer - measured) <= 0.1 * measured:
        return passed(name, "a good prediction: within 10 % of the measured final error.")
    if answer < 0.1 * measured:
        hint = ("a rank-1 product B A has rank 1, and M has rank 2: no B and A reach M exactly, so the error "
                "cannot fall to zero.")
    elif answer >= 1:
        hint = "at the start B = 0, so B A = 0 and the relative error is exactly 1; the loop only lowers it."
    else:
        hint = ("the best a rank-1 product can do is keep M's largest direction; compare the two singular values "
                "printed in section 4 to see how much of M is left.")
    return failed(name, f"next to the measured error, your prediction is {how_far(answer, measured)}. Hint: {hint}")


def _numerical_rank_cases():
    """(description, matrix, tol) for the build-it check: tall, wide, scaled, noisy and tied cases."""
    rng = np.random.default_rng(5)
    exact = rng.normal(size=(7, 2)) @ rng.normal(size=(2, 4))
    u, _ = np.linalg.qr(rng.normal(size=(6, 5)))
    v, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    spread = (u * np.array([50.0, 5.0, 0.5, 0.05, 0.005])) @ v.T     # singular values far from each tol
    tied = np.diag([3.0, 2.0, 2.0, 1.0])[[2, 0, 3, 1]]                # singular values exactly 3, 2, 2, 1
    return [
        ("a tall 7×4 product of 7×2 and 2×4 factors, tol=None", exact, None),
        ("a wide 3×8 random matrix, tol=None", rng.normal(size=(3, 8)), None),
        ("the 7×4 product of case 1 times 1e6, tol=None", exact * 1e6, None),
        ("a 6×5 matrix with σ = 50, 5, 0.5, 0.05, 0.005, tol=1.0", spread, 1.0),
        ("the 6×5 matrix of case 4, tol=0.01", spread, 0.01),
        ("the 6×5 matrix of case 4, tol=100.0", spread, 100.0),
        ("a 4×4 matrix with σ = 3, 2, 2, 1, tol=2.0 (a singular value equal to tol)", tied, 2.0),
    ]


def _numerical_rank_slip(got: int, matrix, tol) -> str:
    """The usual slip a wrong count shows, if one explains it (computed without showing the right count)."""
    sigma = np.linalg.svd(matrix, compute_uv=False)
    rounding = max(matrix.shape) * np.finfo(np.float64).eps
    if tol is None:
        slips = [(int(np.sum(sigma > 0)), "with tol=None it counts the SVD's rounding noise: the default must sit "
                                          "just above it, σ₁ · max(d, k) · ε"),
                 (int(np.sum(sigma > rounding)), "the default tolerance must grow with the matrix: σ₁ · max(d, k) · ε, "
                                                 "not max(d, k) · ε alone")]
        if sigma[0] > 1e3:  # a large matrix's rounding noise passes both slips: the missing σ₁ is the likelier one
            slips.reverse()
    else:
        slips = [(int(np.sum(sigma >= tol)), "a singular value equal to tol is not counted: count σᵢ > tol, "
                                             "strictly"),
                 (int(np.sum(sigma > tol * sigma[0])), "tol is absolute (in the units of the entries), not relative "
                                                       "to σ₁"),
                 (int(np.sum(sigma > sigma[0] * rounding)), "it ignores the tol it was given")]
    return next((hint for value, hint in slips if value == got), "")


def check_numerical_rank(function) -> CheckResult:
    """Exercise 6 (build it): ``function(matrix, tol=None)`` must return the number of singular values of the
    ``(d, k)`` NumPy array ``matrix`` larger than ``tol`` (default ``σ₁ · max(d, k) · ε``), equal to
    `lora_edu.linalg.numerical_rank` on seven cases (tall, wide, scaled, noisy, a tie with tol). Calling a
    ready-made rank function (``np.linalg.matrix_rank``, ``torch.linalg.matrix_rank``,
    ``lora_edu.linalg.numerical_rank``) fails: the exercise is to write it from ``np.linalg.svd``."""
    import torch

    from .. import linalg
    from ._build_it import run_watched

    name = "Exercise 6"
    if function is REVEAL:
        return revealed(name, "sigma = np.linalg.svd(matrix, compute_uv=False); if tol is None: "
                              "tol = sigma[0] * max(matrix.shape) * np.finfo(float).eps; return int(np.sum(sigma > tol))")
    if not callable(function):
        return failed(name, f"expected a function numerical_rank(matrix, tol=None), got {type(function).__name__}.")
    forbidden = {"np.linalg.matrix_rank": np.linalg.matrix_rank, "torch.linalg.matrix_rank": torch.linalg.matrix_rank,
                 "lora_edu.linalg.numerical_rank": linalg.numerical_rank}
    cases = _numerical_rank_cases()
    for number, (description, matrix, tol) in enumerate(cases, start=1):
        expected = linalg.numerical_rank(matrix, tol)
        try:
            got, shortcuts = run_watched(function, (matrix.copy(), tol), forbidden)
        except Exception as error:  # the learner's code: report whatever it raised
            return failed(name, f"case {number} ({description}) raised {type(error).__name__}: {error}")
        if got is None and number == 1:
            return not_answered(name)
        if shortcuts:
            return failed(name, f"it calls {' and '.join(shortcuts)}, a ready-made rank: the exercise is to write it "
                                f"yourself from np.linalg.svd(matrix, compute_uv=False).")
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, np.integer)):
            return failed(name, f"case {number} ({description}): expected an int (a count of singular values), "
                                f"got {type(got).__name__}.")
        if got != expected:
            slip = _numerical_rank_slip(int(got), matrix, tol)
            return failed(name, f"case {number} ({description}): the rank it returns is {how_far(got, expected)}"
                                f"{f'. Hint: {slip}' if slip else ''}.")
    return passed(name, f"correct: equal to lora_edu.linalg.numerical_rank on all {len(cases)} cases.")
