"""The new checks of notebook 01: the prediction of the notebook's own fit (Exercise 5) and the numerical-rank
function built by hand (Exercise 6). Each solution passes, each usual mistake fails with its diagnosis, a
ready-made rank function fails as a shortcut, and no message gives the expected count or error away."""
import numpy as np
import pytest
import torch

import lora_edu
from lora_edu import linalg
from lora_edu.checks import NOT_ANSWERED, reveal
from lora_edu.exercises import nb01


def solution(matrix, tol=None):
    sigma = np.linalg.svd(matrix, compute_uv=False)
    if tol is None:
        tol = sigma[0] * max(matrix.shape) * np.finfo(float).eps
    return int(np.sum(sigma > tol))


def with_vectors(matrix, tol=None):                       # the same with U and V computed (another LAPACK path)
    sigma = np.linalg.svd(matrix)[1]
    tol = sigma[0] * max(matrix.shape) * np.finfo(float).eps if tol is None else tol
    return int(np.sum(sigma > tol))


def via_torch(matrix, tol=None):
    sigma = torch.linalg.svdvals(torch.from_numpy(matrix))
    tol = float(sigma[0]) * max(matrix.shape) * np.finfo(float).eps if tol is None else tol
    return int((sigma > tol).sum())


def stub(matrix, tol=None):
    ...


@pytest.mark.parametrize("right", [solution, with_vectors, via_torch])
def test_numerical_rank_solutions_pass(right):
    result = nb01.check_numerical_rank(right)
    assert result.passed is True and "all 7 cases" in result.message


def test_numerical_rank_stub_is_unanswered_and_reveal_shows_how():
    assert nb01.check_numerical_rank(stub).passed is None
    shown = reveal(nb01.check_numerical_rank)
    assert shown.passed is None and "np.sum(sigma > tol)" in shown.message


def greater_or_equal(matrix, tol=None):
    sigma = np.linalg.svd(matrix, compute_uv=False)
    tol = sigma[0] * max(matrix.shape) * np.finfo(float).eps if tol is None else tol
    return int(np.sum(sigma >= tol))


def relative_tol(matrix, tol=None):
    sigma = np.linalg.svd(matrix, compute_uv=False)
    tol = max(matrix.shape) * np.finfo(float).eps if tol is None else tol
    return int(np.sum(sigma > tol * sigma[0]))


def unscaled_default(matrix, tol=None):
    sigma = np.linalg.svd(matrix, compute_uv=False)
    tol = max(matrix.shape) * np.finfo(float).eps if tol is None else tol
    return int(np.sum(sigma > tol))


@pytest.mark.parametrize("wrong, case, diagnosis", [
    (lambda m, tol=None: int(np.sum(np.linalg.svd(m, compute_uv=False) > (tol or 0))), "case 1 ",
     "counts the SVD's rounding noise"),
    (unscaled_default, "case 3 ", "must grow with the matrix"),
    (relative_tol, "case 4 ", "tol is absolute"),
    (greater_or_equal, "case 7 ", "count σᵢ > tol, strictly"),
    (lambda m, tol=None: solution(m), "case 4 ", "ignores the tol"),
    (lambda m, tol=None: float(solution(m, tol)), "case 1 ", "expected an int"),
    (lambda m, tol=None: solution(m.T, tol) + (m.shape[0] < m.shape[1]), "case 2 ", "the rank it returns is too high"),
    (lambda m, tol=None: 1 / 0, "case 1 ", "ZeroDivisionError"),
])
def test_numerical_rank_mistakes_name_the_case_and_the_slip(wrong, case, diagnosis):
    result = nb01.check_numerical_rank(wrong)
    assert result.passed is False and case in result.message and diagnosis in result.message, result.message


@pytest.mark.parametrize("shortcut, named", [
    (lambda m, tol=None: int(np.linalg.matrix_rank(m, tol)), "np.linalg.matrix_rank"),
    (lambda m, tol=None: int(torch.linalg.matrix_rank(torch.from_numpy(m), atol=tol)) if tol is not None
     else int(torch.linalg.matrix_rank(torch.from_numpy(m))), "torch.linalg.matrix_rank"),
    (lambda m, tol=None: linalg.numerical_rank(m, tol), "lora_edu.linalg.numerical_rank"),
    (lambda m, tol=None: lora_edu.linalg.numerical_rank(m, tol), "lora_edu.linalg.numerical_rank"),
])
def test_numerical_rank_ready_made_functions_fail_as_shortcuts(shortcut, named):
    result = nb01.check_numerical_rank(shortcut)
    assert result.passed is False and f"it calls {named}" in result.message and "yourself" in result.message


def test_numerical_rank_messages_do_not_give_the_counts():
    expected = [linalg.numerical_rank(m, tol) for _, m, tol in nb01._numerical_rank_cases()]
    assert expected == [2, 3, 2, 2, 4, 0, 1]
    for wrong in (greater_or_equal, relative_tol, unscaled_default, lambda m, tol=None: 0,
                  lambda m, tol=None: 99):
        message = nb01.check_numerical_rank(wrong).message
        case = int(message.split("case ")[1].split(" ")[0])
        description, _, _ = nb01._numerical_rank_cases()[case - 1]
        told = message.replace(description, "")
        assert f"rank {expected[case - 1]}" not in told and f"is {expected[case - 1]}" not in told, message


def test_numerical_rank_check_leaves_the_global_generators_and_profiler_alone():
    import sys
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    nb01.check_numerical_rank(solution)
    assert np.array_equal(np_state, np.random.get_state()[1]) and torch.equal(torch_state, torch.random.get_rng_state())
    assert sys.getprofile() is None


def notebook_fit_error(r=1):
    """Notebook 01's M and the relative error its loop (linalg.fit_lora_factors) reaches with rank r."""
    lora_edu.seed_everything(1)
    m = np.random.randn(10, 2) @ np.random.randn(2, 10)
    b, a, _ = linalg.fit_lora_factors(m, r, steps=800, lr=0.01, batch=32, seed=0)
    return m, linalg.relative_error(b @ a, m)


def test_fit_prediction_solution_passes_on_the_notebooks_measurement():
    m, measured = notebook_fit_error()
    sigma = linalg.singular_values(m)
    bound = sigma[1] / np.linalg.norm(sigma)
    assert bound <= measured < 1.01 * bound                 # the loop lands near Eckart–Young's bound, not below
    assert nb01.check_fit_prediction(bound, measured)
    assert nb01.check_fit_prediction(NOT_ANSWERED, measured).passed is None


@pytest.mark.parametrize("prediction, words", [
    (0.0, "cannot fall to zero"), (1.0, "the relative error is exactly 1"), (1.7, "exactly 1"),
    (0.2, "too low"), (0.6, "too high"), (-0.3, "cannot be negative"), ("0.34", "expected a finite number"),
    (float("nan"), "expected a finite number"),
])
def test_fit_prediction_mistakes(prediction, words):
    result = nb01.check_fit_prediction(prediction, 0.3398)
    assert result.passed is False and words in result.message, result.message
    assert "0.34" not in result.message.replace("'0.34'", "") and "0.3398" not in result.message
