"""Training many LoRA configurations side by side on one frozen stack of linear layers.

Explained in notebook 06_rank_and_alpha_explorer.

- `train_lora_batch`: G LoRA configurations (own ``A (G, r, in)``, ``B (G, out, r)``, ``s``, learning rate) on one
  frozen stack of ``nn.Linear`` layers (`frozen_linear_stack`): one batched matrix product per layer replaces G
  models, so a grid of a hundred runs takes seconds of CPU. Each slice computes what `lora_edu.LoRALinear` does.
- `run_lora_grid`: ranks × α rules × learning rates × scaling rules on a digits shift task (a `LoRAGrid`).
- `compare_alpha_and_lr`: validation curves of several ``(α, lr)`` pairs at one rank.
- `train_full_batch`, `sweep_learning_rates`: full fine-tuning side by side, and one learning-rate sweep with
  seeds for LoRA at every rank and for full fine-tuning (an `LRSweep`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _validate
from .scaling_rules import ALPHA_RULES, FIXED_ALPHA, RANKS, SCALING_RULES, alpha_for, lora_init_A, lora_scaling

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mse")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

__all__ = ["batch_indices", "frozen_linear_stack", "BatchRun", "train_lora_batch", "train_full_batch", "LoRAGrid",
           "run_lora_grid", "compare_alpha_and_lr", "FULL", "LRSweep", "sweep_learning_rates"]


def batch_indices(n: int, batch_size: int | None, steps: int, seed: int = 0) -> torch.Tensor:
    """The training rows of every step, shape ``(steps, batch_size)``: uniform draws from ``range(n)``,
    seeded, so every run of a grid (and full fine-tuning) sees the same batches. ``batch_size=None``
    means the full batch ``arange(n)`` each step."""
    n = _validate.integer("n", n, 1)
    steps = _validate.integer("steps", steps, 1)
    seed = _validate.integer("seed", seed, 0)
    if batch_size is None:
        return torch.arange(n).expand(steps, n)
    batch_size = _validate.integer("batch_size", batch_size, 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (steps, batch_size), generator=generator)


def frozen_linear_stack(model: nn.Module, target_modules=None, layer_names=None) -> tuple[list, list[int]]:
    """A model's frozen ``nn.Linear`` layers in forward order, as `train_lora_batch` takes them:
    ``[(W (out, in), b (out,)), ...]`` (``b`` is zeros for a layer without bias), and the positions of
    ``target_modules`` among them.

    ``layer_names``: the layers' names (as in ``model.named_modules()``) in the order the model applies
    them, with a ReLU between each two and nothing else; default: the model's ``linear_stack``
    (``("fc1", "fc2", "head")`` for `lora_edu.models.DigitsMLP`). ``target_modules``: the layers that get
    LoRA; default: the model's ``linear_targets``. See notebook 06_rank_and_alpha_explorer.
    """
    _validate.module("model", model)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    layer_names = _layer_names(model, layer_names, "layer_names", "linear_stack", linears)
    target_modules = _layer_names(model, target_modules, "target_modules", "linear_targets", layer_names)
    layers = [(m.weight.detach(), m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features))
              for m in (linears[name] for name in layer_names)]
    return layers, [layer_names.index(t) for t in target_modules]


def _choices(name: str, values, allowed, what: str) -> tuple:
    """A non-empty list of ``values``, each one of ``allowed``, as a tuple."""
    values = _validate.sequence(name, values, what=what)
    for value in values:
        _validate.choice(f"each of {name}", value, allowed)
    return values


def _layer_names(model: nn.Module, names, name: str, default: str, allowed) -> tuple:
    """``names``, or when it is None the model's class attribute ``default``; each one of ``allowed``."""
    names = getattr(model, default, None) if names is None else names
    if names is None:
        raise ValueError(f"{name} must be given: {type(model).__name__} has no default {default!r} attribute")
    return _choices(name, names, allowed, "layer names")


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


