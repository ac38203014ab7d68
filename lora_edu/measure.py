"""Measuring what a fine-tuning strategy costs: parameters, memory, disk, time.

Explained in notebook 05_finetuning_strategies_compared.

- Counts are exact: trainable parameters and the bytes training keeps (16 per trainable number in float32).
- Disk: the bytes of a safetensors file holding what must be stored per task.
- Time: medians of many runs after a warm-up, models compared with each other timed in turns (`in_turns`).
  Timings vary between machines and runs: compare ratios measured side by side, never absolute times.
"""
from __future__ import annotations

import itertools
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from . import _validate
from .training import tensor_bytes


@dataclass(frozen=True)
class ParameterCount:
    """``trainable`` and ``total`` numbers in a model's parameters; ``percent_of(base)`` = 100·trainable/base."""

    trainable: int
    total: int

    def percent_of(self, base_total: int) -> float:
        _validate.positive("base_total", base_total)
        return 100.0 * self.trainable / base_total


def count_trainable(model: nn.Module) -> ParameterCount:
    """Trainable (``requires_grad``) and total parameter counts. See notebook 05_finetuning_strategies_compared."""
    params = list(_validate.module("model", model).parameters())
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def measured_training_memory_bytes(model: nn.Module) -> dict[str, int]:
    """Exact bytes of what training with AdamW keeps, from the model's tensors (nothing is run); the
    formula from parameter counts alone is `lora_edu.counting.training_memory_bytes`.

    ``weights``: every parameter (frozen ones too); ``gradients``: one per trainable number;
    ``optimizer``: AdamW's ``exp_avg`` and ``exp_avg_sq`` per trainable number plus one 4-byte ``step``
    per trainable tensor; ``trainable_total`` = trainable weights + gradients + optimizer (float32: 16 bytes
    per trainable number); ``total`` = weights + gradients + optimizer. Activations (they depend on the
    batch and the sequence length) are not included. See notebook 05_finetuning_strategies_compared.
    """
    trainable = [p for p in _validate.module("model", model).parameters() if p.requires_grad]
    weights, trainable_weights = tensor_bytes(model.parameters()), tensor_bytes(trainable)
    gradients = trainable_weights
    optimizer = 2 * trainable_weights + 4 * len(trainable)
    return {"weights": weights, "trainable_weights": trainable_weights, "gradients": gradients,
            "optimizer": optimizer, "trainable_total": trainable_weights + gradients + optimizer,
            "total": weights + gradients + optimizer}


