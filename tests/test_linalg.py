"""Unit tests for lora_edu.linalg (notebooks 01 and 02)."""
import numpy as np
import pytest
import torch

from lora_edu import linalg


def rank2_matrix(seed=0, d=10, k=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(d, 2)) @ rng.normal(size=(2, k))


def test_as_matrix_accepts_lists_arrays_and_tensors():
    expected = np.array([[1.0, 2.0], [3.0, 4.0]])
    for value in ([[1, 2], [3, 4]], expected, torch.tensor([[1.0, 2.0], [3.0, 4.0]])):
        out = linalg.as_matrix(value)
        assert out.dtype == np.float64 and np.array_equal(out, expected)


@pytest.mark.parametrize("bad, error, words", [
    (np.ones(3), ValueError, "matrix must be 2-D"),
    (np.ones((2, 2, 2)), ValueError, "3-D"),
    (np.ones((0, 3)), ValueError, "must not be empty"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "matrix must hold real numbers"),
    (np.array([[True, False]]), TypeError, "matrix must hold real numbers"),
    (np.array([[1.0, np.nan]]), ValueError, "NaN"),
    ([[1, 2], [3]], ValueError, "matrix must be a 2-D array"),
])
def test_as_matrix_rejects_bad_input(bad, error, words):
    with pytest.raises(error, match=words):
        linalg.as_matrix(bad)


@pytest.mark.parametrize("function", [linalg.best_rank_r_approximation, linalg.rank_r_factors,
                                      linalg.fit_rank_r_factors, linalg.fit_lora_factors,
                                      linalg.random_subspace_approximation])
@pytest.mark.parametrize("r, error, words", [
    (0, ValueError, r"r must be an int >= 1 and <= 4 \(min\(d, k\) for a 6×4 matrix\), got 0"),
    (-1, ValueError, "got -1"),
    (5, ValueError, "got 5"),
    (2.0, TypeError, "r must be an int"),
    ("2", TypeError, "r must be an int"),
    (True, TypeError, "r must be an int"),
])
def test_rank_argument_is_checked(function, r, error, words):
    with pytest.raises(error, match=words):
        function(np.ones((6, 4)), r)


@pytest.mark.parametrize("call", [lambda m: linalg.best_rank_r_approximation(m, 1),
                                  lambda m: linalg.rank_r_factors(m, 1), linalg.numerical_rank, linalg.singular_values])
def test_non_2d_input_is_rejected_everywhere(call):
    with pytest.raises(ValueError, match="matrix must be 2-D"):
        call(np.ones(5))


def test_numerical_rank_exact_and_noisy():
    clean = rank2_matrix()
    assert linalg.numerical_rank(clean) == 2
    noise = 0.01 * np.random.default_rng(1).normal(size=clean.shape)
    noisy = clean + noise
    assert linalg.numerical_rank(noisy) == 10
    assert linalg.numerical_rank(noisy, tol=2 * np.linalg.norm(noise, 2)) == 2  # Weyl: σᵢ move by <= ‖noise‖₂
    assert linalg.numerical_rank(noisy, tol=0.0) == 10
    assert linalg.numerical_rank(np.zeros((3, 3))) == 0


@pytest.mark.parametrize("tol, error", [(-1.0, ValueError), (float("nan"), ValueError), ("0.1", TypeError),
                                        (True, TypeError)])
def test_numerical_rank_rejects_bad_tol(tol, error):
    with pytest.raises(error, match="tol must be"):
        linalg.numerical_rank(np.eye(3), tol=tol)


def test_rank_r_factors_reproduce_a_rank_r_matrix():
    m = rank2_matrix(d=10, k=7)
    b, a = linalg.rank_r_factors(m, 2)
    assert b.shape == (10, 2) and a.shape == (2, 7)
    assert np.allclose(b @ a, m, atol=1e-10)
    b1, a1 = linalg.rank_r_factors(m, 1)
    assert not np.allclose(b1 @ a1, m, atol=1e-3)


