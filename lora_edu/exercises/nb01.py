"""Checks for the exercises of notebook 01_rank_and_decomposition."""
from __future__ import annotations

import numpy as np

from ..checks import CheckResult, check_value, exercise, failed, hint_for_mistake, is_number, passed
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
        return failed(name, f"the matrix has rank {got}, expected {rank} ({abs(got - rank)} {more}).")
    return passed(name, f"correct: a {shape[0]}×{shape[1]} matrix of rank {rank}.")


@exercise("Exercise 3")
def check_tolerance(name, answer, noisy, rank: int) -> CheckResult:
    """Exercise 3: a tolerance ``tol`` at which ``numerical_rank(noisy, tol)`` equals ``rank``."""
    if not is_number(answer):
        return failed(name, f"expected a number (the tolerance), got {type(answer).__name__}.")
    sigma = np.linalg.svd(as_matrix(noisy, "noisy"), compute_uv=False)
    low, high = sigma[rank], sigma[rank - 1]
    if not np.isfinite(answer):
        return failed(name, f"a tolerance must be a finite number, got {answer}; pick one between "
                            f"σ_{rank + 1} = {low:.3g} and σ_{rank} = {high:.3g}.")
    if answer < 0:
        return failed(name, f"a tolerance is a size, it must be >= 0; got {answer}.")
    got = int(np.sum(sigma > answer))
    if got == rank:
        return passed(name, f"correct: with tol = {answer:g} the numerical rank is {rank} "
                            f"(any tol from σ_{rank + 1} = {low:.3g} up to σ_{rank} = {high:.3g} works).")
    side = "too small: noise still counts" if got > rank else "too large: real structure is ignored"
    return failed(name, f"with tol = {answer:g} the numerical rank is {got}, expected {rank}; tol is {side} "
                        f"(it must lie between σ_{rank + 1} = {low:.3g} and σ_{rank} = {high:.3g}).")


@exercise("Exercise 4")
def check_factors(name, answer, target, r: int, atol: float = 1e-8) -> CheckResult:
    """Exercise 4: factors ``(B, A)`` with ``B`` ``(d, r)``, ``A`` ``(r, k)`` and ``B @ A`` equal to ``target``."""
    matrix = as_matrix(target, "target")
    d, k = matrix.shape
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return failed(name, "expected a pair (B, A).")
    try:
        b, a = as_matrix(answer[0], "B"), as_matrix(answer[1], "A")
    except (TypeError, ValueError) as exc:
        return failed(name, str(exc))
    if b.shape != (d, r) or a.shape != (r, k):
        return failed(name, f"B has shape {b.shape} and A has shape {a.shape}; expected B {(d, r)} and A {(r, k)}.")
    error = np.abs(b @ a - matrix)
    if error.max() > atol:
        worst = np.unravel_index(int(np.argmax(error)), error.shape)
        relative = np.linalg.norm(b @ a - matrix) / np.linalg.norm(matrix)
        return failed(name, f"B @ A differs from the matrix by up to {error.max():.3g} (at index "
                            f"{tuple(int(i) for i in worst)}); relative Frobenius error {relative:.3g}.")
    return passed(name, f"correct: B @ A reproduces the {d}×{k} matrix with {r * (d + k)} numbers instead of {d * k}.")