def train_lora_batch(layers, target_positions, data, r: int, scalings, learning_rates, steps: int, *,
                     loss: str = "cross_entropy", batch_size: int | None = 64, eval_every: int = 5,
                     optimizer: str = "adam", seed: int = 0) -> BatchRun:
    """Train G LoRA configurations of rank ``r`` side by side on one frozen stack of linear layers.

    ``layers``: ``[(W (out, in), b (out,)), ...]``, applied in order with ReLU between them (see
    `frozen_linear_stack`); ``target_positions``: positions of the layers that get LoRA; ``data``: anything
    with ``x_train (n, in)``, ``y_train``, ``x_val``, ``y_val`` (a `lora_edu.data.DigitsTask` or a
    `PlantedRankProblem`); for ``loss="mse"`` the targets may carry a leading G dimension (one target per
    configuration). ``scalings`` and ``learning_rates``: G numbers.

    Configuration g computes ``z = h W0ᵀ + b + s_g (h A_gᵀ) B_gᵀ`` on each target layer with ``A_g (r, in)``
    from `lora_init_A` (layer position i draws with seed ``seed + i``; the same start for every g) and
    ``B_g (out, r) = 0``, and trains ``A_g, B_g`` with Adam (β = 0.9, 0.999, ε = 1e-8, no weight decay, as
    `lora_edu.training.train`) or plain SGD at its own learning rate, on the same batches (`batch_indices`).
    Returns a `BatchRun`. See notebook 06_rank_and_alpha_explorer.
    """
    r = _validate.integer("r", r, 1)
    steps = _validate.integer("steps", steps, 1)
    eval_every = _validate.integer("eval_every", eval_every, 1)
    seed = _validate.integer("seed", seed, 0)
    _validate.choice("loss", loss, LOSSES)
    _validate.choice("optimizer", optimizer, OPTIMIZERS)
    scalings = _validate.positives("scalings", scalings)
    learning_rates = _validate.positives("learning_rates", learning_rates)
    if len(scalings) != len(learning_rates):
        raise ValueError(f"scalings and learning_rates must have the same length (one per configuration), "
                         f"got {len(scalings)} and {len(learning_rates)}")
    layers = _validate.sequence("layers", layers, what="(W, b) pairs")
    target_positions = _validate.integers("target_positions", target_positions, 0)
    for position in target_positions:
        _validate.integer("each of target_positions", position, 0, len(layers) - 1, hint="(a position in layers)")
    for name in ("x_train", "y_train", "x_val", "y_val"):
        if not isinstance(getattr(data, name, None), torch.Tensor):
            raise TypeError(f"data must have tensors x_train, y_train, x_val, y_val; {name} is missing")
    g = len(scalings)
    device = layers[0][0].device
    lora = {}  # position: (A (G, r, in), the same start for every configuration; B (G, out, r) = 0)
    for i in target_positions:
        out_features, in_features = layers[i][0].shape
        lora[i] = (lora_init_A(in_features, r, seed + i, device).expand(g, -1, -1).clone().requires_grad_(True),
                   torch.zeros(g, out_features, r, device=device, requires_grad=True))
    params = [p for pair in lora.values() for p in pair]
    s = torch.tensor(scalings, device=device).view(g, 1, 1)
    lr = torch.tensor(learning_rates, device=device).view(g, 1, 1)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    rows = batch_indices(len(data.x_train), batch_size, steps, seed).to(device)
    per_config_targets = loss == "mse" and data.y_train.dim() == 3

    def scored():
        with torch.no_grad():
            return _loss_per_config(_forward(data.x_val, layers, lora, s), data.y_val, loss).cpu()

    eval_steps, val_losses, train_losses = [0], [scored()], []
    # Adam by hand rather than torch.optim.Adam: each configuration has its own learning rate, and here all G
    # configurations live in one tensor (torch's optimizers take one learning rate per parameter tensor).
    for t, idx in enumerate(rows, start=1):
        y = data.y_train[:, idx] if per_config_targets else data.y_train[idx]
        batch_loss = _loss_per_config(_forward(data.x_train[idx], layers, lora, s), y, loss)
        grads = torch.autograd.grad(batch_loss.sum(), params)  # configurations share no parameters
        train_losses.append(batch_loss.detach().cpu())
        _update(params, grads, moments, [lr] * len(params), t, optimizer)
        if t % eval_every == 0 or t == steps:
            eval_steps.append(t)
            val_losses.append(scored())
    accuracy = None
    if loss == "cross_entropy":
        with torch.no_grad():
            predicted = _forward(data.x_val, layers, lora, s).argmax(dim=-1)
        accuracy = (predicted == data.y_val).float().mean(dim=1).cpu().numpy()
    return BatchRun(torch.stack(train_losses, 1).numpy(), eval_steps, torch.stack(val_losses, 1).numpy(),
                    accuracy, {k: (a.detach(), b.detach()) for k, (a, b) in lora.items()})


