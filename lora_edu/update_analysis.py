"""What a LoRA update needs and looks like: planted rank, rsLoRA's gradient scale, full fine-tuning's ΔW spectrum.

Explained in notebook 06_rank_and_alpha_explorer.

- `planted_rank_problem` / `planted_rank_sweep`: a frozen ``W0`` and a target ``W0 + ΔW*`` of known rank k.
- `lora_gradient_norms_at_init`, `lora_first_step_norms`, `lora_first_step`, `loglog_slope`: how the scaling
  rule sets the size of the gradient at initialisation and of Adam's first step (and its loss drop).
- `train_lora_two_learning_rates`: LoRA under Adam with one learning rate for A and another for B.
- `full_finetuning_delta`, `directions_for_energy`: the spectrum of the update full fine-tuning makes.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _validate
from .batched import batch_indices, frozen_linear_stack, train_lora_batch
from .linalg import energy_retained, singular_values
from .lora import LoraConfig, add_lora, lora_layers
from .scaling_rules import FIXED_ALPHA, RANKS, alpha_for, lora_init_A, lora_scaling
from .strategies import apply_strategy
from .training import evaluate_accuracy, train

__all__ = ["PlantedRankProblem", "planted_rank_problem", "PlantedRankSweep", "planted_rank_sweep",
           "lora_gradient_norms_at_init", "lora_first_step_norms", "lora_first_step", "loglog_slope",
           "full_finetuning_delta", "directions_for_energy", "TwoRateRun", "train_lora_two_learning_rates",
           "full_rank_layers"]


@dataclass
class PlantedRankProblem:
    """A regression task whose answer is a rank-k change of a frozen matrix.

    ``w0``: (d, d), the frozen weight; ``delta``: (d, d), the planted change ``ΔW* = Σ_{i<k} u_i v_iᵀ``
    (k orthonormal directions, each with singular value 1); ``x_train`` (n_train, d), ``y_train =
    x (W0 + ΔW*)ᵀ + noise`` (n_train, d); the same for ``x_val``, ``y_val``. ``noise_floor = noise_std²``:
    the validation loss of the true matrix, which no model can beat on average.
    """

    true_rank: int
    w0: torch.Tensor
    delta: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    noise_std: float

    @property
    def noise_floor(self) -> float:
        return self.noise_std ** 2

    def best_rank_r_loss(self, r: int) -> float:
        """The expected validation loss of the best rank-``r`` change: ``noise² + (k − r)⁺ / d``
        (each missed unit direction adds ``1/d`` to the mean squared error when ``x ~ N(0, I)``)."""
        r = _validate.integer("r", r, 1)
        return self.noise_floor + max(self.true_rank - r, 0) / self.w0.shape[0]


def planted_rank_problem(true_rank: int, d: int = 32, n_train: int = 512, n_val: int = 512,
                         noise_std: float = 0.1, seed: int = 0) -> PlantedRankProblem:
    """Make a `PlantedRankProblem` with a ``ΔW*`` of rank ``true_rank`` (1 ≤ k ≤ d).

    ``W0 ~ N(0, 1/d)``; ``u_i, v_i``: the first k columns of two random orthogonal matrices; inputs
    ``x ~ N(0, I_d)``; noise ``N(0, noise_std²)``. Everything except k comes from ``seed``, so problems
    with the same seed share ``W0``, the inputs, the noise and their first directions.
    See notebook 06_rank_and_alpha_explorer.
    """
    d = _validate.integer("d", d, 2)
    true_rank = _validate.integer("true_rank", true_rank, 1, d, hint=f"(d={d})")
    n_train = _validate.integer("n_train", n_train, 1)
    n_val = _validate.integer("n_val", n_val, 1)
    noise_std = _validate.positive("noise_std", noise_std)
    seed = _validate.integer("seed", seed, 0)
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d, d, generator=g) / math.sqrt(d)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    delta = (u[:, :true_rank] @ v[:, :true_rank].T).float()
    x_train = torch.randn(n_train, d, generator=g)
    x_val = torch.randn(n_val, d, generator=g)
    noise_train = noise_std * torch.randn(n_train, d, generator=g)
    noise_val = noise_std * torch.randn(n_val, d, generator=g)
    target = w0 + delta
    return PlantedRankProblem(true_rank, w0, delta, x_train, x_train @ target.T + noise_train,
                              x_val, x_val @ target.T + noise_val, noise_std)


@dataclass
class PlantedRankSweep:
    """LoRA of every rank in ``ranks`` fitted to planted changes of every rank in ``true_ranks``.

    ``val_loss``: (len(ranks), len(true_ranks), len(eval_steps)); ``noise_floor``; ``best_possible``:
    (len(ranks), len(true_ranks)), the expected loss of the best rank-r change (`best_rank_r_loss`).
    """

    ranks: tuple
    true_ranks: tuple
    eval_steps: list[int]
    val_loss: np.ndarray
    noise_floor: float
    best_possible: np.ndarray

    def curve(self, r: int, true_rank: int) -> np.ndarray:
        _validate.choice("r", r, self.ranks)
        _validate.choice("true_rank", true_rank, self.true_ranks)
        return self.val_loss[self.ranks.index(r), self.true_ranks.index(true_rank)]

    def final(self) -> np.ndarray:
        """(len(ranks), len(true_ranks)): the validation loss after the last step."""
        return self.val_loss[:, :, -1]


def planted_rank_sweep(ranks=tuple(range(1, 9)), true_ranks=tuple(range(1, 9)), steps: int = 300,
                       lr: float = 0.02, d: int = 32, noise_std: float = 0.1, eval_every: int = 10,
                       seed: int = 0, n_train: int = 512, n_val: int = 512) -> PlantedRankSweep:
    """Fit LoRA (scaling 1, i.e. α = r; full batch; Adam at ``lr``) of each rank to each planted problem
    (`planted_rank_problem` with ``d``, ``n_train``, ``n_val``, ``noise_std`` and ``seed``).

    All true ranks of one LoRA rank train side by side (`train_lora_batch` with one target per
    configuration). Returns a `PlantedRankSweep`. See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _validate.integers("ranks", ranks)
    true_ranks = _validate.integers("true_ranks", true_ranks)
    d = _validate.integer("d", d, 2)
    if max(ranks + true_ranks) > d:
        raise ValueError(f"ranks and true_ranks must be <= d={d}, got {max(ranks + true_ranks)}")
    problems = [planted_rank_problem(k, d=d, n_train=n_train, n_val=n_val, noise_std=noise_std, seed=seed)
                for k in true_ranks]
    first, g = problems[0], len(problems)
    # One configuration per planted problem: shared inputs, one target per configuration (y: (K, n, d)).
    stacked = SimpleNamespace(x_train=first.x_train, x_val=first.x_val,
                              y_train=torch.stack([p.y_train for p in problems]),
                              y_val=torch.stack([p.y_val for p in problems]))
    runs = [train_lora_batch([(first.w0, torch.zeros(d))], [0], stacked, r, [1.0] * g, [lr] * g, steps, loss="mse",
                             batch_size=None, eval_every=eval_every, seed=seed) for r in ranks]
    best = np.array([[p.best_rank_r_loss(r) for p in problems] for r in ranks])
    return PlantedRankSweep(ranks, true_ranks, runs[0].eval_steps, np.stack([run.val_loss for run in runs]),
                            first.noise_floor, best)