def test_best_rank_r_matches_truncation_error_and_beats_competitors():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(12, 9))
    sigma = linalg.singular_values(w)
    for r in range(1, 9):
        best = linalg.best_rank_r_approximation(w, r)
        assert np.linalg.matrix_rank(best) == r
        err = np.linalg.norm(w - best)
        assert err == pytest.approx(linalg.truncation_error(sigma, r), rel=1e-10)
        assert err < np.linalg.norm(w - linalg.random_subspace_approximation(w, r, seed=r))
    assert np.allclose(linalg.best_rank_r_approximation(w, 9), w)


def test_gradient_descent_fit_converges_to_the_svd_error():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(10, 8))
    b, a, losses = linalg.fit_rank_r_factors(w, 3, steps=3000)
    assert b.shape == (10, 3) and a.shape == (3, 8) and losses.shape == (3001,)
    assert losses[-1] < losses[0]
    best = np.linalg.norm(w - linalg.best_rank_r_approximation(w, 3))
    assert np.linalg.norm(w - b @ a) == pytest.approx(best, rel=1e-3)
    assert np.linalg.norm(w - b @ a) >= best * (1 - 1e-9)
    assert np.sqrt(2 * losses[-1]) == pytest.approx(np.linalg.norm(w - b @ a))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
    ({"steps": 2.5}, TypeError, "steps must be an int >= 1, got float 2.5"),
    ({"steps": True}, TypeError, "steps must be an int >= 1"),
    ({"lr": -0.1}, ValueError, r"lr must be a finite number > 0 \(or None for 0.2 / σ₁\), got -0.1"),
    ({"lr": float("inf")}, ValueError, "lr must be a finite number > 0"),
    ({"lr": "0.1"}, TypeError, "lr must be a finite number > 0"),
    ({"seed": "a"}, TypeError, "seed must be an int >= 0, got str 'a'"),
    ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
    ({"seed": 1.0}, TypeError, "seed must be an int >= 0"),
])
def test_gradient_descent_rejects_bad_settings(kwargs, error, words):
    with pytest.raises(error, match=words):
        linalg.fit_rank_r_factors(np.eye(3), 1, **kwargs)


@pytest.mark.parametrize("seed, error", [("a", TypeError), (-1, ValueError), (None, TypeError)])
def test_random_subspace_rejects_bad_seed(seed, error):
    with pytest.raises(error, match="seed must be an int >= 0"):
        linalg.random_subspace_approximation(np.eye(3), 1, seed=seed)


def test_gradient_descent_too_large_lr_raises_instead_of_returning_nan(recwarn):
    with pytest.raises(ValueError, match=r"lr = 10 is too large: gradient descent diverged.*use a smaller lr"):
        linalg.fit_rank_r_factors(rank2_matrix(), 2, steps=200, lr=10)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no overflow warnings on the way


def test_lora_fit_starts_as_lora_and_learns_a_low_rank_map_from_outputs():
    w = rank2_matrix(3, d=8, k=6)
    b, a, losses = linalg.fit_lora_factors(w, 2, steps=800, seed=1)
    assert b.shape == (8, 2) and a.shape == (2, 6) and losses.shape == (800,)
    assert linalg.relative_error(b @ a, w) < 1e-6 and losses[-1] < 1e-12 * losses[0]
    again = linalg.fit_lora_factors(w, 2, steps=800, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((b, a, losses), again))        # seeded: the same run
    _, a_start, losses_one = linalg.fit_lora_factors(w, 2, steps=1, seed=1)
    assert np.abs(a_start).max() <= 1 / np.sqrt(6)                                # A uniform in ±1/√k ...
    # ... and B = 0: the first loss is that of BA = 0 on the first batch, and A gets no gradient in the first step
    generator = torch.Generator().manual_seed(1)
    a0 = (torch.rand(2, 6, dtype=torch.float64, generator=generator) * 2 - 1) / 6**0.5
    x = torch.randn(32, 6, dtype=torch.float64, generator=generator)
    assert np.allclose(a_start, a0.numpy())
    assert losses_one[0] == pytest.approx(0.5 * ((x @ torch.from_numpy(w).T) ** 2).sum(dim=1).mean().item())


def test_lora_fit_with_too_few_ranks_lands_on_the_svd_error_not_below():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 5))
    b, a, _ = linalg.fit_lora_factors(w, 1, steps=800)
    best = linalg.relative_error(linalg.best_rank_r_approximation(w, 1), w)
    assert best <= linalg.relative_error(b @ a, w) < 1.02 * best