def _update(params, grads, moments, learning_rates, t: int, optimizer: str) -> None:
    """One optimizer step on tensors whose first dimension is the configuration: ``learning_rates`` holds, per
    parameter, a tensor that broadcasts against it (one rate per configuration). Adam as `torch.optim.Adam`
    (β = 0.9, 0.999, ε = 1e-8, bias-corrected; ``t`` counts from 1), or plain SGD."""
    beta1, beta2 = ADAM_BETAS
    with torch.no_grad():
        for p, grad, (m, v), lr in zip(params, grads, moments, learning_rates):
            if optimizer == "sgd":
                p.sub_(lr * grad)
            else:
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (v / (1 - beta2 ** t)).sqrt().add_(ADAM_EPS)
                p.sub_(lr * (m / (1 - beta1 ** t)) / denominator)


def train_full_batch(layers, data, learning_rates, steps: int, *, batch_size: int | None = 64,
                     eval_every: int = 5, seed: int = 0) -> BatchRun:
    """Full fine-tuning of G copies of a stack of linear layers side by side, one learning rate each.

    ``layers``: ``[(W (out, in), b (out,)), ...]`` with ReLU between them (`frozen_linear_stack`), the
    starting point; ``data``: a classification task with ``x_train``, ``y_train``, ``x_val``, ``y_val``
    (cross-entropy). Configuration g trains its own copy of every ``W`` and ``b`` (shapes ``(G, out, in)``,
    ``(G, out)``) with Adam (β = 0.9, 0.999, ε = 1e-8, as `lora_edu.training.train` with ``weight_decay=0``)
    at ``learning_rates[g]``, on the same batches as `train_lora_batch` with this ``seed``
    (`batch_indices`). Returns a `BatchRun` whose ``factors`` is
    ``{layer position: ΔW = W_after − W_before (G, out, in)}``. See notebook 06_rank_and_alpha_explorer.
    """
    steps = _validate.integer("steps", steps, 1)
    eval_every = _validate.integer("eval_every", eval_every, 1)
    seed = _validate.integer("seed", seed, 0)
    learning_rates = _validate.positives("learning_rates", learning_rates)
    layers = _validate.sequence("layers", layers, what="(W, b) pairs")
    for name in ("x_train", "y_train", "x_val", "y_val"):
        if not isinstance(getattr(data, name, None), torch.Tensor):
            raise TypeError(f"data must have tensors x_train, y_train, x_val, y_val; {name} is missing")
    g, device = len(learning_rates), layers[0][0].device
    weights = [(w.expand(g, -1, -1).clone().requires_grad_(True), b.expand(g, -1).clone().requires_grad_(True))
               for w, b in layers]
    params = [p for pair in weights for p in pair]
    lr = torch.tensor(learning_rates, device=device)
    rates = [lr.view(g, *([1] * (p.dim() - 1))) for p in params]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    rows = batch_indices(len(data.x_train), batch_size, steps, seed).to(device)

    def forward(x):  # (n, in) shared by every configuration -> (G, n, classes)
        h = x
        for i, (w, b) in enumerate(weights):
            h = h @ w.transpose(-1, -2) + b.unsqueeze(-2)
            h = F.relu(h) if i < len(weights) - 1 else h
        return h

    def scored():
        with torch.no_grad():
            return _loss_per_config(forward(data.x_val), data.y_val, "cross_entropy").cpu()

    eval_steps, val_losses, train_losses = [0], [scored()], []
    for t, idx in enumerate(rows, start=1):
        batch_loss = _loss_per_config(forward(data.x_train[idx]), data.y_train[idx], "cross_entropy")
        grads = torch.autograd.grad(batch_loss.sum(), params)
        train_losses.append(batch_loss.detach().cpu())
        _update(params, grads, moments, rates, t, "adam")
        if t % eval_every == 0 or t == steps:
            eval_steps.append(t)
            val_losses.append(scored())
    with torch.no_grad():
        accuracy = (forward(data.x_val).argmax(dim=-1) == data.y_val).float().mean(dim=1).cpu().numpy()
    deltas = {i: (w.detach() - w0) for i, ((w, _), (w0, _)) in enumerate(zip(weights, layers))}
    return BatchRun(torch.stack(train_losses, 1).numpy(), eval_steps, torch.stack(val_losses, 1).numpy(),
                    accuracy, deltas)


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
        _validate.choice("r", r, self.ranks)
        _validate.choice("alpha_rule", alpha_rule, self.alpha_rules)
        _validate.choice("scaling_rule", scaling_rule, self.scaling_rules)
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
        return next((r for r, best in zip(self.ranks, self.best_accuracy_per_rank()) if best >= accuracy), None)


