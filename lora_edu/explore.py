"""Exploring rank and α: many small LoRA runs at once, planted rank, rsLoRA's gradient scale, intrinsic rank.

Explained in notebook 06_rank_and_alpha_explorer.

- `train_lora_batch` trains G LoRA configurations side by side on one frozen MLP: each configuration has
  its own factors ``A (G, r, in)``, ``B (G, out, r)``, scaling ``s`` and learning rate, and all of them
  see the same batches. One batched matrix product per layer replaces G separate models, so a grid of
  more than a hundred runs fits in a few seconds of CPU time. Each slice computes exactly what
  `lora_edu.LoRALinear` computes (``h = W0 x + b + s · B A x``) trained with Adam (``tests/test_explore.py``
  checks it against `lora_edu.add_lora` + `lora_edu.training.train`).
- `planted_rank_problem` / `planted_rank_sweep`: a frozen ``W0`` and a target ``W0 + ΔW*`` of known rank k.
- `run_lora_grid`: ranks × α rules × learning rates × scaling rules on a digits shift task.
- `lora_gradient_norms_at_init`, `loglog_slope`: how the scaling rule sets the gradient's size at init.
- `full_finetuning_delta`, `directions_for_energy`: the spectrum of the update full fine-tuning makes.
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .linalg import energy_retained
from .lora import add_lora, lora_layers

RANKS = (1, 2, 4, 8, 16, 32, 64)
FIXED_ALPHA = 16
ALPHA_RULES = ("r", "2r", "fixed")  # alpha = r, alpha = 2r, alpha = FIXED_ALPHA
ALPHA_RULE_LABELS = {"r": "α = r", "2r": "α = 2r", "fixed": f"α = {FIXED_ALPHA}"}
SCALING_RULES = ("alpha/r", "alpha/sqrt(r)")  # LoRA's rule and rsLoRA's
SCALING_RULE_LABELS = {"alpha/r": "α/r (LoRA)", "alpha/sqrt(r)": "α/√r (rsLoRA)"}
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mse")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

__all__ = ["RANKS", "FIXED_ALPHA", "ALPHA_RULES", "ALPHA_RULE_LABELS", "SCALING_RULES", "SCALING_RULE_LABELS",
           "alpha_for", "lora_scaling", "lora_init_A", "batch_indices", "frozen_mlp_layers", "BatchRun",
           "train_lora_batch", "PlantedRankProblem", "planted_rank_problem", "PlantedRankSweep",
           "planted_rank_sweep", "LoRAGrid", "run_lora_grid", "compare_alpha_and_lr",
           "lora_gradient_norms_at_init", "lora_first_step_norms", "loglog_slope", "full_finetuning_delta",
           "directions_for_energy"]


# ----------------------------------------------------------------------------------------------
# Checking inputs
# ----------------------------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive finite number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")


def _check_int_list(name: str, values, minimum: int = 1) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a non-empty list of ints >= {minimum}, got {type(values).__name__}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must be a non-empty list of ints >= {minimum}, got an empty list")
    for v in values:
        _check_int(f"each of {name}", v, minimum)
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {values}")
    return tuple(int(v) for v in values)


def _check_float_list(name: str, values) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a non-empty list of positive numbers, got {type(values).__name__}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must be a non-empty list of positive numbers, got an empty list")
    return tuple(_check_positive(f"each of {name}", v) for v in values)


# ----------------------------------------------------------------------------------------------
# α, the scaling and LoRA's initialisation
# ----------------------------------------------------------------------------------------------

def alpha_for(rule: str, r: int, fixed_alpha: float = FIXED_ALPHA) -> float:
    """The α an α rule gives at rank ``r``: ``"r"`` → ``r``, ``"2r"`` → ``2r``, ``"fixed"`` → ``fixed_alpha``.

    See notebook 06_rank_and_alpha_explorer.
    """
    _check_choice("rule", rule, ALPHA_RULES)
    r = _check_int("r", r)
    fixed_alpha = _check_positive("fixed_alpha", fixed_alpha)
    return {"r": float(r), "2r": 2.0 * r, "fixed": fixed_alpha}[rule]


def lora_scaling(alpha: float, r: int, rule: str = "alpha/r") -> float:
    """The factor LoRA multiplies ``B A x`` by: ``α / r`` (LoRA) or ``α / √r`` (rsLoRA, ``rule="alpha/sqrt(r)"``).

    With ``α = 2r`` and the α/r rule it is 2 for every rank. See notebook 06_rank_and_alpha_explorer.
    """
    alpha = _check_positive("alpha", alpha)
    r = _check_int("r", r)
    _check_choice("rule", rule, SCALING_RULES)
    return alpha / r if rule == "alpha/r" else alpha / math.sqrt(r)


def lora_init_A(in_features: int, rank: int, seed: int = 0, device=None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """LoRA's initial ``A``, shape ``(rank, in_features)``: uniform on ``[-1/√in, 1/√in]``.

    The same distribution as PEFT's default (Kaiming-uniform with ``a = √5``, see `lora_edu.LoRALinear`),
    drawn from its own CPU generator seeded with ``seed`` (or from ``generator``, a CPU
    ``torch.Generator``, when given: then ``seed`` is not used), never from torch's global state. With a
    seed, the first ``r`` rows of a rank-64 draw are the rank-``r`` draw, so adapters of different ranks
    start from nested directions. See notebook 06_rank_and_alpha_explorer.
    """
    in_features = _check_int("in_features", in_features)
    rank = _check_int("rank", rank)
    if generator is None:
        generator = torch.Generator().manual_seed(_check_int("seed", seed, 0))
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator or None, got {generator!r}")
    bound = 1.0 / math.sqrt(in_features)
    a = torch.empty(rank, in_features).uniform_(-bound, bound, generator=generator)
    return a.to(device) if device is not None else a


def batch_indices(n: int, batch_size: int | None, steps: int, seed: int = 0) -> torch.Tensor:
    """The training rows of every step, shape ``(steps, batch_size)``: uniform draws from ``range(n)``,
    seeded, so every run of a grid (and full fine-tuning) sees the same batches. ``batch_size=None``
    means the full batch ``arange(n)`` each step."""
    n = _check_int("n", n)
    steps = _check_int("steps", steps)
    seed = _check_int("seed", seed, 0)
    if batch_size is None:
        return torch.arange(n).expand(steps, n)
    batch_size = _check_int("batch_size", batch_size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (steps, batch_size), generator=generator)


def frozen_mlp_layers(model: nn.Module, targets=("fc1", "fc2")) -> tuple[list, list[int]]:
    """A digits MLP's frozen layers as ``[(W (out, in), b (out,)), ...]`` in forward order (ReLU between
    them), and the positions of the ``targets`` among them. See notebook 06_rank_and_alpha_explorer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [n for n in ("fc1", "fc2", "head") if isinstance(getattr(model, n, None), nn.Linear)]
    if names != ["fc1", "fc2", "head"]:
        raise TypeError("model must be a lora_edu.models.DigitsMLP (nn.Linear layers fc1, fc2, head), "
                        f"got {type(model).__name__}")
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty list of names among fc1, fc2, head, got {targets!r}")
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ValueError(f"targets {unknown} are not layers of the MLP; allowed values: {', '.join(names)}")
    layers = [(getattr(model, n).weight.detach(), getattr(model, n).bias.detach()) for n in names]
    return layers, [names.index(t) for t in targets]


