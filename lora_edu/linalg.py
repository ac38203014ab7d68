"""Low-rank linear algebra: rank, the SVD, the best rank-r approximation and rank-r factors.

Explained in notebooks 01_rank_and_decomposition and 02_svd_and_low_rank_approximation.
Everything here is plain NumPy on 2-D arrays (a torch tensor is accepted and converted), except
`fit_lora_factors`, which trains the factors with PyTorch autograd as notebook 01's loop does.

Naming follows LoRA: a ``d × k`` matrix ``W`` of rank ``r`` is stored as ``B @ A`` with
``B`` of shape ``(d, r)`` and ``A`` of shape ``(r, k)``, so it costs ``r·(d + k)`` numbers instead of ``d·k``.
"""
from __future__ import annotations

import numpy as np

from . import _validate

__all__ = ["as_matrix", "check_rank", "singular_values", "numerical_rank", "best_rank_r_approximation",
           "rank_r_factors", "fit_rank_r_factors", "fit_lora_factors", "random_subspace_approximation", "energy_retained",
           "truncation_error", "relative_error", "psnr", "load_sample_photo"]


def as_matrix(matrix, name: str = "matrix") -> np.ndarray:
    """Return ``matrix`` as a 2-D float64 NumPy array of shape ``(d, k)``.

    Accepts nested lists, NumPy arrays and torch tensors (any device). Raises ``TypeError`` when the
    entries are not real numbers and ``ValueError`` when it is not 2-D, is empty, or holds NaN/infinity;
    the message names the parameter ``name``. See notebook 01_rank_and_decomposition.
    """
    try:
        array = _real_array(matrix, name).astype(np.float64)
    except ValueError as exc:  # ragged lists
        raise ValueError(f"{name} must be a 2-D array of numbers (d, k); could not read it: {exc}") from None
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (d, k), got {array.ndim}-D shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must not contain NaN or infinity")
    return array


def _real_array(values, name: str) -> np.ndarray:
    """``values`` (lists, a NumPy array or a torch tensor on any device) as a NumPy array of ints or floats."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers (int or float), got dtype {array.dtype}")
    return array


def check_rank(r, d: int, k: int, name: str = "r") -> int:
    """``r`` as an int, checked ``1 <= r <= min(d, k)``: ``TypeError`` for a non-integer (also ``True`` and
    ``2.0``), ``ValueError`` out of range; the message names the parameter and the allowed values."""
    return _validate.integer(name, r, 1, min(d, k), hint=f"(min(d, k) for a {d}×{k} matrix)")


def singular_values(matrix) -> np.ndarray:
    """The singular values σ₁ ≥ σ₂ ≥ … ≥ 0 of a ``(d, k)`` matrix: shape ``(min(d, k),)``.
    See notebook 02_svd_and_low_rank_approximation."""
    return np.linalg.svd(as_matrix(matrix), compute_uv=False)


def numerical_rank(matrix, tol: float | None = None) -> int:
    """The number of singular values of a ``(d, k)`` matrix larger than ``tol``.

    The exact rank counts σᵢ > 0, but rounding and noise make every σᵢ a little positive, so we count
    σᵢ > tol instead. ``tol`` is the size of change we choose to ignore: adding a perturbation ``E``
    moves each singular value by at most ``‖E‖₂`` (Weyl), so a tolerance just above the noise's
    spectral norm recovers the rank of the clean matrix. By default ``tol = σ₁ · max(d, k) · ε``
    (float64 rounding only, as ``numpy.linalg.matrix_rank``). See notebook 01_rank_and_decomposition.
    """
    array = as_matrix(matrix)
    sigma = np.linalg.svd(array, compute_uv=False)
    tol = (sigma[0] * max(array.shape) * np.finfo(np.float64).eps if tol is None
           else _validate.real("tol", tol, 0, hint="(or None for the rounding default)"))
    return int(np.sum(sigma > tol))


def best_rank_r_approximation(matrix, r: int) -> np.ndarray:
    """The best rank-``r`` approximation of a ``(d, k)`` matrix: the truncated SVD, shape ``(d, k)``.

    With ``W = U Σ Vᵀ``, the answer is ``U[:, :r] Σ[:r, :r] Vᵀ[:r, :]``. Eckart–Young: no rank-``r``
    matrix is closer to ``W`` in the Frobenius (or spectral) norm; the Frobenius error is
    ``sqrt(σ_{r+1}² + … + σ_min(d,k)²)`` (see `truncation_error`). See notebook 02_svd_and_low_rank_approximation.
    """
    array = as_matrix(matrix)
    r = check_rank(r, *array.shape)
    u, s, vt = np.linalg.svd(array, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def rank_r_factors(matrix, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``B`` of shape ``(d, r)`` and ``A`` of shape ``(r, k)`` with ``B @ A`` the best rank-``r``
    approximation of a ``(d, k)`` matrix (the matrix itself when its rank is at most ``r``).

    From the SVD: ``B = U_r Σ_r^{1/2}`` and ``A = Σ_r^{1/2} V_rᵀ`` (the singular values split evenly between the
    two): ``B`` and ``A`` hold ``r·(d + k)`` numbers instead of ``d·k``. See notebook 01_rank_and_decomposition.
    """
    array = as_matrix(matrix)
    r = check_rank(r, *array.shape)
    u, s, vt = np.linalg.svd(array, full_matrices=False)
    root = np.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vt[:r]


