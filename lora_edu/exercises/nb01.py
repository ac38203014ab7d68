"""Checks for the exercises of notebook 01_rank_and_decomposition."""
from __future__ import annotations

import numpy as np

from ..checks import (REVEAL, CheckResult, check_value, exercise, failed, hint_for_mistake, how_far, is_number,
                      passed, revealed)
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