def _targets_and_task(model: nn.Module, target_modules, task) -> tuple[tuple[str, ...], object]:
    """The names of the layers that get LoRA (default: the model's ``linear_targets``; checked by
    `frozen_linear_stack`) and ``task`` moved to the model's device."""
    layers, _ = frozen_linear_stack(model, target_modules)
    return tuple(model.linear_targets if target_modules is None else target_modules), task.to(layers[0][0].device)


def lora_gradient_norms_at_init(base_model: nn.Module, task, ranks=RANKS, alpha: float = FIXED_ALPHA,
                                use_rslora: bool = False, seeds=tuple(range(16)),
                                target_modules=None) -> np.ndarray:
    """The norm of the loss gradient with respect to the LoRA factors at initialisation, per rank.

    For each rank and seed: `lora_edu.add_lora` on a copy of ``base_model`` at ``target_modules`` (default:
    the model's ``linear_targets``), each target's ``lora_A`` (r, in) redrawn in order from
    ``torch.Generator().manual_seed(seed)`` (`lora_init_A`), one full-batch cross-entropy on the training set,
    backward; the norm ``√(Σ_layers ‖∂L/∂B‖²)`` (``∂L/∂A = 0`` while ``B = 0``). Torch's global random state
    is left as it was.

    ``∂L/∂B = s · G Aᵀ`` (out, r) with ``G = ∂L/∂ΔW`` (out, in), the same for every rank at init. Its r columns
    ``G a_i`` come from r independent rows of ``A`` (entry scale independent of r), so ``E‖∂L/∂B‖² ∝ s² r``.
    Returns (len(ranks),): the root mean square over ``seeds``, which follows ``s·√r`` (``r^(-1/2)`` under
    ``s = α/r``, flat under rsLoRA's ``s = α/√r``). See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _validate.integers("ranks", ranks)
    alpha = _validate.positive("alpha", alpha)
    _validate.boolean("use_rslora", use_rslora)
    seeds = _validate.integers("seeds", seeds, 0)
    target_modules, task = _targets_and_task(base_model, target_modules, task)
    squares = np.zeros((len(ranks), len(seeds)))
    for i, r in enumerate(ranks):
        for j, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):  # add_lora's own draw must not move the global state
                model = add_lora(copy.deepcopy(base_model), LoraConfig(target_modules=list(target_modules), r=r,
                                                                       lora_alpha=alpha, use_rslora=use_rslora))
            generator = torch.Generator().manual_seed(seed)
            layers = lora_layers(model)
            with torch.no_grad():
                for layer in (layers[name] for name in target_modules):
                    layer.lora_A["default"].copy_(lora_init_A(layer.in_features, r, generator=generator))
            model.train()
            F.cross_entropy(model(task.x_train), task.y_train).backward()
            squares[i, j] = sum(float(layer.lora_B["default"].grad.pow(2).sum()) for layer in layers.values())
    return np.sqrt(squares.mean(axis=1))


def lora_first_step_norms(base_model: nn.Module, task, ranks=RANKS, alpha_rule: str = "fixed",
                          scaling_rule: str = "alpha/r", lr: float = 1e-3, fixed_alpha: float = FIXED_ALPHA,
                          seed: int = 0, target_modules=None) -> np.ndarray:
    """The size of LoRA's update after one full-batch Adam step, per rank: ``√(Σ_layers ‖s B₁ A₁‖_F²)``.

    Adam's first step moves every entry of ``B`` by ``lr`` (``B₁ = −lr · sign(∂L/∂B)``) whatever the gradient's
    scale, and ``A`` not at all, so ``‖ΔW₁‖ = s · lr · ‖sign(G Aᵀ) A‖ ≈ c · s·√r`` for ``r ≪ in``: it grows
    like ``√r`` when ``s`` is constant (α = r, α = 2r), falls like ``r^(-1/2)`` under α/r with a fixed α, and
    is flat under α/√r. Only approximately: the signs ``sign(G a_i)`` line up a little with the overlaps
    ``a_i · a_j`` of A's rows (a part growing like ``r/√in``), so measured log-log slopes sit slightly above
    -1/2, 0 and +1/2. Returns (len(ranks),). See notebook 06_rank_and_alpha_explorer.
    """
    return lora_first_step(base_model, task, ranks, alpha_rule, scaling_rule, lr, fixed_alpha, seed,
                           target_modules)[0]


def lora_first_step(base_model: nn.Module, task, ranks=RANKS, alpha_rule: str = "fixed",
                    scaling_rule: str = "alpha/r", lr: float = 1e-3, fixed_alpha: float = FIXED_ALPHA,
                    seed: int = 0, target_modules=None) -> tuple[np.ndarray, np.ndarray]:
    """One full-batch Adam step of LoRA at each rank: ``(norms, drops)``, both (len(ranks),).

    ``norms``: the size of the update, ``√(Σ_layers ‖s B₁ A₁‖_F²)`` (as `lora_first_step_norms`);
    ``drops``: the validation loss before the step minus after it. For a small step the drop is about
    ``⟨−∂L/∂W, ΔW₁⟩``, so it grows with ``‖ΔW₁‖`` while the step's direction stays alike.
    See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _validate.integers("ranks", ranks)
    lr = _validate.positive("lr", lr)
    layers, positions = frozen_linear_stack(base_model, target_modules)
    task = task.to(layers[0][0].device)
    norms, drops = [], []
    for r in ranks:
        s = lora_scaling(alpha_for(alpha_rule, r, fixed_alpha), r, scaling_rule)
        run = train_lora_batch(layers, positions, task, r, [s], [lr], 1, batch_size=None, seed=seed)
        norms.append(math.sqrt(sum(float((s * (b[0] @ a[0])).pow(2).sum()) for a, b in run.factors.values())))
        drops.append(float(run.val_loss[0, 0] - run.val_loss[0, -1]))
    return np.array(norms), np.array(drops)