def fit_rank_r_factors(matrix, r: int, steps: int = 2000, lr: float | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``B`` ``(d, r)`` and ``A`` ``(r, k)`` to a known ``(d, k)`` matrix ``W`` by full-batch gradient descent
    (no SVD, only gradients).

    Minimises ``L = ½‖B A − W‖²_F``, whose gradients are ``∂L/∂B = (B A − W) Aᵀ`` and ``∂L/∂A = Bᵀ (B A − W)``,
    from small random factors, both nonzero (NumPy generator seeded with ``seed``). The default step
    ``lr = 0.2 / σ₁(W)`` is stable (a step so large that the loss blows up raises ``ValueError``). Returns
    ``(B, A, losses)``, ``losses`` (steps + 1,): the loss before each step and after the last.

    Unlike LoRA (and `fit_lora_factors`) it sees the target matrix itself and starts with ``B ≠ 0``: it is the
    gradient-descent competitor of the truncated SVD in notebook 02_svd_and_low_rank_approximation, where the
    loss must be exactly ``½‖B A − W‖²_F`` for the comparison with Eckart–Young.
    """
    target = as_matrix(matrix)
    d, k = target.shape
    r = check_rank(r, d, k)
    steps = _validate.integer("steps", steps, 1)
    sigma_1 = np.linalg.norm(target, 2)
    default_lr = 0.2 / max(sigma_1, 1e-12)
    lr = default_lr if lr is None else _validate.positive("lr", lr, hint="(or None for 0.2 / σ₁)")
    rng = np.random.default_rng(_validate.integer("seed", seed, 0))
    scale = np.sqrt(max(sigma_1, 1e-12) / r) * 0.1
    b = rng.normal(0.0, scale, size=(d, r))
    a = rng.normal(0.0, scale, size=(r, k))
    losses = np.empty(steps + 1)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected below and reported clearly
        for step in range(steps + 1):
            residual = b @ a - target
            losses[step] = 0.5 * np.sum(residual**2)
            if not np.isfinite(losses[step]) or losses[step] > 1e6 * max(losses[0], 1e-300):
                raise ValueError(f"lr = {lr:g} is too large: gradient descent diverged (the loss grew from "
                                 f"{losses[0]:.3g} to {losses[step]:.3g} by step {step}); use a smaller lr, "
                                 f"e.g. the default lr=None (0.2 / σ₁ = {default_lr:.3g})")
            if step < steps:  # both gradients at the old B and A
                b, a = b - lr * (residual @ a.T), a - lr * (b.T @ residual)
    return b, a, losses


def fit_lora_factors(matrix, r: int, steps: int = 800, lr: float = 0.01, batch: int = 32,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learn ``lora_B`` ``(d, r)`` and ``lora_A`` ``(r, k)`` so that ``B A x`` matches ``y = W x``, started as LoRA
    starts: the loop of notebook 01_rank_and_decomposition, kept here for later use.

    ``W`` ``(d, k)`` is seen only through a task: each step draws a batch of inputs ``x ~ N(0, I_k)`` (shape
    ``(batch, k)``), computes the targets ``y = x Wᵀ`` and the model's outputs ``x Aᵀ Bᵀ`` (LoRA's branch,
    ``lora_B(lora_A(x))``, with scaling 1), and takes one SGD step on the loss
    ``½ · mean over the batch of ‖B A x − W x‖²`` (its expectation is ``½‖B A − W‖²_F``).
    ``B`` starts at zero and ``A`` uniform in ``±1/√k`` (PEFT's default Kaiming-uniform), so ``B A = 0`` at first.
    Float64 on the CPU, random numbers from a ``torch.Generator`` seeded with ``seed`` (the global generator is
    not touched; ``lora_edu.seed_everything(seed)`` before the notebook's loop draws the same numbers).
    A step so large that the loss blows up raises ``ValueError``. Returns NumPy ``(B, A, losses)``, ``losses``
    ``(steps,)``: the loss of each step's batch, before the step.
    """
    import torch

    target = torch.from_numpy(as_matrix(matrix))
    d, k = target.shape
    r = check_rank(r, d, k)
    steps = _validate.integer("steps", steps, 1)
    lr = _validate.positive("lr", lr)
    batch = _validate.integer("batch", batch, 1)
    generator = torch.Generator().manual_seed(_validate.integer("seed", seed, 0))
    lora_B = torch.zeros(d, r, dtype=torch.float64, requires_grad=True)
    lora_A = ((torch.rand(r, k, dtype=torch.float64, generator=generator) * 2 - 1) / k**0.5).requires_grad_()
    optimizer = torch.optim.SGD([lora_A, lora_B], lr=lr)
    losses = np.empty(steps)
    for step in range(steps):
        x = torch.randn(batch, k, dtype=torch.float64, generator=generator)
        loss = 0.5 * ((x @ lora_A.T @ lora_B.T - x @ target.T) ** 2).sum(dim=1).mean()
        losses[step] = loss.item()
        if not np.isfinite(losses[step]) or losses[step] > 1e6 * max(losses[0], 1e-300):
            raise ValueError(f"lr = {lr:g} is too large: gradient descent diverged (the loss grew from "
                             f"{losses[0]:.3g} to {losses[step]:.3g} by step {step}); use a smaller lr")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lora_B.detach().numpy(), lora_A.detach().numpy(), losses


def random_subspace_approximation(matrix, r: int, seed: int = 0) -> np.ndarray:
    """A rank-``r`` approximation of a ``(d, k)`` matrix from a *random* ``B`` of shape ``(d, r)``.

    ``B`` is drawn at random; ``A`` ``(r, k)`` is then the best possible for that ``B`` (least squares,
    ``A = B⁺ W``), so ``B @ A`` is the projection of ``W`` onto a random r-dimensional column space.
    A fair competitor for the truncated SVD (only the subspace differs). See notebook 02_svd_and_low_rank_approximation.
    """
    array = as_matrix(matrix)
    r = check_rank(r, *array.shape)
    b = np.random.default_rng(_validate.integer("seed", seed, 0)).normal(size=(array.shape[0], r))
    a, *_ = np.linalg.lstsq(b, array, rcond=None)
    return b @ a


def _as_singular_values(values, name: str = "singular_values") -> np.ndarray:
    array = _real_array(values, name).astype(np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(array.shape)}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    if np.any(np.diff(array) > 0):
        raise ValueError(f"{name} must be sorted from largest to smallest (σ₁ ≥ σ₂ ≥ …), as singular_values() returns "
                         f"them; got {array[:6].tolist()}{' …' if array.size > 6 else ''}")
    return array


def energy_retained(singular_values, r: int | None = None):
    """The fraction of the squared Frobenius norm ("energy") kept by the top ``r`` singular values.

    ``energy(r) = (σ₁² + … + σ_r²) / (σ₁² + … + σ_n²)``. With ``r=None``, returns the whole curve,
    shape ``(n,)``, whose entry ``r − 1`` is ``energy(r)``. ``singular_values`` has shape ``(n,)``, sorted
    from largest to smallest, and ``1 <= r <= n``. ``1 − energy(r)`` is the squared relative
    error of the best rank-``r`` approximation. See notebook 02_svd_and_low_rank_approximation.
    """
    sigma = _as_singular_values(singular_values)
    total = np.sum(sigma**2)
    if total == 0:
        raise ValueError("singular_values are all zero: a zero matrix has no energy to keep")
    curve = np.cumsum(sigma**2) / total
    if r is None:
        return curve
    r = _validate.integer("r", r, 1, sigma.size, hint="(the number of singular values)")
    return float(curve[r - 1])


def truncation_error(singular_values, r: int) -> float:
    """The Frobenius error of the best rank-``r`` approximation, from the singular values alone:
    ``‖W − W_r‖_F = sqrt(σ_{r+1}² + … + σ_n²)`` (Eckart–Young). ``singular_values`` has shape ``(n,)``,
    sorted from largest to smallest; ``r`` runs from 0 (the zero matrix: the error is ``‖W‖_F``) to ``n``
    (exact). See notebook 02_svd_and_low_rank_approximation.
    """
    sigma = _as_singular_values(singular_values)
    r = _validate.integer("r", r, 0, sigma.size, hint="(the number of singular values)")
    return float(np.sqrt(np.sum(sigma[r:] ** 2)))


def _matching_pair(approximation, target) -> tuple[np.ndarray, np.ndarray]:
    approx, exact = as_matrix(approximation, "approximation"), as_matrix(target, "target")
    if approx.shape != exact.shape:
        raise ValueError(f"approximation has shape {approx.shape} but target has shape {exact.shape}; they must match")
    return approx, exact


def relative_error(approximation, target) -> float:
    """``‖approximation − target‖_F / ‖target‖_F`` for two matrices of the same shape ``(d, k)``.
    See notebook 02_svd_and_low_rank_approximation."""
    approx, exact = _matching_pair(approximation, target)
    norm = np.linalg.norm(exact)
    if norm == 0:
        raise ValueError("target is all zeros: the relative error is undefined")
    return float(np.linalg.norm(approx - exact) / norm)


def psnr(approximation, target, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in decibels: ``10·log10(peak² / MSE)`` for images ``(h, w)`` in [0, peak].

    Higher is better: about 30 dB looks close to the original, infinite when the images are equal. ``target``
    must lie in ``[0, peak]`` (a 0–255 image needs ``peak=255`` rather than a meaningless negative PSNR); the
    approximation may overshoot a little (a truncated SVD does). See notebook 02_svd_and_low_rank_approximation.
    """
    approx, exact = _matching_pair(approximation, target)
    _validate.positive("peak", peak, hint="(1.0 for images in [0, 1], 255 for bytes)")
    if exact.min() < 0 or exact.max() > peak:
        raise ValueError(f"target must lie in [0, peak] = [0, {peak:g}], but its values run from {exact.min():g} to "
                         f"{exact.max():g}; pass peak=255 for 0–255 images, or scale the images to [0, 1]")
    mse = float(np.mean((approx - exact) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def load_sample_photo() -> np.ndarray:
    """Matplotlib's bundled photo (``grace_hopper.jpg``, so nothing is downloaded) in gray (the mean of the three
    colour channels), shape ``(600, 512)``, values in [0, 1]. See notebook 02_svd_and_low_rank_approximation."""
    import matplotlib.cbook as cbook
    import matplotlib.pyplot as plt

    rgb = plt.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return rgb.astype(np.float64).mean(axis=2) / 255.0