def run_lora_grid(base_model: nn.Module, task, ranks=RANKS, alpha_rules=ALPHA_RULES,
                  learning_rates=(2.5e-3, 5e-3, 1e-2), scaling_rules=SCALING_RULES,
                  fixed_alpha: float = FIXED_ALPHA, steps: int = 60, batch_size: int = 64,
                  eval_every: int = 5, seed: int = 0, target_modules=None) -> LoRAGrid:
    """Train LoRA on ``task`` (a `lora_edu.data.DigitsTask`) from the frozen ``base_model`` (a classifier
    `frozen_linear_stack` can read, e.g. the digits MLP; LoRA on ``target_modules``, default the model's
    ``linear_targets``) for every combination, rank by rank, each rank's combinations side by side (`train_lora_batch`).

    Combination (r, α rule, lr, scaling rule) uses ``α = alpha_for(rule, r, fixed_alpha)`` and
    ``s = lora_scaling(α, r, scaling_rule)``. Cost: about ``len(ranks) × steps`` batched steps.
    Returns a `LoRAGrid`. See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _validate.integers("ranks", ranks)
    learning_rates = _validate.positives("learning_rates", learning_rates)
    alpha_rules = _choices("alpha_rules", alpha_rules, ALPHA_RULES, "α rules")
    scaling_rules = _choices("scaling_rules", scaling_rules, SCALING_RULES, "scaling rules")
    scaling = np.array([[[lora_scaling(alpha_for(a, r, fixed_alpha), r, rule) for rule in scaling_rules]
                         for a in alpha_rules] for r in ranks])  # s of each (rank, α rule, scaling rule): (R, A, S)
    layers, positions = frozen_linear_stack(base_model, target_modules)
    task = task.to(layers[0][0].device)
    per_rank = (len(alpha_rules), len(learning_rates), len(scaling_rules))
    combos = list(np.ndindex(per_rank))  # (a, l, s) in C order: a run's (G, ...) results reshape to (A, L, S, ...)
    runs = [train_lora_batch(layers, positions, task, r, [scaling[i, a, s] for a, _, s in combos],
                             [learning_rates[l] for _, l, _ in combos], steps, batch_size=batch_size,
                             eval_every=eval_every, seed=seed) for i, r in enumerate(ranks)]
    val_loss = np.stack([run.val_loss.reshape(per_rank + (-1,)) for run in runs], dtype=np.float64)
    val_accuracy = np.stack([run.val_accuracy.reshape(per_rank) for run in runs], dtype=np.float64)
    with torch.no_grad():
        base = _forward(task.x_val, layers, {}, 0.0)  # the frozen model alone: (n_val, classes)
        base_loss = float(F.cross_entropy(base, task.y_val))
        base_accuracy = float((base.argmax(-1) == task.y_val).float().mean())
    return LoRAGrid(ranks, alpha_rules, learning_rates, scaling_rules, float(fixed_alpha), runs[0].eval_steps,
                    val_loss, val_accuracy, scaling, base_loss, base_accuracy)


def compare_alpha_and_lr(base_model: nn.Module, task, pairs, r: int = 8, steps: int = 30,
                         optimizer: str = "adam", batch_size: int | None = 256, seed: int = 0,
                         target_modules=None) -> dict:
    """Validation-loss curves, scored after every step, for several ``(alpha, lr)`` pairs at rank ``r``
    (α/r scaling; LoRA on ``target_modules`` of ``base_model``, see `frozen_linear_stack`). Returns
    ``{(alpha, lr): (steps + 1,) array}`` (entry 0: before training).

    Under Adam, ``(α, lr)`` and ``(2α, lr/2)`` start identically: Adam's first step moves every entry of
    ``B`` by ``lr`` whatever the gradient's scale, so ``ΔW = (α/r) B A`` moves by ``(α/r)·lr`` times the same
    matrix. Under SGD the step on ``B`` itself grows with α, so the matching pair is ``(2α, lr/4)``.
    See notebook 06_rank_and_alpha_explorer.
    """
    r = _validate.integer("r", r, 1)
    pairs = [tuple(p) for p in _validate.sequence("pairs", pairs, what="(alpha, lr)")]
    if not all(len(p) == 2 for p in pairs):
        raise ValueError(f"pairs must be a non-empty list of (alpha, lr), got {pairs!r}")
    layers, positions = frozen_linear_stack(base_model, target_modules)
    run = train_lora_batch(layers, positions, task.to(layers[0][0].device), r, [lora_scaling(a, r) for a, _ in pairs],
                           [lr for _, lr in pairs], steps, batch_size=batch_size, eval_every=1, optimizer=optimizer,
                           seed=seed)
    return {pair: run.val_loss[i] for i, pair in enumerate(pairs)}


FULL = "full"  # the name of full fine-tuning among an `LRSweep`'s methods


@dataclass
class LRSweep:
    """Final results of a learning-rate sweep with several seeds, for LoRA at each rank and for full fine-tuning.

    ``methods``: the ranks, then ``"full"``; ``val_loss``: (M, L, S, E) validation cross-entropy at
    ``eval_steps`` for method × learning rate × seed; ``val_accuracy``: (M, L, S) after the last step.
    """

    methods: tuple
    learning_rates: tuple
    seeds: tuple
    alpha_rule: str
    scaling_rule: str
    eval_steps: list[int]
    val_loss: np.ndarray
    val_accuracy: np.ndarray

    def _row(self, method) -> int:
        return self.methods.index(_validate.choice("method", method, self.methods))

    def final_loss(self, method) -> np.ndarray:
        """(L, S): the final validation loss of every learning rate and seed."""
        return self.val_loss[self._row(method), :, :, -1]

    def best_lr_index(self, method) -> np.ndarray:
        """(S,): for each seed, the position in ``learning_rates`` of the lowest final validation loss."""
        return self.final_loss(method).argmin(axis=0)

    def best_lr(self, method) -> np.ndarray:
        """(S,): for each seed, the learning rate with the lowest final validation loss."""
        return np.asarray(self.learning_rates)[self.best_lr_index(method)]

    def best_loss(self, method) -> np.ndarray:
        """(S,): for each seed, the lowest final validation loss over the learning rates."""
        return self.final_loss(method).min(axis=0)

    def best_accuracy(self, method) -> np.ndarray:
        """(S,): for each seed, the final accuracy of the learning rate with the lowest final loss."""
        return self.val_accuracy[self._row(method)][self.best_lr_index(method), np.arange(len(self.seeds))]

    def best_is_interior(self, method) -> bool:
        """Whether every seed's best learning rate lies strictly inside the grid (neither end)."""
        best = self.best_lr_index(method)
        return bool(np.all((best > 0) & (best < len(self.learning_rates) - 1)))