@dataclass
class TwoRateRun:
    """What `train_lora_two_learning_rates` recorded: ``val_loss`` (steps + 1,), the validation loss before
    training and after every step; ``delta_weights``: ``{layer name: ΔW = s B A (out, in)}`` after training."""

    val_loss: np.ndarray
    delta_weights: dict


def train_lora_two_learning_rates(base_model: nn.Module, task, r: int, alpha: float, lr_A: float, lr_B: float,
                                  steps: int = 30, batch_size: int | None = 256, eps: float = 1e-8,
                                  seed: int = 0, target_modules=None, init_scale: float = 1.0) -> TwoRateRun:
    """LoRA (α/r scaling) trained with `torch.optim.Adam` and two parameter groups: every ``lora_A`` at
    ``lr_A``, every ``lora_B`` at ``lr_B`` (β = 0.9, 0.999, ``eps``; LoRA+ uses such a pair, notebook 10).

    `lora_edu.add_lora` on a copy of ``base_model`` at ``target_modules`` (default: the model's
    ``linear_targets``); layer position i's ``A (r, in)`` is `lora_init_A` with seed ``seed + i`` and ``B = 0``,
    the batches those of `batch_indices` with ``seed``, as in `lora_edu.batched.train_lora_batch`. So
    ``(c·α, lr, lr)`` and ``(α, lr, c·lr)`` start from the same function, and under Adam they stay the same
    function (up to ``eps``): see notebook 06_rank_and_alpha_explorer. ``init_scale`` multiplies every initial
    ``A`` (default 1): under Adam ``(c·α, lr, lr)`` and ``(α, √c·lr, √c·lr)`` with ``init_scale=√c`` are the same
    function too. Returns a `TwoRateRun`.
    """
    r = _validate.integer("r", r, 1)
    alpha = _validate.positive("alpha", alpha)
    lr_A, lr_B = _validate.positive("lr_A", lr_A), _validate.positive("lr_B", lr_B)
    steps = _validate.integer("steps", steps, 1)
    eps = _validate.real("eps", eps, 0)
    seed = _validate.integer("seed", seed, 0)
    init_scale = _validate.positive("init_scale", init_scale)
    layers, positions = frozen_linear_stack(base_model, target_modules)
    target_modules, task = _targets_and_task(base_model, target_modules, task)
    with torch.random.fork_rng(devices=[]):  # add_lora's own draw of A must not move the global state
        model = add_lora(copy.deepcopy(base_model), LoraConfig(target_modules=list(target_modules), r=r,
                                                               lora_alpha=alpha))
    lora = lora_layers(model)
    with torch.no_grad():
        for position, name in zip(positions, target_modules):
            layer = lora[name]
            layer.lora_A["default"].copy_(init_scale * lora_init_A(layer.in_features, r, seed + position,
                                                                   layer.base.weight.device))
    optimizer = torch.optim.Adam([
        {"params": [lora[name].lora_A["default"] for name in target_modules], "lr": lr_A},
        {"params": [lora[name].lora_B["default"] for name in target_modules], "lr": lr_B},
    ], betas=(0.9, 0.999), eps=eps)
    rows = batch_indices(len(task.x_train), batch_size, steps, seed).to(task.x_train.device)

    def val_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(task.x_val), task.y_val))

    model.train()
    losses = [val_loss()]
    for idx in rows:
        loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(val_loss())
    deltas = {name: lora[name].delta_weight("default").detach().clone() for name in target_modules}
    return TwoRateRun(np.array(losses), deltas)


