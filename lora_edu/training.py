"""One training loop for every model and every fine-tuning strategy, with a progress bar.

Explained in notebook 05_finetuning_strategies_compared. The loop trains whatever parameters have
``requires_grad=True`` (so the strategy decides what learns) with AdamW, and records per step the training
loss and the wall time (see `TrainingResult` for the memory it measures). `sweep_learning_rates` runs it
over a grid of learning rates and then over seeds at the best rate, for a fair comparison of strategies.

The progress bar (tqdm) is shown in a terminal and in a kernel started by a Jupyter server; it is off
when ``LORA_EDU_QUIET`` or ``PYTEST_CURRENT_TEST`` is set, and whenever output goes neither to a
terminal nor to a Jupyter frontend (e.g. ``tools/store_outputs.py``, nbval), so no bar ever lands on
stderr in a stored notebook. ``progress=True``/``False`` forces it.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate

QUIET_ENV_VARS = ("LORA_EDU_QUIET", "PYTEST_CURRENT_TEST")
WARMUP_STEPS_NOT_TIMED = 3


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether the training bar is shown: ``progress`` if given, else automatic (see the module docstring)."""
    if progress is not None:
        return _validate.instance("progress", progress, bool, "True, False or None (automatic)")
    if any(os.environ.get(name) for name in QUIET_ENV_VARS):
        return False
    if os.environ.get("JPY_SESSION_NAME"):  # a kernel started by JupyterLab / Jupyter Notebook
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _progress_bar(total: int, description: str, show: bool):
    """A tqdm bar (Jupyter's in a Jupyter kernel); a disabled one, which prints nothing, unless ``show``."""
    if os.environ.get("JPY_SESSION_NAME"):
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=total, desc=description, leave=True, disable=not show)


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``logits (..., classes)`` against integer ``targets (...)``.

    Works for a classifier (``(B, C)`` vs ``(B,)``) and a language model (``(B, T, V)`` vs ``(B, T)``).
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Mean cross-entropy of ``model(x)`` against ``y`` (eval mode, no gradients), in batches of ``batch_size``.

    ``x``: the model's input with at least one row; ``y``: the targets ``model(x)`` is scored against
    (``(n,)`` for a classifier, ``(n, T)`` for a language model). The model's train/eval mode is restored.
    """
    if len(x) == 0 or y.numel() == 0:
        raise ValueError(f"x and y must hold at least one example, got x of shape {tuple(x.shape)} "
                         f"and y of shape {tuple(y.shape)}")
    _validate.integer("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        targets = y[start:start + batch_size]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       reduction="sum"))
        count += targets.numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of rows of ``x (n, features)`` whose arg-max logit equals ``y (n,)``, in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = float((model(x).argmax(dim=-1) == y).float().mean())
    model.train(was_training)
    return correct


def tensor_bytes(tensors) -> int:
    """Exact bytes of the given tensors' elements (``numel * element_size``), ignoring None."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Exact bytes of every tensor an optimizer keeps in its state (Adam: ``exp_avg``, ``exp_avg_sq``, ``step``)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor))


@dataclass
class TrainingResult:
    """What a training run recorded.

    ``train_losses[i]``: the loss of step ``i``; ``step_seconds[i]``: its wall time; ``evaluations``:
    ``{name: [value at each step of eval_steps]}``; ``trainable_parameters``: how many numbers trained;
    ``grad_bytes`` and ``optimizer_bytes``: exact, after the last step; ``peak_memory_bytes``: on CUDA, the
    peak allocated memory during training minus that at its start (what this run added: gradients, AdamW
    state, activations), None on other devices.
    """

    train_losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    evaluations: dict[str, list[float]] = field(default_factory=dict)
    trainable_parameters: int = 0
    grad_bytes: int = 0
    optimizer_bytes: int = 0
    peak_memory_bytes: int | None = None

    @property
    def median_step_seconds(self) -> float:
        """Median wall time of a step, leaving out the first few (warm-up)."""
        timed = self.step_seconds[WARMUP_STEPS_NOT_TIMED:] or self.step_seconds
        return statistics.median(timed) if timed else float("nan")

    def final(self, name: str) -> float:
        """The last value of evaluation ``name``."""
        if name not in self.evaluations:
            raise ValueError(f"name={name!r} was not evaluated; allowed values: {', '.join(self.evaluations)}")
        return self.evaluations[name][-1]


