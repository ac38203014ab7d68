"""What the update LoRA learns looks like: the LoRA paper's §7 analyses and the findings since, as functions.

Explained in notebook 09_what_lora_learns.

- `subspace_similarity`, `expected_random_similarity`: φ(A, A', i, j) of Hu et al. (2021, §7.2, Figures 3-4),
  how much of the top-i directions of one factor lie in the top-j directions of another.
- `top_singular_directions`, `random_directions`, `projection_norm`, `amplification_factor`,
  `amplification_table`: ‖ΔW‖_F / ‖Uᵀ W V‖_F and the three projections of Table 7 (§7.3).
- `max_cosine_to_base`, `intruder_dimensions`: singular vectors of a fine-tuned weight far from every
  pretrained one (Shuttleworth et al. 2024, arXiv 2410.21228; PEFT's ``peft/tuners/lora/intruders.py`` uses
  the same test with ``top_k=10, threshold_epsilon=0.5``).
- `target_module_sweep`: LoRA on different ``target_modules`` of the tiny GPT (attention vs MLP), each with its
  own learning rates and seeds (LoRA §7.1, Table 5).
- `lora_sweep`, `full_finetune_sweep`: the digits runs every analysis of notebook 09 shares (LoRA of several
  ranks, learning rates and seeds side by side, and full fine-tuning on the same batches), each scored on the
  new task and on the original task it may forget.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _validate
from .batched import _forward, batch_indices, frozen_linear_stack, train_lora_batch
from .data import random_windows
from .lora import LoraConfig, add_lora
from .linalg import as_matrix, check_rank
from .scaling_rules import FIXED_ALPHA, lora_scaling
from .strategies import apply_strategy
from .training import evaluate_accuracy, evaluate_loss, train

__all__ = ["subspace_similarity", "expected_random_similarity", "top_singular_directions", "random_directions",
           "projection_norm", "amplification_factor", "amplification_table", "max_cosine_to_base",
           "intruder_dimensions", "LoRASweep", "lora_sweep", "FullSweep", "full_finetune_sweep", "TargetSweep",
           "target_module_sweep"]


# Subspace similarity (LoRA §7.2) ---------------------------------------------------------------

def _row_space(factor, name: str) -> np.ndarray:
    """The right singular vectors of ``factor`` (r, n) as rows, shape (r, n), strongest first."""
    matrix = as_matrix(factor, name)
    if matrix.shape[0] > matrix.shape[1]:
        raise ValueError(f"{name} must have shape (r, n) with r <= n (rows are directions in R^n), "
                         f"got {matrix.shape}; pass B.T for a B factor of shape (out, r)")
    return np.linalg.svd(matrix, full_matrices=False)[2]


def subspace_similarity(a, b) -> np.ndarray:
    """φ(a, b, i, j) = ‖V_iᵀ V'_j‖_F² / min(i, j) for every i ≤ r_a, j ≤ r_b: shape (r_a, r_b), entry
    ``[i-1, j-1]``, each in [0, 1].

    ``a`` (r_a, n) and ``b`` (r_b, n): two factors whose rows live in the same space, e.g. LoRA's ``lora_A``
    (r, in) of two runs (for ``lora_B`` (out, r) pass ``B.T``). ``V_i`` (n, i): the top-i right singular vectors
    of ``a``; ``V'_j`` the top-j of ``b``. φ = 1 when one subspace contains the other, 0 when they are
    orthogonal; two random subspaces give about ``max(i, j) / n`` (`expected_random_similarity`).
    Hu et al. 2021 (arXiv 2106.09685), §7.2, Figures 3-4. See notebook 09_what_lora_learns.
    """
    va, vb = _row_space(a, "a"), _row_space(b, "b")
    if va.shape[1] != vb.shape[1]:
        raise ValueError(f"a and b must have rows of the same length n, got {va.shape[1]} and {vb.shape[1]}")
    overlap = np.cumsum(np.cumsum((va @ vb.T) ** 2, axis=0), axis=1)  # [i-1, j-1] = ‖V_iᵀ V'_j‖_F²
    i, j = np.arange(1, len(va) + 1), np.arange(1, len(vb) + 1)
    return np.clip(overlap / np.minimum.outer(i, j), 0.0, 1.0)


def expected_random_similarity(i: int, j: int, n: int) -> float:
    """The mean φ of an i-dimensional and an independent, uniformly random j-dimensional subspace of R^n:
    ``max(i, j) / n`` (``E[P_j] = (j/n) I`` for the projection onto the random one, so
    ``E‖V_iᵀ V'_j‖_F² = i j / n``, divided by ``min(i, j)``). See notebook 09_what_lora_learns."""
    n = _validate.integer("n", n, 1)
    i = _validate.integer("i", i, 1, n, hint=f"(n={n})")
    j = _validate.integer("j", j, 1, n, hint=f"(n={n})")
    return max(i, j) / n


# Amplification (LoRA §7.3) ---------------------------------------------------------------------

def top_singular_directions(matrix, r: int) -> tuple[np.ndarray, np.ndarray]:
    """``(U (out, r), V (in, r))``: the top-r left and right singular vectors of ``matrix`` (out, in), as columns.
    See notebook 09_what_lora_learns."""
    m = as_matrix(matrix)
    r = check_rank(r, *m.shape)
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return u[:, :r], vt[:r].T


def random_directions(out_features: int, in_features: int, r: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(U (out, r), V (in, r))``: r orthonormal directions drawn uniformly on each side (QR of a Gaussian
    matrix, seeded). The "random matrix" row of the LoRA paper's Table 7. See notebook 09_what_lora_learns."""
    out_features = _validate.integer("out_features", out_features, 1)
    in_features = _validate.integer("in_features", in_features, 1)
    r = check_rank(r, out_features, in_features)
    rng = np.random.default_rng(_validate.integer("seed", seed, 0))
    u, _ = np.linalg.qr(rng.standard_normal((out_features, r)))
    v, _ = np.linalg.qr(rng.standard_normal((in_features, r)))
    return u, v


def projection_norm(w, u, v) -> float:
    """``‖Uᵀ W V‖_F``: how much of ``W`` (out, in) lies in the directions ``U`` (out, r) and ``V`` (in, r)
    (orthonormal columns). The paper writes ``Uᵀ W Vᵀ`` with V's directions as rows. See notebook 09_what_lora_learns."""
    w = as_matrix(w, "w")
    u, v = as_matrix(u, "u"), as_matrix(v, "v")
    if u.shape[0] != w.shape[0] or v.shape[0] != w.shape[1] or u.shape[1] != v.shape[1]:
        raise ValueError(f"u must be (out, r) and v (in, r) for w of shape {w.shape}, got u {u.shape} and v {v.shape}")
    return float(np.linalg.norm(u.T @ w @ v))


def _same_shape(delta, w) -> tuple[np.ndarray, np.ndarray]:
    delta, w = as_matrix(delta, "delta"), as_matrix(w, "w")
    if delta.shape != w.shape:
        raise ValueError(f"delta and w must have the same shape (out, in), got {delta.shape} and {w.shape}")
    return delta, w


def amplification_factor(delta, w, r: int) -> float:
    """``‖ΔW‖_F / ‖Uᵀ W V‖_F`` with ``U``, ``V`` the top-r singular directions of ``ΔW`` (`top_singular_directions`):
    how strongly the update amplifies the directions of ``W`` it points along. ``delta``, ``w``: (out, in).
    Hu et al. 2021, §7.3: about 21.5 (= 6.91 / 0.32) at r = 4 for GPT-3's W_q at layer 48 (Table 7).
    See notebook 09_what_lora_learns."""
    delta, w = _same_shape(delta, w)
    u, v = top_singular_directions(delta, r)
    projected = projection_norm(w, u, v)
    if projected == 0:
        raise ValueError("W has no part in ΔW's top directions (‖Uᵀ W V‖_F = 0): the factor is infinite")
    return float(np.linalg.norm(delta)) / projected


def amplification_table(delta, w, r: int, seed: int = 0) -> dict:
    """The LoRA paper's Table 7 for one layer: ``‖Uᵀ W V‖_F`` with U, V the top-r directions of ``ΔW``
    (``"delta"``), of ``W`` itself (``"w"``) and random ones (``"random"``, `random_directions` with ``seed``);
    ``"w_norm"`` = ‖W‖_F, ``"delta_norm"`` = ‖ΔW‖_F and ``"factor"`` = `amplification_factor`.
    See notebook 09_what_lora_learns."""
    delta, w = _same_shape(delta, w)
    row = {"delta": projection_norm(w, *top_singular_directions(delta, r)),
           "w": projection_norm(w, *top_singular_directions(w, r)),
           "random": projection_norm(w, *random_directions(*w.shape, r, seed=seed)),
           "w_norm": float(np.linalg.norm(w)), "delta_norm": float(np.linalg.norm(delta))}
    row["factor"] = row["delta_norm"] / row["delta"]
    return row


# Intruder dimensions (Shuttleworth et al. 2024) -----------------------------------------------

def max_cosine_to_base(w_base, w_tuned, top_k: int = 10) -> np.ndarray:
    """For each of the top-k left singular vectors ``u'_i`` of ``w_tuned`` (out, in), by singular value:
    ``max_j |cos(u'_i, u_j)|`` over every left singular vector ``u_j`` of ``w_base`` (out, in). Shape (top_k,).
    1 = it is one of the pretrained directions; a random direction in R^out gets about √(2 ln(out) / out).
    See notebook 09_what_lora_learns."""
    w_tuned, w_base = _same_shape(w_tuned, w_base)
    top_k = _validate.integer("top_k", top_k, 1, min(w_base.shape), hint=f"(min(out, in) = {min(w_base.shape)})")
    u_base = np.linalg.svd(w_base, full_matrices=False)[0]
    u_tuned = np.linalg.svd(w_tuned, full_matrices=False)[0][:, :top_k]
    return np.abs(u_tuned.T @ u_base).max(axis=1)


def intruder_dimensions(w_base, w_tuned, top_k: int = 10, epsilon: float = 0.5) -> list[int]:
    """The indices i < top_k whose singular vector of ``w_tuned`` is an intruder: ``max_cosine_to_base < epsilon``,
    i.e. far from every pretrained singular vector. Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An
    Illusion of Equivalence", arXiv 2410.21228); PEFT's ``reduce_intruder_dimension`` (``peft/tuners/lora/
    intruders.py``) uses this test with defaults ``top_k=10``, ``threshold_epsilon=0.5``.
    See notebook 09_what_lora_learns."""
    epsilon = _validate.real("epsilon", epsilon, 0, 1, open_min=True)
    return [int(i) for i in np.flatnonzero(max_cosine_to_base(w_base, w_tuned, top_k) < epsilon)]


# The shared digits runs ------------------------------------------------------------------------

def _accuracy_and_loss(logits, y) -> tuple[np.ndarray, np.ndarray]:
    """(G,) accuracy and cross-entropy of logits (G, n, classes) against y (n,)."""
    accuracy = (logits.argmax(-1) == y).float().mean(dim=1)
    loss = F.cross_entropy(logits.transpose(1, 2), y.expand(len(logits), -1), reduction="none").mean(dim=1)
    return accuracy.cpu().numpy(), loss.cpu().numpy()


@dataclass
class LoRASweep:
    """LoRA at every rank × learning rate × seed, trained on one task and scored on it and on an old one.

    ``accuracy``, ``loss``: (R, L, S) on the new task's validation set after training; ``old_accuracy``: (R, L, S)
    on the original task's validation set (what is left of it: forgetting); ``base_old_accuracy``: the frozen
    model's; ``deltas[(r, seed)]``: ``{layer name: ΔW = s B A (L, out, in) float64 NumPy}``, one per learning rate;
    ``a_factors[(r, seed)]``: ``{layer name: A (L, r, in)}``; ``weights``: ``{layer name: W0 (out, in)}``.
    """

    ranks: tuple
    learning_rates: tuple
    seeds: tuple
    alpha: float
    accuracy: np.ndarray
    loss: np.ndarray
    old_accuracy: np.ndarray
    base_old_accuracy: float
    deltas: dict = field(repr=False)
    a_factors: dict = field(repr=False)
    weights: dict = field(repr=False)

    def best_lr(self, r: int) -> float:
        """The learning rate with the lowest mean validation loss (over seeds) at rank ``r``."""
        _validate.choice("r", r, self.ranks)
        return self.learning_rates[int(np.argmin(self.loss[self.ranks.index(r)].mean(axis=1)))]


def lora_sweep(base_model: nn.Module, task, old_task, ranks=(1, 4, 8, 64), learning_rates=(1e-3, 3e-3, 1e-2, 3e-2),
               seeds=(0, 1, 2), steps: int = 100, batch_size: int = 64, alpha: float = FIXED_ALPHA,
               target_modules=None) -> LoRASweep:
    """Train LoRA (``s = alpha / r``: α fixed, so the rank does not change the size of the first steps'
    ``ΔW`` much, see notebook 06) on ``task`` for every rank, learning rate and seed; score each run on
    ``task`` and on ``old_task`` (both `lora_edu.data.DigitsTask`). All learning rates of one (rank, seed)
    train side by side (`lora_edu.batched.train_lora_batch`; the seed sets A's start and the batches).
    Cost: about ``len(ranks) · len(seeds) · steps`` batched steps. Returns a `LoRASweep`.
    See notebook 09_what_lora_learns.
    """
    ranks = _validate.integers("ranks", ranks)
    learning_rates = _validate.positives("learning_rates", learning_rates)
    seeds = _validate.integers("seeds", seeds, 0)
    alpha = _validate.positive("alpha", alpha)
    layers, positions = frozen_linear_stack(base_model, target_modules)
    names = [name for name in (target_modules or base_model.linear_targets)]
    device = layers[0][0].device
    task, old_task = task.to(device), old_task.to(device)
    shape = (len(ranks), len(learning_rates), len(seeds))
    accuracy, loss, old_accuracy = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    deltas, a_factors = {}, {}
    for i, r in enumerate(ranks):
        s = lora_scaling(alpha, r)
        for k, seed in enumerate(seeds):
            run = train_lora_batch(layers, positions, task, r, [s] * len(learning_rates), learning_rates, steps,
                                   batch_size=batch_size, eval_every=steps, seed=seed)
            with torch.no_grad():
                scale = torch.full((len(learning_rates), 1, 1), s, device=device)
                accuracy[i, :, k], loss[i, :, k] = _accuracy_and_loss(_forward(task.x_val, layers, run.factors, scale),
                                                                      task.y_val)
                old_accuracy[i, :, k] = _accuracy_and_loss(_forward(old_task.x_val, layers, run.factors, scale),
                                                           old_task.y_val)[0]
            deltas[r, seed] = {name: (s * run.factors[p][1].double() @ run.factors[p][0].double()).cpu().numpy()
                               for name, p in zip(names, positions)}
            a_factors[r, seed] = {name: run.factors[p][0].double().cpu().numpy() for name, p in zip(names, positions)}
    with torch.no_grad():
        base_old = float(_accuracy_and_loss(_forward(old_task.x_val, layers, {}, 0.0)[None], old_task.y_val)[0][0])
    weights = {name: layers[p][0].double().cpu().numpy() for name, p in zip(names, positions)}
    return LoRASweep(ranks, learning_rates, seeds, alpha, accuracy, loss, old_accuracy, base_old, deltas, a_factors,
                     weights)


@dataclass
class FullSweep:
    """Full fine-tuning at every learning rate × seed: ``accuracy``, ``loss``, ``old_accuracy``: (L, S), as in
    `LoRASweep`; ``deltas[(lr, seed)]``: ``{layer name: ΔW (out, in) float64 NumPy}`` of the target layers."""

    learning_rates: tuple
    seeds: tuple
    accuracy: np.ndarray
    loss: np.ndarray
    old_accuracy: np.ndarray
    deltas: dict = field(repr=False)

    def best_lr(self) -> float:
        """The learning rate with the lowest mean validation loss over seeds."""
        return self.learning_rates[int(np.argmin(self.loss.mean(axis=1)))]


def full_finetune_sweep(base_model: nn.Module, task, old_task, learning_rates=(1e-4, 3e-4, 1e-3, 3e-3),
                        seeds=(0, 1, 2), steps: int = 100, batch_size: int = 64, target_modules=None) -> FullSweep:
    """Fine-tune every weight of a copy of ``base_model`` (AdamW without weight decay, `lora_edu.training.train`)
    on ``task`` with the same batches as `lora_sweep` (`lora_edu.batched.batch_indices` with the seed), for each
    learning rate and seed; score on ``task`` and ``old_task``; keep ΔW of ``target_modules`` (default: the
    model's ``linear_targets``). Returns a `FullSweep`. See notebook 09_what_lora_learns.
    """
    learning_rates = _validate.positives("learning_rates", learning_rates)
    seeds = _validate.integers("seeds", seeds, 0)
    steps = _validate.integer("steps", steps, 1)
    batch_size = _validate.integer("batch_size", batch_size, 1)
    layers, _ = frozen_linear_stack(base_model, target_modules)  # checks the model and the names
    names = tuple(target_modules or base_model.linear_targets)
    device = layers[0][0].device
    task, old_task = task.to(device), old_task.to(device)
    shape = (len(learning_rates), len(seeds))
    accuracy, loss, old_accuracy, deltas = np.zeros(shape), np.zeros(shape), np.zeros(shape), {}
    for j, lr in enumerate(learning_rates):
        for k, seed in enumerate(seeds):
            model = apply_strategy(copy.deepcopy(base_model), "full")
            rows = batch_indices(len(task.x_train), batch_size, steps, seed).to(device)
            train(model, lambda step: (task.x_train[rows[step]], task.y_train[rows[step]]), steps, lr, progress=False)
            accuracy[j, k] = evaluate_accuracy(model, task.x_val, task.y_val)
            loss[j, k] = evaluate_loss(model, task.x_val, task.y_val)
            old_accuracy[j, k] = evaluate_accuracy(model, old_task.x_val, old_task.y_val)
            deltas[lr, seed] = {name: (model.get_submodule(name).weight.detach()
                                       - base_model.get_submodule(name).weight.detach()).double().cpu().numpy()
                                for name in names}
    return FullSweep(learning_rates, seeds, accuracy, loss, old_accuracy, deltas)


@dataclass
class TargetSweep:
    """LoRA on several sets of ``target_modules`` of one language model.

    ``labels``: the configurations' names; ``ranks``, ``trainable``: (C,) each one's rank and number of trainable
    numbers; ``loss``: (C, L, S) validation loss (nats per character) after training, per configuration, learning
    rate and seed; ``base_loss``: the frozen model's.
    """

    labels: tuple
    ranks: tuple
    trainable: tuple
    learning_rates: tuple
    seeds: tuple
    loss: np.ndarray
    base_loss: float

    def best(self) -> tuple[np.ndarray, tuple]:
        """``(losses (C, S), learning rates (C,))``: each configuration's seeds at its own best learning rate
        (the lowest mean loss over seeds)."""
        index = self.loss.mean(axis=2).argmin(axis=1)
        return self.loss[np.arange(len(self.labels)), index], tuple(self.learning_rates[i] for i in index)


def target_module_sweep(base_model: nn.Module, train_ids: torch.Tensor, val_windows, configs: dict,
                        learning_rates=(3e-3, 1e-2, 2e-2), seeds=(0, 1), steps: int = 40, batch_size: int = 8,
                        context: int = 32, alpha: float = FIXED_ALPHA) -> TargetSweep:
    """Fine-tune LoRA on each configuration ``{label: (target_modules, r)}`` of a copy of ``base_model`` (a
    language model such as `lora_edu.models.TinyGPT`; α fixed, ``s = α/r``) for every learning rate and seed:
    AdamW (`lora_edu.training.train`) on ``steps`` batches of ``batch_size`` random windows of ``context``
    characters of ``train_ids`` (1-D ids), drawn with the seed, which also draws the starting ``A``'s. Scored
    by the mean cross-entropy on ``val_windows = (x, y)``. Torch's global random state is left as it was.
    Returns a `TargetSweep`. See notebook 09_what_lora_learns.
    """
    _validate.module("base_model", base_model)
    if not isinstance(configs, dict) or not configs:
        raise ValueError(f"configs must be a non-empty dict {{label: (target_modules, r)}}, got {configs!r}")
    learning_rates = _validate.positives("learning_rates", learning_rates)
    seeds = _validate.integers("seeds", seeds, 0)
    steps = _validate.integer("steps", steps, 1)
    alpha = _validate.positive("alpha", alpha)
    loss = np.zeros((len(configs), len(learning_rates), len(seeds)))
    trainable, ranks = [], []
    device = next(base_model.parameters()).device
    for c, (label, (targets, r)) in enumerate(configs.items()):
        r = _validate.integer(f"the rank of {label!r}", r, 1)
        ranks.append(r)
        for j, lr in enumerate(learning_rates):
            for k, seed in enumerate(seeds):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = add_lora(copy.deepcopy(base_model), LoraConfig(target_modules=list(targets), r=r,
                                                                           lora_alpha=alpha))
                generator = torch.Generator().manual_seed(seed)
                train(model, lambda step: random_windows(train_ids, batch_size, context, generator, device), steps, lr,
                      progress=False)
                loss[c, j, k] = evaluate_loss(model, *val_windows)
        trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
    return TargetSweep(tuple(configs), tuple(ranks), tuple(trainable), learning_rates, seeds, loss,
                       evaluate_loss(base_model, *val_windows))