def test_lora_fit_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    linalg.fit_lora_factors(np.eye(3), 1, steps=5)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("kwargs, error, words", [
    ({"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
    ({"lr": 0}, ValueError, "lr must be a finite number > 0"),
    ({"lr": None}, TypeError, "lr must be a finite number > 0"),
    ({"batch": 0}, ValueError, "batch must be an int >= 1, got 0"),
    ({"batch": 2.0}, TypeError, "batch must be an int"),
    ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
])
def test_lora_fit_rejects_bad_settings(kwargs, error, words):
    with pytest.raises(error, match=words):
        linalg.fit_lora_factors(np.eye(3), 1, **kwargs)


def test_lora_fit_too_large_lr_raises_instead_of_returning_nan():
    with pytest.raises(ValueError, match=r"lr = 5 is too large: gradient descent diverged.*use a smaller lr"):
        linalg.fit_lora_factors(rank2_matrix(), 2, steps=300, lr=5)


def test_energy_and_truncation_error():
    sigma = np.array([3.0, 2.0, 1.0])
    assert linalg.energy_retained(sigma, 1) == pytest.approx(9 / 14)
    assert np.allclose(linalg.energy_retained(sigma), [9 / 14, 13 / 14, 1.0])
    assert linalg.truncation_error(sigma, 1) == pytest.approx(np.sqrt(5))
    assert linalg.truncation_error(sigma, 3) == 0.0
    assert linalg.truncation_error(sigma, 0) == pytest.approx(np.sqrt(14))  # rank 0: the whole norm
    with pytest.raises(ValueError, match=r"r must be an int >= 1 and <= 3 \(the number of singular values\), got 4"):
        linalg.energy_retained(sigma, 4)
    with pytest.raises(ValueError, match=r"r must be an int >= 1 and <= 3 \(the number of singular values\), got 0"):
        linalg.energy_retained(sigma, 0)
    with pytest.raises(ValueError, match=r"r must be an int >= 0 and <= 3 \(the number of singular values\), got -1"):
        linalg.truncation_error(sigma, -1)
    with pytest.raises(TypeError, match="r must be an int"):
        linalg.truncation_error(sigma, 1.0)
    for function in (linalg.energy_retained, linalg.truncation_error):
        with pytest.raises(ValueError, match="singular_values must be sorted from largest to smallest"):
            function([1.0, 3.0], 1)
    with pytest.raises(ValueError, match="singular_values must be a non-empty 1-D"):
        linalg.truncation_error(np.ones((2, 2)), 1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        linalg.energy_retained([1.0, -1.0], 1)
    with pytest.raises(ValueError, match="all zero"):
        linalg.energy_retained([0.0, 0.0], 1)


def test_relative_error_and_psnr():
    target = np.ones((4, 4))
    approx = target + 0.1
    assert linalg.relative_error(approx, target) == pytest.approx(0.1)
    assert linalg.psnr(approx, target) == pytest.approx(20.0)
    assert linalg.psnr(target, target) == float("inf")
    with pytest.raises(ValueError, match="approximation has shape"):
        linalg.relative_error(np.ones((2, 2)), target)
    with pytest.raises(ValueError, match="target is all zeros"):
        linalg.relative_error(target, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"peak must be a finite number > 0 "
                                         r"\(1.0 for images in \[0, 1\], 255 for bytes\)"):
        linalg.psnr(approx, target, peak=0)
    bytes_image = np.full((4, 4), 200.0)
    with pytest.raises(ValueError, match=r"target must lie in \[0, peak\] = \[0, 1\].*pass peak=255"):
        linalg.psnr(bytes_image + 1, bytes_image)
    with pytest.raises(ValueError, match="target must lie in"):
        linalg.psnr(target, -target)
    assert linalg.psnr(bytes_image + 2.55, bytes_image, peak=255) == pytest.approx(40.0)
    assert np.isfinite(linalg.psnr(target + 0.2, target))  # the approximation may overshoot the range


def test_sample_photo_is_grayscale_in_unit_range():
    photo = linalg.load_sample_photo()
    assert photo.shape == (600, 512)
    assert 0.0 <= photo.min() < photo.max() <= 1.0