def train(model: nn.Module, next_batch: Callable[[int], tuple], steps: int, lr: float, *,
          evaluate: Callable[[nn.Module], dict] | None = None, eval_every: int | None = None,
          weight_decay: float = 0.0, warmup_steps: int = 0, final_lr_fraction: float = 1.0,
          loss_fn: Callable = cross_entropy_loss, progress: bool | None = None,
          description: str = "training") -> TrainingResult:
    """Train the parameters of ``model`` that have ``requires_grad=True`` with AdamW.

    Each step: ``x, y = next_batch(step)``; ``loss = loss_fn(model(x), y)``; backward; AdamW step
    (``lr``, ``weight_decay``; with the default ``weight_decay=0`` AdamW is plain Adam). The learning
    rate rises linearly over ``warmup_steps`` and then decays along a cosine to
    ``final_lr_fraction · lr`` (1.0: constant). ``evaluate(model)`` returns ``{name: value}`` and runs
    before the first step, every ``eval_every`` steps and after the last. The model is left in eval
    mode (``model.eval()``) when training ends; call ``model.train()`` to continue training with
    dropout. Returns a `TrainingResult`. See notebook 05_finetuning_strategies_compared.
    """
    _validate.module("model", model)
    if not callable(next_batch):
        raise TypeError(f"next_batch must be a callable step -> (x, y), got {type(next_batch).__name__}")
    _validate.integer("steps", steps, 1)
    _validate.positive("lr", lr)
    _validate.real("weight_decay", weight_decay, 0)
    _validate.integer("warmup_steps", warmup_steps, 0)
    _validate.real("final_lr_fraction", final_lr_fraction, 0, 1)
    if eval_every is not None:
        _validate.integer("eval_every", eval_every, 1)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be a callable model -> dict or None, got {type(evaluate).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True): apply a strategy first, "
                         "e.g. lora_edu.apply_strategy(model, 'lora')")
    show = progress_enabled(progress)
    device = params[0].device
    on_cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        progress_fraction = (step - warmup_steps) / max(steps - warmup_steps, 1)
        return lr * (final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress_fraction)))

    result = TrainingResult(trainable_parameters=sum(p.numel() for p in params))

    def run_evaluation(step: int) -> None:
        if evaluate is None:
            return
        result.eval_steps.append(step)
        for name, value in evaluate(model).items():
            result.evaluations.setdefault(name, []).append(float(value))

    memory_at_start = 0  # on CUDA, what was allocated before training: earlier runs are not counted
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        memory_at_start = torch.cuda.memory_allocated(device)
    model.train()
    run_evaluation(0)
    bar = _progress_bar(steps, description, show)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = next_batch(step)
        start = time.perf_counter()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_cuda:
            torch.cuda.synchronize(device)
        result.step_seconds.append(time.perf_counter() - start)
        result.train_losses.append(float(loss.detach()))
        bar.update(1)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{result.train_losses[-1]:.3f}")
        if eval_every is not None and (step + 1) % eval_every == 0 and step + 1 < steps:
            run_evaluation(step + 1)
    bar.close()
    result.grad_bytes = tensor_bytes(p.grad for p in params)
    result.optimizer_bytes = optimizer_state_bytes(optimizer)
    if on_cuda:
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device)) - memory_at_start
    run_evaluation(steps)
    model.eval()
    return result


