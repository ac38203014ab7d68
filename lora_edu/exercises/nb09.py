"""Checks for the exercises of notebook 09_what_lora_learns: φ built by hand (checked on random factors), the
amplification factor read off the notebook's own update, and the φ two random subspaces give on average."""
from __future__ import annotations

import numpy as np

from ..checks import (REVEAL, CheckResult, check_value, exercise, failed, hint_for_mistake, not_answered, passed,
                      revealed)
from ..what_lora_learns import (amplification_factor, expected_random_similarity, projection_norm,
                                subspace_similarity, top_singular_directions)
from .. import what_lora_learns
from . import _build_it

def _cases():
    """Random factors (r_a, n) and (r_b, n): unrelated, sharing directions, and one the same as the other."""
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((3, 12)), rng.standard_normal((5, 12))
    shared = np.vstack([a[:2] + 0.1 * rng.standard_normal((2, 12)), rng.standard_normal((2, 12))])
    return [(a, b), (a, shared), (b, b.copy()), (rng.standard_normal((1, 7)), rng.standard_normal((4, 7)))]


def _diagnosis(got: np.ndarray, a, b) -> str:
    """Which usual slip a wrong φ shows (computed without showing the right φ)."""
    va, vb = np.linalg.svd(a, full_matrices=False)[2], np.linalg.svd(b, full_matrices=False)[2]
    overlap = np.cumsum(np.cumsum((va @ vb.T) ** 2, axis=0), axis=1)
    i, j = np.arange(1, len(va) + 1), np.arange(1, len(vb) + 1)
    rows = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731 (unit rows, no SVD)
    raw = np.cumsum(np.cumsum((rows(a) @ rows(b).T) ** 2, axis=0), axis=1) / np.minimum.outer(i, j)
    slips = [(overlap, "it is ‖V_iᵀ V'_j‖_F² without the division by min(i, j)"),
             (overlap / np.maximum.outer(i, j), "divide by min(i, j), not max(i, j)"),
             (np.sqrt(overlap / np.minimum.outer(i, j)), "square the Frobenius norm (‖·‖_F², not ‖·‖_F)"),
             (raw, "the rows of a factor are not orthonormal: take the right singular vectors "
                   "(np.linalg.svd(a)[2]) before comparing")]
    for value, hint in slips:
        if got.shape == value.shape and np.allclose(got, value, atol=1e-6):
            return hint
    return "it is not ‖V_iᵀ V'_j‖_F² / min(i, j) with V_i the top-i right singular vectors"


def check_subspace_similarity(function) -> CheckResult:
    """Exercise 1 (build it): ``function(a, b)`` with ``a`` (r_a, n), ``b`` (r_b, n) must return the (r_a, r_b)
    array ``φ[i-1, j-1] = ‖V_iᵀ V'_j‖_F² / min(i, j)``, equal to `lora_edu.what_lora_learns.subspace_similarity`
    within 1e-6 on four cases of random factors, without calling it."""
    name = "Exercise 1"
    if function is REVEAL:
        return revealed(name, "va = np.linalg.svd(a)[2][:len(a)], vb the same for b; m = (va @ vb.T) ** 2; "
                              "the cumulative sums of m over both axes (np.cumsum twice) give ‖V_iᵀ V'_j‖_F²; "
                              "divide entry [i-1, j-1] by min(i, j)")
    if not callable(function):
        return failed(name, f"expected a function subspace_similarity(a, b), got {type(function).__name__}.")
    if _build_it.is_stub(function):
        return not_answered(name)
    forbidden = [(what_lora_learns, "subspace_similarity", "lora_edu.what_lora_learns.subspace_similarity")]
    for number, (a, b) in enumerate(_cases(), start=1):
        expected = subspace_similarity(a, b)
        got, used, error = _build_it.run_forbidding(function, forbidden, a.copy(), b.copy())
        if used:
            return failed(name, f"it calls {used}: write φ from the SVD yourself.")
        if error is not None:
            return failed(name, f"case {number} (a {a.shape}, b {b.shape}) raised {type(error).__name__}: {error}")
        if got is None and number == 1:
            return not_answered(name)
        got = np.asarray(got.detach().cpu().numpy() if hasattr(got, "detach") else got, dtype=float)
        if got.shape != expected.shape:
            return failed(name, f"case {number} (a {a.shape}, b {b.shape}): the result has shape {got.shape}; it "
                                f"should be (r_a, r_b) = {expected.shape}, entry [i-1, j-1] for the top-i and top-j.")
        if not np.allclose(got, expected, atol=1e-6):
            return failed(name, f"case {number} (a {a.shape}, b {b.shape}): {_diagnosis(got, a, b)}.")
    return passed(name, "correct: equal to lora_edu's φ on all 4 cases (1 where a subspace meets itself).")


@exercise("Exercise 2")
def check_amplification(name, answer, delta, w, r: int) -> CheckResult:
    """Exercise 2: the amplification factor of one update: ``‖ΔW‖_F / ‖Uᵀ W V‖_F`` with U, V the top-r singular
    directions of ``ΔW`` (not of W)."""
    expected = amplification_factor(delta, w, r)
    result = check_value(name, answer, expected, rtol=1e-3, what="the amplification factor")
    d, w0 = np.asarray(delta, dtype=float), np.asarray(w, dtype=float)
    along_w = projection_norm(w0, *top_singular_directions(w0, r))
    return hint_for_mistake(result, answer, [
        (1 / expected, "upside down: ‖ΔW‖_F goes on top, the projection ‖Uᵀ W V‖_F below."),
        (np.linalg.norm(d) / along_w, "U and V must be ΔW's top-r singular directions, not W's."),
        (np.linalg.norm(d) / np.linalg.norm(w0), "divide by the part of W inside ΔW's top-r directions "
                                                 "(‖Uᵀ W V‖_F), not by all of ‖W‖_F."),
        (projection_norm(w0, *top_singular_directions(d, r)), "that is the projection ‖Uᵀ W V‖_F alone; divide "
                                                              "‖ΔW‖_F by it."),
    ], rtol=1e-3)


@exercise("Exercise 3")
def check_random_similarity(name, answer, i: int, j: int, n: int) -> CheckResult:
    """Exercise 3: the mean φ(i, j) of two independent random subspaces of R^n: ``max(i, j) / n``."""
    expected = expected_random_similarity(i, j, n)
    result = check_value(name, answer, expected, rtol=1e-3, what="the mean φ")
    return hint_for_mistake(result, answer, [
        (min(i, j) / n, "the mean of ‖V_iᵀ V'_j‖_F² is i·j/n; dividing it by min(i, j) leaves the larger one."),
        (i * j / n, "that is the mean of ‖V_iᵀ V'_j‖_F²; φ divides it by min(i, j)."),
        (1 / n, "one random direction keeps 1/n of another on average; here the subspaces have i and j dimensions."),
        (i * j / n ** 2, "each of the i directions keeps j/n of itself in the j-dimensional subspace: the sum "
                         "is i·j/n, then divide by min(i, j)."),
    ], rtol=1e-3)