def sweep_learning_rates(base_model: nn.Module, task, ranks=RANKS, learning_rates=(1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2),
                         seeds=(0, 1, 2), alpha_rule: str = "2r", scaling_rule: str = "alpha/r",
                         fixed_alpha: float = FIXED_ALPHA, steps: int = 60, batch_size: int = 64,
                         eval_every: int = 60, full: bool = True, target_modules=None) -> LRSweep:
    """LoRA at every rank and (``full=True``) full fine-tuning of every weight, each over the same
    ``learning_rates`` and ``seeds``, on ``task`` from ``base_model`` (a classifier `frozen_linear_stack`
    can read; LoRA on ``target_modules``, default the model's ``linear_targets``).

    LoRA uses ``s = lora_scaling(alpha_for(alpha_rule, r, fixed_alpha), r, scaling_rule)``; a seed sets the
    batches and LoRA's initial ``A`` (`train_lora_batch`), and for full fine-tuning the batches
    (`train_full_batch`). Every learning rate of one (method, seed) trains side by side. Cost: about
    ``(len(ranks) + 1) × len(seeds) × steps`` batched steps. Returns an `LRSweep`.
    See notebook 06_rank_and_alpha_explorer.
    """
    ranks = _validate.integers("ranks", ranks)
    learning_rates = _validate.positives("learning_rates", learning_rates)
    seeds = _validate.integers("seeds", seeds, 0)
    _validate.choice("alpha_rule", alpha_rule, ALPHA_RULES)
    _validate.choice("scaling_rule", scaling_rule, SCALING_RULES)
    _validate.boolean("full", full)
    layers, positions = frozen_linear_stack(base_model, target_modules)
    task = task.to(layers[0][0].device)
    runs = [[train_lora_batch(layers, positions, task, r, [lora_scaling(alpha_for(alpha_rule, r, fixed_alpha), r,
                                                                        scaling_rule)] * len(learning_rates),
                              learning_rates, steps, batch_size=batch_size, eval_every=eval_every, seed=seed)
             for seed in seeds] for r in ranks]
    if full:
        runs.append([train_full_batch(layers, task, learning_rates, steps, batch_size=batch_size,
                                      eval_every=eval_every, seed=seed) for seed in seeds])
    # runs[method][seed].val_loss is (L, E): stack to (M, S, L, E), then put the learning rate before the seed
    val_loss = np.stack([np.stack([run.val_loss for run in row]) for row in runs], dtype=np.float64)
    accuracy = np.stack([np.stack([run.val_accuracy for run in row]) for row in runs], dtype=np.float64)
    return LRSweep(ranks + ((FULL,) if full else ()), learning_rates, seeds, alpha_rule, scaling_rule,
                   runs[0][0].eval_steps, val_loss.transpose(0, 2, 1, 3), accuracy.transpose(0, 2, 1))