@dataclass
class LearningRateSweep:
    """What `sweep_learning_rates` ran: every learning rate at ``seeds[0]``, then the best one at every seed.

    ``runs[(lr, seed)]``: ``(model, TrainingResult)``; ``scores[i]``: the final ``score`` (an evaluation
    name, e.g. a validation loss) of ``learning_rates[i]`` at ``seeds[0]``; ``best_lr``: the best of them.
    See notebook 05_finetuning_strategies_compared.
    """

    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    score: str
    lower_is_better: bool
    scores: list[float]
    best_lr: float
    runs: dict = field(repr=False)

    @property
    def best_at_edge(self) -> bool:
        """True when the best rate is the smallest or the largest of the grid: widen the grid then."""
        return self.best_lr in (self.learning_rates[0], self.learning_rates[-1])

    def best_runs(self) -> list[tuple]:
        """``(model, TrainingResult)`` of the best rate, one per seed, in the order of ``seeds``."""
        return [self.runs[self.best_lr, seed] for seed in self.seeds]

    def finals(self, name: str) -> list[float]:
        """The final value of evaluation ``name`` at the best rate, one per seed."""
        return [result.final(name) for _, result in self.best_runs()]

    def mean(self, name: str) -> float:
        return statistics.fmean(self.finals(name))

    def spread(self, name: str) -> float:
        """max − min of the final ``name`` over the seeds at the best rate."""
        values = self.finals(name)
        return max(values) - min(values)

    def curves(self, name: str) -> list[list[float]]:
        """Evaluation ``name`` at every evaluation step, one list per seed, at the best rate."""
        return [result.evaluations[name] for _, result in self.best_runs()]


def sweep_learning_rates(fine_tune: Callable[[float, int], tuple], learning_rates, seeds=(0, 1, 2), *,
                         score: str, lower_is_better: bool = True) -> LearningRateSweep:
    """A learning-rate sweep, then seeds: ``fine_tune(lr, seed) -> (model, TrainingResult)`` runs once per
    rate at ``seeds[0]``; the rate whose final ``score`` (an evaluation of the result, on data the comparison
    does not report: a validation split) is lowest (highest with ``lower_is_better=False``) is the best, and
    runs again at each other seed. Cost: ``len(learning_rates) + len(seeds) - 1`` runs.

    ``learning_rates``: at least 3, increasing (a log grid, e.g. ``1e-3, 3e-3, 1e-2, ...``), so that a best
    rate inside the grid (`LearningRateSweep.best_at_edge` False) is a real optimum of the grid.
    See notebook 05_finetuning_strategies_compared.
    """
    if not callable(fine_tune):
        raise TypeError(f"fine_tune must be a callable (lr, seed) -> (model, TrainingResult), "
                        f"got {type(fine_tune).__name__}")
    learning_rates = _validate.positives("learning_rates", learning_rates)
    if len(learning_rates) < 3 or list(learning_rates) != sorted(set(learning_rates)):
        raise ValueError(f"learning_rates must be at least 3 increasing values (a grid with an inside), "
                         f"got {learning_rates!r}")
    seeds = _validate.integers("seeds", seeds, 0)
    _validate.instance("score", score, str, "the name of an evaluation, e.g. 'validation loss'")
    _validate.boolean("lower_is_better", lower_is_better)
    runs = {}
    for lr in learning_rates:
        runs[lr, seeds[0]] = fine_tune(lr, seeds[0])
        evaluations = runs[lr, seeds[0]][1].evaluations
        if score not in evaluations:
            raise ValueError(f"score={score!r} is not an evaluation of the runs; allowed values: "
                             f"{', '.join(evaluations) or 'none (pass evaluate= to train)'}")
    scores = [runs[lr, seeds[0]][1].final(score) for lr in learning_rates]
    pick = min if lower_is_better else max
    best = learning_rates[scores.index(pick(scores))]
    for seed in seeds[1:]:
        runs[best, seed] = fine_tune(best, seed)
    return LearningRateSweep(learning_rates, seeds, score, lower_is_better, scores, best, runs)