def saved_activation_bytes(model: nn.Module, loss_fn, *inputs) -> int:
    """Exact bytes of the tensors autograd keeps for the backward pass of ``loss_fn(model(*inputs))`` — the
    activations a training step holds in memory between forward and backward — without the model's own parameters
    and buffers (they are in memory anyway). Each storage is counted once, however many views of it are saved.
    Nothing is trained (no backward runs). See notebook 10_lora_variants (DoRA's and QLoRA's memory)."""
    _validate.module("model", model)
    own = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(model(*inputs))
    del loss
    return sum(kept.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds in its state (AdamW after a step: ``exp_avg``, ``exp_avg_sq``
    and a 4-byte ``step`` per parameter tensor), measured from ``optimizer.state``; zero before the first step.
    The formula from parameter counts is `lora_edu.counting.training_memory_bytes` (``"optimizer"``).
    See notebook 03_parameter_savings."""
    _validate.instance("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


def measured_checkpoint_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes on disk of ``tensors`` saved as one safetensors file (the format PEFT stores adapters in);
    the estimate from a parameter count is `lora_edu.counting.checkpoint_bytes`."""
    _validate.instance("tensors", tensors, Mapping, "a mapping of names to tensors")
    if not tensors:
        raise ValueError("tensors must be a non-empty mapping of names to tensors")
    wrong = [str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if wrong:
        raise TypeError(f"tensors must map str names to torch.Tensor values; wrong entries: {', '.join(wrong[:5])}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "task.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
        return path.stat().st_size


def lora_flop_ratio(r: int, d: int, k: int) -> float:
    """Extra multiply-adds of an unmerged LoRA layer relative to its frozen ``d × k`` weight: ``r(d+k)/(dk)``."""
    r, d, k = _validate.integer("r", r, 1), _validate.integer("d", d, 1), _validate.integer("k", k, 1)
    return r * (d + k) / (d * k)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_turns(items: Mapping, rounds: int):
    """``(round, name, item)`` for every item in each of ``rounds`` rounds, round robin: each round starts with
    the next item, so no item always follows the same one and a slow moment of the machine hits all alike."""
    order = list(items.items())
    for turn in range(rounds):
        shift = turn % len(order)
        for name, item in order[shift:] + order[:shift]:
            yield turn, name, item


def measure_latencies(models: Mapping[str, nn.Module], example: torch.Tensor, repeats: int = 50,
                      warmup: int = 5, min_sample_seconds: float = 1e-3) -> dict[str, float]:
    """Median seconds of one forward pass of each model on ``example``, timed in turns.

    Each model runs ``warmup`` passes (at least one); then ``repeats`` rounds of `in_turns`, in which every
    model runs one sample (eval mode, under ``torch.inference_mode``). A sample is ``number`` back-to-back
    passes, ``number`` chosen once so that a sample of the fastest model lasts at least ``min_sample_seconds``
    (one pass of a tiny model is too short to time on a busy machine). Returns ``{name: median seconds per
    pass}``. See notebook 05_finetuning_strategies_compared.
    """
    samples = latency_samples(models, example, repeats, warmup, min_sample_seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


def latency_samples(models: Mapping[str, nn.Module], example: torch.Tensor, repeats: int = 50,
                    warmup: int = 5, min_sample_seconds: float = 1e-3) -> dict[str, list[float]]:
    """Every timed sample of `measure_latencies`: ``{name: [seconds per pass, one per round]}``, ``repeats``
    values each, in the order of the rounds. The median is the typical time; the minimum over the interleaved
    rounds is the least disturbed by other work on the machine (a comparison of two models by their minima is
    the robust one under load). See notebook 05_finetuning_strategies_compared.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of names to models")
    for model in models.values():
        _validate.module("each of models", model)
    _validate.instance("example", example, torch.Tensor, "a torch.Tensor")
    _validate.integer("repeats", repeats, 1)
    _validate.integer("warmup", warmup, 0)
    _validate.real("min_sample_seconds", min_sample_seconds, 0, 1)
    device = example.device
    times = {name: [] for name in models}
    with torch.inference_mode():
        fastest = float("inf")
        for model in models.values():
            model.eval()
            for _ in range(max(warmup, 1)):
                _synchronize(device)
                start = time.perf_counter()
                model(example)
                _synchronize(device)
                fastest = min(fastest, time.perf_counter() - start)
        number = max(1, min(1000, math.ceil(min_sample_seconds / max(fastest, 1e-9))))
        for _, name, model in in_turns(models, repeats):
            start = time.perf_counter()
            for _ in range(number):
                model(example)
            _synchronize(device)
            times[name].append((time.perf_counter() - start) / number)
    return times


def time_inference(model: nn.Module, example: torch.Tensor, repeats: int = 50, warmup: int = 5,
                   min_sample_seconds: float = 1e-3) -> float:
    """Median seconds of one forward pass of ``model`` on ``example`` (see `measure_latencies`)."""
    return measure_latencies({"model": model}, example, repeats, warmup, min_sample_seconds)["model"]


def time_state_load(model: nn.Module, state: Mapping[str, torch.Tensor], repeats: int = 20) -> float:
    """Median seconds to copy ``state`` into ``model`` (``load_state_dict(strict=False)``): swapping a task.

    Every key of ``state`` must exist in the model. See notebook 05_finetuning_strategies_compared.
    """
    _validate.module("model", model)
    _validate.integer("repeats", repeats, 1)
    missing = sorted(set(state) - set(model.state_dict()))
    if missing:
        raise ValueError(f"state has keys the model lacks: {', '.join(missing[:5])}")
    device = next(model.parameters()).device
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.load_state_dict(state, strict=False)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_note(peak_bytes: int | None) -> str:
    """A table entry for CUDA's peak allocated memory: ``'1.23 MB'``, or ``'n/a (CPU)'`` where it is not reported."""
    return "n/a (CPU)" if peak_bytes is None else f"{peak_bytes / 1e6:.2f} MB"