# ----------------------------------------------------------------------------------------------
# Many LoRA runs at once
# ----------------------------------------------------------------------------------------------

@dataclass
class BatchRun:
    """What `train_lora_batch` recorded for its G configurations.

    ``train_loss``: (G, steps), the loss of each step's batch; ``eval_steps``: the steps at which the
    validation set was scored (0 = before training); ``val_loss``: (G, len(eval_steps));
    ``val_accuracy``: (G,) after the last step (classification only, else None);
    ``factors``: ``{layer position: (A (G, r, in), B (G, out, r))}`` after training.
    """

    train_loss: np.ndarray
    eval_steps: list[int]
    val_loss: np.ndarray
    val_accuracy: np.ndarray | None
    factors: dict = field(default_factory=dict, repr=False)


def _forward(x, layers, lora, scaling):
    """Frozen MLP with LoRA: ``z_i = h W_iᵀ + b_i + s (h A_iᵀ) B_iᵀ`` on the LoRA layers; ReLU between layers.
    ``x``: (n, in) shared by every configuration; the result is (G, n, out)."""
    h = x
    for i, (w, b) in enumerate(layers):
        z = h @ w.T + b
        if i in lora:
            a, bb = lora[i]
            z = z + scaling * ((h @ a.transpose(1, 2)) @ bb.transpose(1, 2))
        h = F.relu(z) if i < len(layers) - 1 else z
    return h


