"""The new checks of notebook 02: the prediction of the photo's rank that the notebook measures (Exercise 3) and the
rank-r truncation built by hand (Exercise 5). Each solution passes, each usual mistake fails with its diagnosis, a
ready-made low-rank routine fails as a shortcut, and no message gives the expected matrix or rank away."""
import sys

import numpy as np
import pytest
import torch

from lora_edu import linalg
from lora_edu.checks import NOT_ANSWERED, reveal
from lora_edu.exercises import nb02


def solution(matrix, r):
    U, S, Vt = np.linalg.svd(matrix, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vt[:r]


def full_svd(matrix, r):
    U, S, Vt = np.linalg.svd(matrix)
    return U[:, :r] @ np.diag(S[:r]) @ Vt[:r]


def layer_by_layer(matrix, r):
    U, S, Vt = np.linalg.svd(matrix)
    return sum((S[i] * np.outer(U[:, i], Vt[i]) for i in range(r)), np.zeros(matrix.shape))


def with_torch(matrix, r):
    U, S, Vh = torch.linalg.svd(torch.from_numpy(matrix), full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def stub(matrix, r):
    ...


@pytest.mark.parametrize("right", [solution, full_svd, layer_by_layer, with_torch])
def test_truncate_solutions_pass(right):
    result = nb02.check_truncate(right)
    assert result.passed is True and "all 6 cases" in result.message


def test_truncate_cases_cover_the_edges():
    cases = nb02._truncation_cases()
    shapes = [(m.shape, r) for _, m, r in cases]
    assert any(d > k for (d, k), _ in shapes) and any(d < k for (d, k), _ in shapes)       # tall and wide
    assert any(r == 0 for _, r in shapes) and any(r == min(shape) for shape, r in shapes)
    assert any(r > np.linalg.matrix_rank(m) for _, m, r in cases)


def test_truncate_stub_is_unanswered_and_reveal_shows_how():
    assert nb02.check_truncate(stub).passed is None
    shown = reveal(nb02.check_truncate)
    assert shown.passed is None and "np.linalg.svd" in shown.message


def keep(matrix, indices, sigma=None, right=None):
    U, S, Vt = np.linalg.svd(matrix, full_matrices=False)
    S = S if sigma is None else sigma(S)
    Vt = Vt if right is None else right(Vt)
    return sum((S[i] * np.outer(U[:, i], Vt[i]) for i in indices), np.zeros(matrix.shape))


def in_place(matrix, r):
    matrix[:] = solution(matrix, r)
    return matrix


def reject_zero(matrix, r):
    if r < 1:
        raise ValueError("r must be >= 1")
    return solution(matrix, r)


@pytest.mark.parametrize("wrong, case, diagnosis", [
    (lambda m, r: m, "case 1 ", "returns the matrix unchanged"),
    (lambda m, r: keep(m, range(r + 1)), "case 1 ", "one layer too many"),
    (lambda m, r: keep(m, range(max(r - 1, 0))), "case 1 ", "one layer too few"),
    (lambda m, r: keep(m, range(min(m.shape) - r, min(m.shape))), "case 1 ", "the r smallest singular values"),
    (lambda m, r: keep(m, range(r), sigma=np.ones_like), "case 1 ", "the singular values are missing"),
    (lambda m, r: keep(m, range(r), right=lambda vt: vt.T), "case 1 ", "the columns of Vt"),
    (reject_zero, "case 4 ", "r = 0 is allowed"),
    (in_place, "case 1 ", "changed the matrix it was given"),
    (lambda m, r: (np.linalg.svd(m)[0][:, :r], np.linalg.svd(m)[2][:r]), "case 1 ", "returns a tuple"),
    (lambda m, r: np.linalg.svd(m, full_matrices=False)[0][:, :r], "case 1 ", "it returns shape (6, 2)"),
    (lambda m, r: solution(m, r) + 0.01, "case 1 ", "its rank is"),
    (lambda m, r: solution(m, r) * 1.01, "case 1 ", "its error ‖matrix − yours‖_F is too high"),
    (lambda m, r: solution(m, r) if m.shape[0] >= m.shape[1] else solution(m, r).T.copy().T * 0, "case 2 ",
     "not the best rank-1 approximation"),
    (lambda m, r: "matrix", "case 1 ", "expected an array"),
    (lambda m, r: sum(s * np.outer(u, v) for u, s, v in zip(np.linalg.svd(m)[0].T[:r], np.linalg.svd(m)[1][:r],
                                                             np.linalg.svd(m)[2][:r])), "case 4 ", "an empty sum"),
    (lambda m, r: 1 / 0, "case 1 ", "ZeroDivisionError"),
])
def test_truncate_mistakes_name_the_case_and_the_slip(wrong, case, diagnosis):
    result = nb02.check_truncate(wrong)
    assert result.passed is False and case in result.message and diagnosis in result.message, result.message


def test_truncate_ready_made_routines_fail_as_shortcuts():
    from sklearn.decomposition import TruncatedSVD
    from sklearn.utils.extmath import randomized_svd
    from scipy.sparse.linalg import svds

    def sklearn_truncated(m, r):
        if r == 0 or r == min(m.shape):
            return solution(m, r)
        model = TruncatedSVD(r, algorithm="arpack")
        return model.fit_transform(m) @ model.components_

    def scipy_svds(m, r):
        if r == 0 or r >= min(m.shape):
            return solution(m, r)
        u, s, vt = svds(m, k=r)
        return (u * s) @ vt

    shortcuts = [
        (lambda m, r: linalg.best_rank_r_approximation(m, r) if r else 0 * m, "best_rank_r_approximation"),
        (lambda m, r: np.matmul(*linalg.rank_r_factors(m, r)) if r else 0 * m, "rank_r_factors"),
        (lambda m, r: (lambda u, s, v: (u * s) @ v.T)(*torch.svd_lowrank(torch.from_numpy(m), q=max(r, 1))),
         "torch.svd_lowrank"),
        (lambda m, r: (lambda u, s, vt: (u * s) @ vt)(*randomized_svd(m, max(r, 1), random_state=0)),
         "randomized_svd"),
        (sklearn_truncated, "TruncatedSVD"), (scipy_svds, "svds"),
    ]
    for shortcut, named in shortcuts:
        result = nb02.check_truncate(shortcut)
        assert result.passed is False and "it calls" in result.message and named in result.message, result.message
        assert "yourself" in result.message
    assert sys.getprofile() is None


def test_truncate_messages_do_not_show_the_expected_matrix():
    for description, matrix, r in nb02._truncation_cases()[:3]:
        expected = linalg.best_rank_r_approximation(matrix, r)
        entries = {f"{abs(v):.3g}" for v in expected.ravel()} | {f"{abs(v):.4f}" for v in expected.ravel()}
        for wrong in (lambda m, r: solution(m, r) * 1.01, lambda m, r: m, lambda m, r: solution(m, r) + 0.01):
            message = nb02.check_truncate(wrong).message
            assert not [e for e in entries if e in message], message


def test_truncate_leaves_the_learners_random_numbers_alone():
    state = np.random.get_state()[1].copy()
    nb02.check_truncate(solution)
    assert np.array_equal(state, np.random.get_state()[1])


def notebook_measurement():
    """Exercise 3's measurement as notebook 02 makes it: bisection over the photo's reconstructions."""
    photo = linalg.load_sample_photo()
    U, S, Vt = np.linalg.svd(photo, full_matrices=False)
    low, high = 100, min(photo.shape)
    while high - low > 1:
        middle = (low + high) // 2
        if linalg.relative_error((U[:, :middle] * S[:middle]) @ Vt[:middle], photo) <= 0.02:
            high = middle
        else:
            low = middle
    errors = {rank: linalg.relative_error((U[:, :rank] * S[:rank]) @ Vt[:rank], photo) for rank in (50, 100)}
    return S, high, errors


def test_rank_prediction_solution_passes_on_the_notebooks_measurement():
    S, measured, errors = notebook_measurement()
    assert measured == nb02.smallest_rank_for_error(S, 0.02)                # the bisection finds Eckart–Young's rank
    prediction = round(100 + 50 * np.log(0.02 / errors[100]) / np.log(errors[100] / errors[50]))
    assert prediction < measured                                             # the solution says: measured is higher
    assert nb02.check_rank_prediction(prediction, measured)
    assert nb02.check_rank_prediction(NOT_ANSWERED, measured).passed is None


@pytest.mark.parametrize("prediction, words", [
    (100, "too low"), (120, "slowly at high ranks"), (500, "too high"), (0, "at least 1"), (232.0, "expected an int"),
])
def test_rank_prediction_mistakes(prediction, words):
    result = nb02.check_rank_prediction(prediction, 232)
    assert result.passed is False and words in result.message, result.message
    assert "232" not in result.message.replace("232.0", "")


def test_rank_prediction_close_enough_passes():
    assert nb02.check_rank_prediction(200, 232) and nb02.check_rank_prediction(232, 232)
    assert "spot on" in nb02.check_rank_prediction(232, 232).message