def loglog_slope(x, y) -> float:
    """The slope of the least-squares line through ``(log x, log y)``: ``y ∝ x^slope``.
    ``x``, ``y``: 1-D, the same length (≥ 2), positive. See notebook 06_rank_and_alpha_explorer."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2, got shapes {x.shape} and {y.shape}")
    if np.any(x <= 0) or np.any(y <= 0) or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be positive and finite (their logarithms are taken)")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def full_finetuning_delta(base_model: nn.Module, task, steps: int = 60, lr: float = 1e-3,
                          batch_size: int = 64, seed: int = 0, target_modules=None) -> tuple[dict, float]:
    """Fine-tune every weight of a copy of ``base_model`` on ``task`` (AdamW without weight decay, the same
    batches as `run_lora_grid`) and return, for each of ``target_modules`` (default: the model's
    ``linear_targets``), ``({name: ΔW = W_after − W_before (out, in) as float64 NumPy},
    validation accuracy)``. See notebook 06_rank_and_alpha_explorer.
    """
    steps = _validate.integer("steps", steps, 1)
    lr = _validate.positive("lr", lr)
    batch_size = _validate.integer("batch_size", batch_size, 1)
    target_modules, task = _targets_and_task(base_model, target_modules, task)
    model = copy.deepcopy(base_model)
    before = {name: model.get_submodule(name).weight.detach().clone() for name in target_modules}
    apply_strategy(model, "full")
    rows = batch_indices(len(task.x_train), batch_size, steps, seed).to(task.x_train.device)
    train(model, lambda step: (task.x_train[rows[step]], task.y_train[rows[step]]), steps, lr, progress=False)
    deltas = {name: (model.get_submodule(name).weight.detach() - before[name]).double().cpu().numpy()
              for name in target_modules}
    return deltas, evaluate_accuracy(model, task.x_val, task.y_val)


def directions_for_energy(matrix, fraction: float = 0.9) -> int:
    """How many singular directions of ``matrix`` (d, k) hold ``fraction`` of its energy ``‖·‖_F²``:
    the smallest n with ``(σ₁² + … + σ_n²) / Σσ² ≥ fraction``. See notebook 06_rank_and_alpha_explorer."""
    _validate.real("fraction", fraction, 0, 1, open_min=True)
    curve = energy_retained(singular_values(matrix))  # singular_values checks that matrix is a 2-D array of numbers
    return int(np.searchsorted(curve, fraction - 1e-12) + 1)


def full_rank_layers(model: nn.Module, r: int, target_modules=None) -> list[str]:
    """The layers among ``target_modules`` (default: the model's ``linear_targets``) on which rank ``r`` is full
    rank, ``r ≥ min(out, in)``: there ``ΔW = s B A`` can be any matrix, so LoRA is full fine-tuning of that
    weight written as a product (a reparametrisation, not a low-rank update).
    See notebook 06_rank_and_alpha_explorer."""
    r = _validate.integer("r", r, 1)
    frozen_linear_stack(model, target_modules)  # checks the model and the names
    target_modules = tuple(model.linear_targets if target_modules is None else target_modules)
    return [name for name in target_modules if r >= min(model.get_submodule(name).weight.shape)]
