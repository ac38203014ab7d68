"""The exercise checks of notebook 09: the build-it φ on random factors (right, the usual slips, the shortcut), the
amplification factor of an update, and the mean φ of random subspaces; each hidden solution passes."""
import numpy as np
import pytest

from lora_edu import what_lora_learns
from lora_edu.checks import NOT_ANSWERED, REVEAL
from lora_edu.exercises import nb09


def solution(a, b):  # the notebook's hidden solution
    va = np.linalg.svd(np.asarray(a, dtype=float), full_matrices=False)[2]
    vb = np.linalg.svd(np.asarray(b, dtype=float), full_matrices=False)[2]
    overlap = np.cumsum(np.cumsum((va @ vb.T) ** 2, axis=0), axis=1)
    i, j = np.arange(1, len(va) + 1), np.arange(1, len(vb) + 1)
    return overlap / np.minimum.outer(i, j)


def test_build_it_solution_passes():
    result = nb09.check_subspace_similarity(solution)
    assert result and "all 4 cases" in result.message


def test_build_it_unanswered_and_revealed():
    def stub(a, b): ...
    assert nb09.check_subspace_similarity(stub).passed is None
    assert "not answered yet" in str(nb09.check_subspace_similarity(stub))
    assert nb09.check_subspace_similarity(REVEAL).passed is None
    assert not nb09.check_subspace_similarity(3)


@pytest.mark.parametrize("slip, diagnosis", [
    (lambda a, b: solution(a, b) * np.minimum.outer(np.arange(1, len(a) + 1), np.arange(1, len(b) + 1)),
     "without the division by min(i, j)"),
    (lambda a, b: solution(a, b) * np.minimum.outer(np.arange(1, len(a) + 1), np.arange(1, len(b) + 1))
     / np.maximum.outer(np.arange(1, len(a) + 1), np.arange(1, len(b) + 1)), "not max(i, j)"),
    (lambda a, b: np.sqrt(solution(a, b)), "square the Frobenius norm"),
    (lambda a, b: np.cumsum(np.cumsum((a / np.linalg.norm(a, axis=1, keepdims=True)
                                       @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T) ** 2, 0), 1)
     / np.minimum.outer(np.arange(1, len(a) + 1), np.arange(1, len(b) + 1)), "right singular vectors"),
    (lambda a, b: solution(a, b).T, "shape"),
    (lambda a, b: solution(a, b) + 0.01, "it is not"),
])
def test_build_it_slips_are_diagnosed(slip, diagnosis):
    result = nb09.check_subspace_similarity(slip)
    assert not result and diagnosis in result.message


def test_build_it_forbids_the_shortcut_and_reports_errors():
    shortcut = nb09.check_subspace_similarity(lambda a, b: what_lora_learns.subspace_similarity(a, b))
    assert not shortcut and "it calls lora_edu.what_lora_learns.subspace_similarity" in shortcut.message

    def broken(a, b):
        raise RuntimeError("boom")
    raised = nb09.check_subspace_similarity(broken)
    assert not raised and "RuntimeError: boom" in raised.message


def update(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((20, 16))
    delta = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 16)) * 0.1
    return delta, w


def test_amplification_check():
    delta, w = update()
    right = what_lora_learns.amplification_factor(delta, w, 3)
    assert nb09.check_amplification(right, delta, w, 3)
    assert nb09.check_amplification(NOT_ANSWERED, delta, w, 3).passed is None
    upside = nb09.check_amplification(1 / right, delta, w, 3)
    assert not upside and "upside down" in upside.message
    u, v = what_lora_learns.top_singular_directions(w, 3)
    wrong_dirs = nb09.check_amplification(np.linalg.norm(delta) / what_lora_learns.projection_norm(w, u, v), delta, w, 3)
    assert not wrong_dirs and "not W's" in wrong_dirs.message
    whole = nb09.check_amplification(np.linalg.norm(delta) / np.linalg.norm(w), delta, w, 3)
    assert not whole and "not by all of" in whole.message
    off = nb09.check_amplification(right * 1.3, delta, w, 3)
    assert not off and "too high" in off.message and f"{right:.3g}" not in off.message


def test_random_similarity_check():
    assert nb09.check_random_similarity(64 / 256, 8, 64, 256)
    assert nb09.check_random_similarity(0.25, 8, 64, 256)
    low = nb09.check_random_similarity(8 / 256, 8, 64, 256)
    assert not low and "leaves the larger one" in low.message and "too low" in low.message
    product = nb09.check_random_similarity(8 * 64 / 256, 8, 64, 256)
    assert not product and "divides it by min(i, j)" in product.message
    assert "one random direction" in nb09.check_random_similarity(1 / 256, 8, 64, 256).message
    assert nb09.check_random_similarity(NOT_ANSWERED, 8, 64, 256).passed is None