def _loss_per_config(output, target, loss: str):
    """(G,) mean loss of each configuration. ``target``: (n,) class ids, or (n, out) / (G, n, out) values."""
    g = output.shape[0]
    if loss == "cross_entropy":
        per_row = F.cross_entropy(output.reshape(-1, output.shape[-1]), target.expand(g, -1).reshape(-1),
                                  reduction="none")
        return per_row.view(g, -1).mean(dim=1)
    return ((output - target) ** 2).reshape(g, -1).mean(dim=1)


def train_lora_batch(layers, targets, data, r: int, scalings, learning_rates, steps: int, *,
                     loss: str = "cross_entropy", batch_size: int | None = 64, eval_every: int = 5,
                     optimizer: str = "adam", seed: int = 0) -> BatchRun:
    """Train G LoRA configurations of rank ``r`` side by side on one frozen MLP.

    ``layers``: ``[(W (out, in), b (out,)), ...]`` (see `frozen_mlp_layers`); ``targets``: positions of the
    layers that get LoRA; ``data``: anything with ``x_train (n, in)``, ``y_train``, ``x_val``, ``y_val``
    (a `lora_edu.data.DigitsTask` or a `PlantedRankProblem`); for ``loss="mse"`` the targets may carry a
    leading G dimension (one target per configuration). ``scalings`` and ``learning_rates``: G numbers.

    Configuration g computes ``z = h W0ᵀ + b + s_g (h A_gᵀ) B_gᵀ`` on each target layer with
    ``A_g (r, in)`` from `lora_init_A` (layer position i draws with seed ``seed + i``; the same start for
    every g) and ``B_g (out, r) = 0``, and trains
    ``A_g, B_g`` with Adam (β = 0.9, 0.999, ε = 1e-8, no weight decay, as `lora_edu.training.train`) or
    plain SGD at its own learning rate. Every configuration sees the same batches (`batch_indices`).
    Returns a `BatchRun`. See notebook 06_rank_and_alpha_explorer.
    """
    r = _check_int("r", r)
    steps = _check_int("steps", steps)
    eval_every = _check_int("eval_every", eval_every)
    seed = _check_int("seed", seed, 0)
    _check_choice("loss", loss, LOSSES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    scalings = _check_float_list("scalings", scalings)
    learning_rates = _check_float_list("learning_rates", learning_rates)
    if len(scalings) != len(learning_rates):
        raise ValueError(f"scalings and learning_rates must have the same length (one per configuration), "
                         f"got {len(scalings)} and {len(learning_rates)}")
    if (not layers or isinstance(targets, (str, bytes)) or not hasattr(targets, "__iter__") or not targets
            or not all(isinstance(t, int) and 0 <= t < len(layers) for t in targets)):
        raise ValueError(f"targets must be a non-empty list of layer positions in [0, {len(layers)}), "
                         f"got {targets!r}")
    for name in ("x_train", "y_train", "x_val", "y_val"):
        if not isinstance(getattr(data, name, None), torch.Tensor):
            raise TypeError(f"data must have tensors x_train, y_train, x_val, y_val; {name} is missing")
    g = len(scalings)
    device = layers[0][0].device
    lora = {}
    for position in targets:
        w = layers[position][0]
        a = lora_init_A(w.shape[1], r, seed + position, device)
        lora[position] = (a.expand(g, -1, -1).clone().requires_grad_(True),
                          torch.zeros(g, w.shape[0], r, device=device, requires_grad=True))
    params = [p for pair in lora.values() for p in pair]
    s = torch.tensor(scalings, device=device).view(g, 1, 1)
    lr = torch.tensor(learning_rates, device=device).view(g, 1, 1)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    rows = batch_indices(len(data.x_train), batch_size, steps, seed).to(device)
    per_config_targets = loss == "mse" and data.y_train.dim() == 3

    def scored():
        with torch.no_grad():
            out = _forward(data.x_val, layers, lora, s)
            return _loss_per_config(out, data.y_val, loss).cpu()

    eval_steps, val_losses, train_losses = [0], [scored()], []
    # Adam by hand rather than torch.optim.Adam: each configuration has its own learning rate, and here all G
    # configurations live in one tensor (torch's optimizers take one learning rate per parameter tensor).
    beta1, beta2 = ADAM_BETAS
    for step in range(steps):
        idx = rows[step]
        y = data.y_train[:, idx] if per_config_targets else data.y_train[idx]
        batch_loss = _loss_per_config(_forward(data.x_train[idx], layers, lora, s), y, loss)
        for p in params:
            p.grad = None
        batch_loss.sum().backward()  # configurations share no parameters: each gets its own gradient
        train_losses.append(batch_loss.detach().cpu())
        with torch.no_grad():
            t = step + 1
            for p, (m, v) in zip(params, moments):
                if optimizer == "sgd":
                    p.sub_(lr * p.grad)
                    continue
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denominator = (v / (1 - beta2 ** t)).sqrt().add_(ADAM_EPS)
                p.sub_(lr * (m / (1 - beta1 ** t)) / denominator)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            eval_steps.append(step + 1)
            val_losses.append(scored())
    accuracy = None
    if loss == "cross_entropy":
        with torch.no_grad():
            out = _forward(data.x_val, layers, lora, s)
            accuracy = (out.argmax(dim=-1) == data.y_val).float().mean(dim=1).cpu().numpy()
    factors = {k: (a.detach(), b.detach()) for k, (a, b) in lora.items()}
    return BatchRun(torch.stack(train_losses, 1).numpy(), eval_steps, torch.stack(val_losses, 1).numpy(),
                    accuracy, factors)


# ----------------------------------------------------------------------------------------------
# Planted rank
# ----------------------------------------------------------------------------------------------

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
        r = _check_int("r", r)
        return self.noise_floor + max(self.true_rank - r, 0) / self.w0.shape[0]


def planted_rank_problem(true_rank: int, d: int = 32, n_train: int = 512, n_val: int = 512,
                         noise_std: float = 0.1, seed: int = 0) -> PlantedRankProblem:
    """Make a `PlantedRankProblem` with a ``ΔW*`` of rank ``true_rank`` (1 ≤ k ≤ d).

    ``W0 ~ N(0, 1/d)``; ``u_i, v_i``: the first k columns of two random orthogonal matrices; inputs
    ``x ~ N(0, I_d)``; noise ``N(0, noise_std²)``. Everything except k comes from ``seed``, so problems
    with the same seed share ``W0``, the inputs, the noise and their first directions.
    See notebook 06_rank_and_alpha_explorer.
    """
    d = _check_int("d", d, 2)
    true_rank = _check_int("true_rank", true_rank)
    if true_rank > d:
        raise ValueError(f"true_rank must be in [1, d={d}], got {true_rank}")
    n_train = _check_int("n_train", n_train)
    n_val = _check_int("n_val", n_val)
    noise_std = _check_positive("noise_std", noise_std)
    seed = _check_int("seed", seed, 0)
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
        _check_choice("r", r, self.ranks)
        _check_choice("true_rank", true_rank, self.true_ranks)
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
    ranks = _check_int_list("ranks", ranks)
    true_ranks = _check_int_list("true_ranks", true_ranks)
    d = _check_int("d", d, 2)
    for k in true_ranks + ranks:
        if k > d:
            raise ValueError(f"ranks and true_ranks must be <= d={d}, got {k}")
    problems = [planted_rank_problem(k, d=d, n_train=n_train, n_val=n_val, noise_std=noise_std, seed=seed)
                for k in true_ranks]
    first = problems[0]

    # One configuration per planted problem: shared inputs, one target per configuration (y: (K, n, d)).
    stacked = SimpleNamespace(x_train=first.x_train, x_val=first.x_val,
                              y_train=torch.stack([p.y_train for p in problems]),
                              y_val=torch.stack([p.y_val for p in problems]))

    layers = [(first.w0, torch.zeros(d))]
    losses, eval_steps = [], None
    for r in ranks:
        run = train_lora_batch(layers, [0], stacked, r, [1.0] * len(problems), [lr] * len(problems), steps,
                               loss="mse", batch_size=None, eval_every=eval_every, seed=seed)
        losses.append(run.val_loss)
        eval_steps = run.eval_steps
    best = np.array([[p.best_rank_r_loss(r) for p in problems] for r in ranks])
    return PlantedRankSweep(ranks, true_ranks, eval_steps, np.stack(losses), first.noise_floor, best)


# ----------------------------------------------------------------------------------------------
# The grid on a real task
# ----------------------------------------------------------------------------------------------

@dataclass
class LoRAGrid:
    """Learning curves of LoRA on a digits task for every rank × α rule × learning rate × scaling rule.

    ``val_loss``: (R, A, L, S, E) validation cross-entropy at ``eval_steps``; ``val_accuracy``:
    (R, A, L, S) after the last step; ``scaling``: (R, A, S), the factor s each combination used.
    Look results up by value with `curve`, `final_loss`, `accuracy`.
    """

    ranks: tuple
    alpha_rules: tuple
    learning_rates: tuple
    scaling_rules: tuple
    fixed_alpha: float
    eval_steps: list[int]
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    scaling: np.ndarray
    base_val_loss: float
    base_val_accuracy: float

    def index(self, r, alpha_rule, lr, scaling_rule) -> tuple[int, int, int, int]:
        """Positions of the four values in the grid; a value that is not in the grid raises ValueError."""
        _check_choice("r", r, self.ranks)
        _check_choice("alpha_rule", alpha_rule, self.alpha_rules)
        _check_choice("scaling_rule", scaling_rule, self.scaling_rules)
        matches = [i for i, v in enumerate(self.learning_rates) if math.isclose(v, lr, rel_tol=1e-9)]
        if not matches:
            raise ValueError(f"lr={lr!r} is not in the grid; allowed values: "
                             f"{', '.join(f'{v:g}' for v in self.learning_rates)}")
        return (self.ranks.index(r), self.alpha_rules.index(alpha_rule), matches[0],
                self.scaling_rules.index(scaling_rule))

    def curve(self, r, alpha_rule, lr, scaling_rule="alpha/r") -> np.ndarray:
        """(E,): the validation loss at ``eval_steps`` of one run."""
        return self.val_loss[self.index(r, alpha_rule, lr, scaling_rule)]

    def final_loss(self, r, alpha_rule, lr, scaling_rule="alpha/r") -> float:
        return float(self.curve(r, alpha_rule, lr, scaling_rule)[-1])

    def accuracy(self, r, alpha_rule, lr, scaling_rule="alpha/r") -> float:
        return float(self.val_accuracy[self.index(r, alpha_rule, lr, scaling_rule)])

    def best_accuracy_per_rank(self) -> np.ndarray:
        """(R,): the best final accuracy of each rank over every α rule, learning rate and scaling rule."""
        return self.val_accuracy.reshape(len(self.ranks), -1).max(axis=1)

    def smallest_rank_reaching(self, accuracy: float) -> int | None:
        """The smallest rank whose best run reaches ``accuracy`` (a fraction), or None."""
        for r, best in zip(self.ranks, self.best_accuracy_per_rank()):
            if best >= accuracy:
                return r
        return None


def run_lora_grid(base_model: nn.Module, task, ranks=RANKS, alpha_rules=ALPHA_RULES,
                  learning_rates=(2.5e-3, 5e-3, 1e-2), scaling_rules=SCALING_RULES,
                  fixed_alpha: float = FIXED_ALPHA, steps: int = 60, batch_size: int = 64,
                  eval_every: int = 5, seed: int = 0, targets=("fc1", "fc2")) -> LoRAGrid:
    """Train LoRA on ``task`` (a `lora_edu.data.DigitsTask`) from the frozen ``base_model`` (a digits MLP)
    for every combination, rank by rank, each rank's combinations side by side (`train_lora_batch`).

    Combination (r, α rule, lr, scaling rule) uses ``α = alpha_for(rule, r, fixed_alpha)`` and
    ``s = lora_scaling(α, r, scaling_rule)``. Cost: about ``len(ranks) × steps`` batched steps.
    Returns a `LoRAGrid`. See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _check_int_list("ranks", ranks)
    learning_rates = _check_float_list("learning_rates", learning_rates)
    alpha_rules, scaling_rules = tuple(alpha_rules), tuple(scaling_rules)
    if not alpha_rules or not scaling_rules:
        raise ValueError("alpha_rules and scaling_rules must not be empty")
    for rule in alpha_rules:
        _check_choice("alpha_rules", rule, ALPHA_RULES)
    for rule in scaling_rules:
        _check_choice("scaling_rules", rule, SCALING_RULES)
    layers, positions = frozen_mlp_layers(base_model, targets)
    task = task.to(layers[0][0].device)
    shape = (len(ranks), len(alpha_rules), len(learning_rates), len(scaling_rules))
    combos = [(a, l, s) for a in range(shape[1]) for l in range(shape[2]) for s in range(shape[3])]
    val_loss, eval_steps = None, None
    val_accuracy, scaling = np.zeros(shape), np.zeros((shape[0], shape[1], shape[3]))
    for ri, r in enumerate(ranks):
        scalings = [lora_scaling(alpha_for(alpha_rules[a], r, fixed_alpha), r, scaling_rules[s]) for a, _, s in combos]
        run = train_lora_batch(layers, positions, task, r, scalings, [learning_rates[l] for _, l, _ in combos],
                               steps, batch_size=batch_size, eval_every=eval_every, seed=seed)
        if val_loss is None:
            eval_steps = run.eval_steps
            val_loss = np.zeros(shape + (len(eval_steps),))
        for c, (a, l, s) in enumerate(combos):
            val_loss[ri, a, l, s] = run.val_loss[c]
            val_accuracy[ri, a, l, s] = run.val_accuracy[c]
            scaling[ri, a, s] = scalings[c]
    with torch.no_grad():
        base = _forward(task.x_val, layers, {}, 0.0)  # the frozen model alone: (n_val, classes)
        base_loss = float(F.cross_entropy(base, task.y_val))
        base_accuracy = float((base.argmax(-1) == task.y_val).float().mean())
    return LoRAGrid(ranks, alpha_rules, learning_rates, scaling_rules, float(fixed_alpha), eval_steps, val_loss,
                    val_accuracy, scaling, base_loss, base_accuracy)


def compare_alpha_and_lr(base_model: nn.Module, task, pairs, r: int = 8, steps: int = 30,
                         optimizer: str = "adam", batch_size: int | None = 256, seed: int = 0,
                         targets=("fc1", "fc2")) -> dict:
    """Validation-loss curves, scored after every step, for several ``(alpha, lr)`` pairs at rank ``r``
    (α/r scaling). Returns ``{(alpha, lr): (steps + 1,) array}`` (entry 0: before training).

    Under Adam, ``(α, lr)`` and ``(2α, lr/2)`` start identically: Adam's first step moves every entry of
    ``B`` by ``lr`` whatever the gradient's scale, so ``ΔW = (α/r) B A`` moves by ``(α/r)·lr`` times the same
    matrix. Under SGD the step on ``B`` itself grows with α, so the matching pair is ``(2α, lr/4)``.
    See notebook 06_rank_and_alpha_explorer.
    """
    r = _check_int("r", r)
    if isinstance(pairs, (str, bytes)) or not pairs:
        raise ValueError(f"pairs must be a non-empty list of (alpha, lr), got {pairs!r}")
    pairs = [tuple(p) for p in pairs]
    if not all(len(p) == 2 for p in pairs):
        raise ValueError(f"pairs must be a non-empty list of (alpha, lr), got {pairs!r}")
    layers, positions = frozen_mlp_layers(base_model, targets)
    scalings = [lora_scaling(a, r) for a, _ in pairs]
    run = train_lora_batch(layers, positions, task.to(layers[0][0].device), r, scalings,
                           [lr for _, lr in pairs], steps, batch_size=batch_size, eval_every=1,
                           optimizer=optimizer, seed=seed)
    return {pair: run.val_loss[i] for i, pair in enumerate(pairs)}


# ----------------------------------------------------------------------------------------------
# rsLoRA: the size of the gradient at initialisation
# ----------------------------------------------------------------------------------------------

def lora_gradient_norms_at_init(base_model: nn.Module, task, ranks=RANKS, alpha: float = FIXED_ALPHA,
                                use_rslora: bool = False, seeds=tuple(range(16)),
                                targets=("fc1", "fc2")) -> np.ndarray:
    """The norm of the loss gradient with respect to the LoRA factors at initialisation, per rank.

    For each rank and seed: `lora_edu.add_lora` on a copy of ``base_model``, each target's ``lora_A``
    (r, in) redrawn from ``torch.Generator().manual_seed(seed)`` (`lora_init_A`, targets in order), one
    full-batch cross-entropy on the training set, backward; the norm ``√(Σ_layers ‖∂L/∂B‖²)``
    (``∂L/∂A = 0`` while ``B = 0``). Torch's global random state is left as it was.

    ``∂L/∂B = s · G Aᵀ`` (out, r) with ``G = ∂L/∂ΔW`` (out, in), the same for every rank at init. Its r
    columns ``G a_i`` come from r independent rows of ``A``, whose entry scale does not depend on r, so
    ``E‖G Aᵀ‖² = r · E‖G a‖²`` and ``E‖∂L/∂B‖² ∝ s² r``. Returns (len(ranks),): the root mean square over
    ``seeds``, which follows ``s·√r`` (``r^(-1/2)`` under ``s = α/r``, flat under rsLoRA's ``s = α/√r``).
    See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _check_int_list("ranks", ranks)
    alpha = _check_positive("alpha", alpha)
    if not isinstance(use_rslora, bool):
        raise TypeError(f"use_rslora must be True or False, got {type(use_rslora).__name__}")
    seeds = _check_int_list("seeds", seeds, 0)
    frozen_mlp_layers(base_model, targets)  # checks the model and the targets
    device = next(base_model.parameters()).device
    task = task.to(device)
    squares = np.zeros((len(ranks), len(seeds)))
    for i, r in enumerate(ranks):
        for j, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):  # add_lora's own draw must not move the global state
                model = add_lora(copy.deepcopy(base_model), list(targets), r=r, alpha=alpha,
                                 use_rslora=use_rslora)
            generator = torch.Generator().manual_seed(seed)
            layers = lora_layers(model)
            with torch.no_grad():
                for name in targets:
                    layer = layers[name]
                    layer.lora_A.copy_(lora_init_A(layer.in_features, r, generator=generator))
            model.train()
            F.cross_entropy(model(task.x_train), task.y_train).backward()
            squares[i, j] = sum(float(layer.lora_B.grad.pow(2).sum()) for layer in layers.values())
    return np.sqrt(squares.mean(axis=1))


def lora_first_step_norms(base_model: nn.Module, task, ranks=RANKS, alpha_rule: str = "fixed",
                          scaling_rule: str = "alpha/r", lr: float = 1e-3, fixed_alpha: float = FIXED_ALPHA,
                          seed: int = 0, targets=("fc1", "fc2")) -> np.ndarray:
    """The size of LoRA's update after one full-batch Adam step, per rank: ``√(Σ_layers ‖s B₁ A₁‖_F²)``.

    Adam's first step moves every entry of ``B`` by ``lr`` (``B₁ = −lr · sign(∂L/∂B)``) whatever the gradient's
    scale, and ``A`` not at all, so ``‖ΔW₁‖ = s · lr · ‖sign(G Aᵀ) A‖ ≈ c · s·√r`` for ``r ≪ in``: it grows like
    ``√r`` when ``s`` is constant (α = r, α = 2r), falls like ``r^(-1/2)`` under α/r with a fixed α, and is
    flat under α/√r. Only approximately: the signs ``sign(G a_i)`` line up a little with the overlaps
    ``a_i · a_j`` of A's rows, which adds a part growing like ``r/√in``, so measured log-log slopes sit
    slightly above -1/2, 0 and +1/2. Returns (len(ranks),). See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _check_int_list("ranks", ranks)
    lr = _check_positive("lr", lr)
    layers, positions = frozen_mlp_layers(base_model, targets)
    task = task.to(layers[0][0].device)
    norms = []
    for r in ranks:
        s = lora_scaling(alpha_for(alpha_rule, r, fixed_alpha), r, scaling_rule)
        run = train_lora_batch(layers, positions, task, r, [s], [lr], 1, batch_size=None, seed=seed)
        squares = sum(float((s * (b[0] @ a[0])).pow(2).sum()) for a, b in run.factors.values())
        norms.append(math.sqrt(squares))
    return np.array(norms)


def loglog_slope(x, y) -> float:
    """The slope of the least-squares line through ``(log x, log y)``: ``y ∝ x^slope``.
    ``x``, ``y``: 1-D, the same length (≥ 2), positive. See notebook 06_rank_and_alpha_explorer."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2, got shapes {x.shape} and {y.shape}")
    if np.any(x <= 0) or np.any(y <= 0) or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be positive and finite (their logarithms are taken)")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ----------------------------------------------------------------------------------------------
