"""Checks for the exercises of notebook 04_lora_from_scratch, with a hint for the usual mistakes (α instead of α/r,
a transposed matrix, the frozen weights counted as trainable)."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from ..checks import CheckResult, as_numbers, check_value, exercise, failed, hint_for_mistake
from ..lora import LoraConfig, LoRALinear, add_lora


@exercise("Exercise 1")
def check_scaling(name, answer, alpha: float, r: int, use_rslora: bool = False) -> CheckResult:
    """Exercise 1: the factor LoRA multiplies ``B A x`` by: ``alpha / r``, or ``alpha / sqrt(r)`` (rsLoRA)."""
    expected = alpha / math.sqrt(r) if use_rslora else alpha / r
    result = check_value(name, answer, expected, rtol=1e-6, what="scaling")
    other = alpha / r if use_rslora else alpha / math.sqrt(r)
    return hint_for_mistake(result, answer, [
        (alpha, "that is α itself; LoRA multiplies by α divided by a function of the rank."),
        (other, "that is the other rule: α/r is LoRA's, α/√r is rsLoRA's."),
        (r / alpha, "upside down: α is on top."),
    ], rtol=1e-4, atol=1e-6)


def _lora_parts(layer: LoRALinear):
    """The frozen ``W0`` and bias and the factors ``A``, ``B`` of ``layer``, in float64.

    ``W0`` is the frozen weight *without* ``ΔW``: while the layer is merged, ``base.weight`` holds
    ``W0 + ΔW``, so ``ΔW`` is subtracted here."""
    if not isinstance(layer, LoRALinear):
        raise TypeError(f"layer must be a lora_edu.LoRALinear, got {type(layer).__name__}")
    name = layer.active_adapter
    a = layer.lora_A[name].detach().double()
    b = layer.lora_B[name].detach().double()
    w0 = layer.base.weight.detach().double()
    for merged in layer.merged_adapters:
        w0 = w0 - layer.delta_weight(merged).detach().double()
    b0 = layer.base.bias.detach().double() if layer.base.bias is not None else 0.0
    return w0, b0, a, b, layer.scaling[name], layer.lora_alpha[name]


MERGED_MESSAGE = ("layer_ex is merged (merged=True): its base.weight already holds W0 + ΔW, so the formula "
                  "would count ΔW twice. Call layer_ex.unmerge() first, then compute the answer again.")


@exercise("Exercise 2")
def check_lora_output(name, answer, x: torch.Tensor, layer: LoRALinear) -> CheckResult:
    """Exercise 2: ``h = x W0ᵀ + b + (α/r) (x Aᵀ) Bᵀ`` for a batch ``x`` of shape ``(n, in)`` -> ``(n, out)``,
    computed by hand from ``layer.base``, ``layer.lora_A``, ``layer.lora_B`` (no dropout).

    A merged layer fails with a message to unmerge it first: its ``base.weight`` already holds ``W0 + ΔW``."""
    w0, b0, a, b, scaling, alpha = _lora_parts(layer)
    if layer.merged:
        return failed(name, MERGED_MESSAGE)
    xd = x.detach().double()
    base = xd @ w0.T + b0
    branch = (xd @ a.T) @ b.T
    expected = base + scaling * branch
    result = check_value(name, answer, expected, rtol=1e-4, atol=1e-5, what="h")
    return hint_for_mistake(result, answer, [
        (base, "that is the frozen layer alone: add the LoRA branch (α/r)·B A x."),
        (base + branch, "the branch is missing its scaling α/r."),
        (base + alpha * branch, "you scaled by α; LoRA scales by α/r."),
        (expected - b0, "the frozen layer's bias is missing."),
        (expected.T, "transposed: each row of x gives one row of h, shape (n, out)."),
    ], rtol=1e-4, atol=1e-6)


@exercise("Exercise 3")
def check_delta_weight(name, answer, layer: LoRALinear) -> CheckResult:
    """Exercise 3: the merged update ``ΔW = (α/r) B A``, shape ``(out, in)``, that ``merge()`` adds to W0.

    Computed from the factors, so it is the same whether or not the learner has called ``merge()``."""
    w0, _, a, b, scaling, alpha = _lora_parts(layer)
    expected = scaling * (b @ a)
    result = check_value(name, answer, expected, rtol=1e-4, atol=1e-6, what="ΔW")
    return hint_for_mistake(result, answer, [
        (b @ a, "B A is right, but ΔW also carries the scaling α/r."),
        (alpha * (b @ a), "you scaled by α; LoRA scales by α/r."),
        (expected.T, "transposed: ΔW has W0's shape (out, in), so it is B A, not Aᵀ Bᵀ."),
        (scaling * (a.T @ b.T), "transposed: ΔW has W0's shape (out, in), so it is B A."),
        (w0 + expected, "that is the merged weight W0 + ΔW; ΔW alone is asked."),
    ], rtol=1e-4, atol=1e-6)


@exercise("Exercise 4")
def check_trainable_parameters(name, answer, model: nn.Module, target_modules, r: int) -> CheckResult:
    """Exercise 4: how many parameters ``add_lora(model, LoraConfig(target_modules=..., r=r))`` leaves trainable:
    ``r (in + out)`` per adapted layer (α does not matter). ``model`` is not changed."""
    with torch.random.fork_rng(devices=[]):  # do not move the learner's random numbers on
        adapted = add_lora(copy.deepcopy(model), LoraConfig(target_modules=target_modules, r=r))
    layers = [m for m in adapted.modules() if isinstance(m, LoRALinear)]
    expected = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    number = as_numbers(answer)
    if number is not None and number.ndim == 0 and np.isfinite(number) and not float(number).is_integer():
        return failed(name, f"expected a whole number of parameters, got {type(answer).__name__} {answer!r:.60}.")
    result = check_value(name, answer, expected, what="trainable parameters")
    total = sum(p.numel() for p in model.parameters())
    return hint_for_mistake(result, answer, [
        (total, "that counts every parameter; after add_lora only lora_A and lora_B are trainable."),
        (total + expected, "that counts the frozen weights too; only lora_A and lora_B train."),
        (sum(r * l.in_features for l in layers), "that is only the A's (r × in); add the B's (out × r)."),
        (sum(r * l.out_features for l in layers), "that is only the B's (out × r); add the A's (r × in)."),
        (sum(l.in_features * l.out_features for l in layers), "that is the dense ΔW's size, in × out per layer."),
    ], rtol=1e-4, atol=1e-6)