# Intrinsic rank: the update full fine-tuning makes
# ----------------------------------------------------------------------------------------------

def full_finetuning_delta(base_model: nn.Module, task, steps: int = 60, lr: float = 1e-3,
                          batch_size: int = 64, seed: int = 0, targets=("fc1", "fc2")) -> tuple[dict, float]:
    """Fine-tune every weight of a copy of ``base_model`` on ``task`` (AdamW without weight decay, the same
    batches as `run_lora_grid`) and return ``({name: ΔW = W_after − W_before (out, in) as float64 NumPy},
    validation accuracy)``. See notebook 06_rank_and_alpha_explorer.
    """
    from .strategies import apply_strategy
    from .training import evaluate_accuracy, train

    steps = _check_int("steps", steps)
    lr = _check_positive("lr", lr)
    batch_size = _check_int("batch_size", batch_size)
    layers, _ = frozen_mlp_layers(base_model, targets)
    device = layers[0][0].device
    task = task.to(device)
    model = copy.deepcopy(base_model)
    before = {name: getattr(model, name).weight.detach().clone() for name in targets}
    apply_strategy(model, "full")
    rows = batch_indices(len(task.x_train), batch_size, steps, seed).to(device)
    train(model, lambda step: (task.x_train[rows[step]], task.y_train[rows[step]]), steps, lr, progress=False)
    deltas = {name: (getattr(model, name).weight.detach() - before[name]).double().cpu().numpy()
              for name in targets}
    return deltas, evaluate_accuracy(model, task.x_val, task.y_val)


def directions_for_energy(matrix, fraction: float = 0.9) -> int:
    """How many singular directions of ``matrix`` (d, k) hold ``fraction`` of its energy ``‖·‖_F²``:
    the smallest n with ``(σ₁² + … + σ_n²) / Σσ² ≥ fraction``. See notebook 06_rank_and_alpha_explorer."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"matrix must be a non-empty 2-D array (d, k), got shape {matrix.shape}")
    curve = energy_retained(np.linalg.svd(matrix, compute_uv=False))
    return int(np.searchsorted(curve, fraction - 1e-12) + 1)
