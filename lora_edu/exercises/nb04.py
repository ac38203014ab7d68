"""Checks for the exercises of notebook 04_lora_from_scratch, with a hint for the usual mistakes (α instead of α/r,
a transposed matrix, the frozen weights counted as trainable, an adapter active twice after a merge).

Two are build-it checks: the learner writes the LoRA forward pass and merge/unmerge, and the check runs them on
random layers against `lora_edu.LoRALinear`, with the package's own shortcuts (calling the layer, ``merge()``,
``merge_lora``, ``delta_weight``) forbidden while they run."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

import lora_edu

from .. import lora as lora_module
from ..checks import (REVEAL, CheckResult, as_numbers, check_value, exercise, failed, hint_for_mistake, how_far,
                      not_answered, passed, revealed)
from ..lora import LoraConfig, LoRALinear, LoraVariant, add_lora
from ._build_it import is_stub, run_forbidding


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


# --- Build it: the forward pass and merge/unmerge, on random layers ---

def _random_layers(specs):
    """LoRALinear layers with random ``A`` and ``B`` (as if trained), one per ``(d_in, d_out, bias, r, alpha,
    rslora, input shape)``, each with an input; the learner's random numbers are not moved on."""
    state = torch.random.get_rng_state()
    torch.manual_seed(11)
    cases = []
    for d_in, d_out, bias, r, alpha, rslora, batch in specs:
        config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, init_lora_weights=False)
        layer = LoRALinear(nn.Linear(d_in, d_out, bias=bias), config).eval()
        cases.append((layer, torch.randn(*batch, d_in)))
    torch.random.set_rng_state(state)
    return cases


def _describe(layer: LoRALinear, x: torch.Tensor | None = None) -> str:
    rule = "rsLoRA, α/√r" if layer.lora_config["default"].use_rslora else "α/r"
    bias = "with bias" if layer.base.bias is not None else "no bias: base.bias is None"
    shape = f", x of shape {tuple(x.shape)}" if x is not None else ""
    return (f"{layer.out_features}×{layer.in_features} layer, r = {layer.r['default']}, "
            f"α = {layer.lora_alpha['default']:g} ({rule}), {bias}{shape}")


FORWARD_CASES = [(5, 3, True, 2, 6, False, (4,)), (8, 6, True, 4, 16, True, (3,)), (7, 2, False, 1, 1, False, (5,)),
                 (6, 4, True, 3, 12, False, (2, 3))]
FORWARD_SHORTCUTS = [(LoRALinear, "forward", "calls the LoRA layer itself (layer(x) or layer.forward)"),
                     (LoraVariant, "forward", "calls the package's branch (layer.lora_variant[...].forward)")]


def _forward_diagnosis(got, x, layer) -> str:
    """Which usual slip a wrong output shows (without showing the right one)."""
    w, b0 = layer.base.weight.detach().double(), layer.base.bias
    b0 = 0.0 if b0 is None else b0.detach().double()
    a, b = layer.lora_A["default"].detach().double(), layer.lora_B["default"].detach().double()
    s, alpha, r = layer.scaling["default"], layer.lora_alpha["default"], layer.r["default"]
    xd = x.detach().double()
    base, branch = xd @ w.T + b0, (xd @ a.T) @ b.T
    slips = [(base, "it is the frozen layer alone: add the LoRA branch s · B A x"),
             (base + branch, "the branch is missing its scaling s = layer.scaling['default']"),
             (base + alpha * branch, "you scaled by α; LoRA scales by layer.scaling['default']"),
             (base + alpha / r * branch, "you computed α/r yourself, but this layer uses rsLoRA (α/√r): use "
                                         "layer.scaling['default'], which is right for either rule"),
             (base + s * branch - b0, "the frozen layer's bias is missing"),
             (s * branch, "the frozen layer's output x W0ᵀ + b0 is missing")]
    for value, hint in slips:
        if got.shape == value.shape and torch.allclose(got.double(), value, rtol=1e-4, atol=1e-5):
            return hint
    return "it is not x W0ᵀ + b0 + s (x Aᵀ) Bᵀ"


def check_lora_forward(function) -> CheckResult:
    """Exercise 2 (build it): ``function(x, layer)`` must return ``x W0ᵀ + b0 + s (x Aᵀ) Bᵀ`` for ``x`` of shape
    ``(..., in)``, from ``layer.base.weight``, ``layer.base.bias`` (None when the layer has no bias),
    ``layer.lora_A["default"]``, ``layer.lora_B["default"]`` and ``layer.scaling["default"]``, equal to the
    layer's own output within 1e-5 on four random layers. Calling the layer itself is forbidden and fails."""
    name = "Exercise 2"
    if function is REVEAL:
        return revealed(name, "x @ layer.base.weight.T + (layer.base.bias if it is not None) + "
                              "layer.scaling['default'] * (x @ layer.lora_A['default'].T) @ layer.lora_B['default'].T")
    if not callable(function):
        return failed(name, f"expected a function lora_forward(x, layer), got {type(function).__name__}.")
    if is_stub(function):
        return not_answered(name)
    for number, (layer, x) in enumerate(_random_layers(FORWARD_CASES), start=1):
        with torch.no_grad():
            expected = layer(x)
        with torch.no_grad():
            got, forbidden, error = run_forbidding(function, FORWARD_SHORTCUTS, x.clone(), copy.deepcopy(layer))
        case = f"case {number} ({_describe(layer, x)})"
        if forbidden:
            return failed(name, f"{case}: your function {forbidden}, which the task forbids: compute h from "
                                "the weights and factors by hand.")
        if error is not None:
            hint = (" Hint: A is (r, d_in) and B is (d_out, r), like nn.Linear weights: multiply by their "
                    "transposes, x @ A.T, then @ B.T." if "cannot be multiplied" in str(error) else "")
            return failed(name, f"{case} raised {type(error).__name__}: {error}{hint}")
        if not isinstance(got, torch.Tensor):
            return failed(name, f"{case}: expected a torch.Tensor, got {type(got).__name__}.")
        if tuple(got.shape) != tuple(expected.shape):
            return failed(name, f"{case}: the output has shape {tuple(got.shape)}; it should be x's shape with the "
                                f"last size replaced by out_features: {tuple(expected.shape)}.")
        if not torch.allclose(got.double(), expected.double(), rtol=1e-4, atol=1e-5):
            return failed(name, f"{case}: {_forward_diagnosis(got.detach(), x, layer)}.")
    return passed(name, f"correct: equal to the layer's own output on all {len(FORWARD_CASES)} random layers, "
                        "without calling it.")


MERGE_CASES = [(5, 3, True, 2, 6, False, (4,)), (9, 6, True, 3, 12, True, (3,)), (4, 4, False, 4, 8, False, (5,))]
MERGE_SHORTCUTS = [(LoRALinear, "merge", "calls layer.merge()"), (LoRALinear, "unmerge", "calls layer.unmerge()"),
                   (LoRALinear, "delta_weight", "calls layer.delta_weight()"),
                   (LoraVariant, "delta_weight", "calls the package's ΔW (layer.lora_variant[...].delta_weight)"),
                   (lora_module, "merge_lora", "calls lora_edu.merge_lora"),
                   (lora_edu, "merge_lora", "calls lora_edu.merge_lora"),
                   (lora_module, "unmerge_lora", "calls lora_edu.unmerge_lora"),
                   (lora_edu, "unmerge_lora", "calls lora_edu.unmerge_lora")]


def _weight_diagnosis(got, w0, layer, step: str) -> str:
    """What a wrong ``base.weight`` after the learner's ``step`` ("merge" or "unmerge") shows."""
    a, b = layer.lora_A["default"].detach().double(), layer.lora_B["default"].detach().double()
    s, alpha = layer.scaling["default"], layer.lora_alpha["default"]
    delta = s * (b @ a)
    close = lambda value: got.shape == value.shape and torch.allclose(got, value, rtol=1e-5, atol=1e-6)
    start = w0 if step == "merge" else w0 + delta
    if close(start):
        return (f"base.weight is unchanged: {step} must change layer.base.weight in place "
                "(under torch.no_grad(), e.g. layer.base.weight.add_(...))")
    slips = [(w0 + b @ a, "you added B A without the scaling s = layer.scaling['default']"),
             (w0 + alpha * (b @ a), "you scaled by α; ΔW = layer.scaling['default'] · B A"),
             (w0 - delta, "you subtracted ΔW; merge adds it"),
             (delta, "base.weight now is ΔW alone: add ΔW to W0, do not replace W0")]
    if w0.shape[0] == w0.shape[1]:  # a transposed ΔW fits only a square weight
        slips.append((w0 + delta.T, "ΔW is transposed: it has W0's shape (out, in), so it is B A"))
    if step == "unmerge":
        slips = [(w0 + 2 * delta, "unmerge added ΔW a second time; it must subtract it"),
                 (w0 + delta - b @ a, "unmerge subtracted B A without the scaling s"),
                 (torch.zeros_like(w0), "base.weight is all zeros: subtract ΔW, do not clear the weight")]
    for value, hint in slips:
        if close(value):
            return hint
    wanted = "W0 + s · B A" if step == "merge" else "W0 again (W0 + ΔW − ΔW)"
    worst = (got - (w0 + delta if step == "merge" else w0)).abs().argmax()
    index = np.unravel_index(int(worst), tuple(w0.shape))
    expected = (w0 + delta if step == "merge" else w0).flatten()[worst].item()
    return (f"base.weight is not {wanted}; the worst entry, at index {tuple(int(i) for i in index)}, is "
            f"{how_far(got.flatten()[worst].item(), expected)}")


def check_merge(function, unmerge) -> CheckResult:
    """Exercise 3 (build it): ``function(layer)`` merges the active adapter into ``layer.base.weight`` in place
    (``W0 ← W0 + s · B A``) and records it in ``layer.merged_adapters``, so the layer's forward skips its branch;
    ``unmerge(layer)`` subtracts ``ΔW`` again and removes the record. On three random layers the check asks:
    the weight is ``W0 + ΔW`` after the merge, the merged output equals the unmerged one (the adapter is not
    active twice), ``unmerge`` restores ``W0`` within float rounding (1e-6) and the output again.
    ``layer.merge()``, ``merge_lora``, ``delta_weight`` and their unmerge twins are forbidden and fail."""
    name = "Exercise 3"
    if function is REVEAL:
        return revealed(name, "merge: with torch.no_grad(): layer.base.weight += layer.scaling[n] * "
                              "layer.lora_B[n] @ layer.lora_A[n], then layer.merged_adapters.append(n), with "
                              "n = layer.active_adapter; unmerge: the same with -=, then "
                              "layer.merged_adapters.remove(n)")
    if not callable(function) or not callable(unmerge):
        return failed(name, "expected two functions, merge(layer) and unmerge(layer), got "
                            f"{type(function).__name__} and {type(unmerge).__name__}.")
    if is_stub(function) and is_stub(unmerge):
        return not_answered(name)
    for number, (layer, x) in enumerate(_random_layers(MERGE_CASES), start=1):
        case = f"case {number} ({_describe(layer)})"
        w0 = layer.base.weight.detach().double().clone()
        factors = [p.detach().clone() for p in (layer.lora_A["default"], layer.lora_B["default"])]
        with torch.no_grad():
            unmerged = layer(x).double()
        for step, learner in (("merge", function), ("unmerge", unmerge)):
            _, forbidden, error = run_forbidding(learner, MERGE_SHORTCUTS, layer)
            if forbidden:
                return failed(name, f"{case}: your {step} {forbidden}, which the task forbids: compute ΔW "
                                    "from lora_A, lora_B and scaling and change base.weight yourself.")
            if error is not None:
                grad = any(w in str(error) for w in ("non-leaf", "requires grad", "requires_grad"))
                hint = (" Hint: change the frozen weight in place, without autograd: with torch.no_grad(): "
                        "layer.base.weight += ..." if grad else "")
                return failed(name, f"{case}: your {step} raised {type(error).__name__}: {error}{hint}")
            if layer.base.weight.requires_grad:
                return failed(name, f"{case}: after your {step}, base.weight requires a gradient: keep W0 frozen "
                                    "(change it in place under torch.no_grad()).")
            if any(not torch.equal(p, f) for p, f in zip((layer.lora_A["default"], layer.lora_B["default"]),
                                                         factors)):
                return failed(name, f"{case}: your {step} changed lora_A or lora_B; only base.weight changes.")
            weight = layer.base.weight.detach().double()
            target = w0 + layer.delta_weight().detach().double() if step == "merge" else w0
            tolerance = dict(rtol=1e-5, atol=1e-6) if step == "merge" else dict(rtol=0, atol=1e-6)
            if weight.shape != w0.shape or not torch.allclose(weight, target, **tolerance):
                return failed(name, f"{case}: after your {step}, {_weight_diagnosis(weight, w0, layer, step)}.")
            with torch.no_grad():
                output = layer(x).double()
            if not torch.allclose(output, unmerged, rtol=1e-4, atol=1e-5):
                if step == "merge":
                    return failed(name, f"{case}: the weight is W0 + ΔW, but the layer's output changed: its forward "
                                        "still adds the branch, so the adapter is active twice. Record the merge: "
                                        "layer.merged_adapters.append(layer.active_adapter).")
                return failed(name, f"{case}: the weight is W0 again, but the layer still counts as merged "
                                    f"(merged_adapters = {layer.merged_adapters}), so its forward skips the branch. "
                                    "Remove the record in unmerge.")
    return passed(name, f"correct on all {len(MERGE_CASES)} random layers: merged output = unmerged output, and "
                        "unmerge restores W0 within 1e-6.")


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


# --- Predict, then measure: which entries get a gradient in the notebook's experiment ---

def measure_gradient_counts(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                            lr: float) -> tuple[int, int]:
    """Non-zero gradient entries of a copy of ``model`` at the first and at the second step of full-batch Adam
    (learning rate ``lr``) on the mean squared error: the measurement Exercise 5 predicts."""
    model = copy.deepcopy(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    counts = []
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        counts.append(sum(int(torch.count_nonzero(p.grad)) for p in model.parameters() if p.grad is not None))
        optimizer.step()
    return counts[0], counts[1]


@exercise("Exercise 5")
def check_gradient_counts(name, answer, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                          lr: float) -> CheckResult:
    """Exercise 5: a prediction ``(first, second)`` of how many parameter entries of the freshly wrapped
    ``model`` get a non-zero gradient at the first and at the second Adam step; the check measures it
    (`measure_gradient_counts`) on a copy, so ``model`` is not changed."""
    with torch.random.fork_rng(devices=[]):
        first, second = measure_gradient_counts(model, inputs, targets, lr)
    if answer is REVEAL:
        return revealed(name, f"({first:,}, {second:,}) non-zero gradient entries")
    numbers = as_numbers(answer)
    if numbers is None or numbers.shape != (2,) or not np.all(np.isfinite(numbers)) or \
            not all(float(n).is_integer() for n in numbers):
        return failed(name, f"expected two whole numbers (first step, second step), got {answer!r:.60}.")
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    a_entries = sum(m.lora_A[m.active_adapter].numel() for m in layers)
    b_entries = sum(m.lora_B[m.active_adapter].numel() for m in layers)
    total = sum(p.numel() for p in model.parameters())
    common = [(total, "that is every parameter of the model; the frozen ones get no gradient at all."),
              (total - a_entries - b_entries, "that is the frozen parameters: they are exactly the ones without a "
                                              "gradient.")]
    messages = []
    for step, got, expected, slips in (
            ("first step", int(numbers[0]), first,
             [(a_entries + b_entries, "at the start B = 0, so A's gradient s Bᵀ Gᵀ X is zero: only B's entries "
                                      "get one."),
              (a_entries, "it is the other factor: with B = 0, B gets the gradient and A does not.")] + common),
            ("second step", int(numbers[1]), second,
             [(b_entries, "after one Adam step B ≠ 0, so A's gradient is no longer zero."),
              (a_entries, "B still gets a gradient at the second step, and now A does too.")] + common)):
        if got == expected:
            continue
        hint = next((h for value, h in slips if value == got), "")
        messages.append(f"{step}: {how_far(got, expected)}." + (f" Hint: {hint}" if hint else ""))
    if not messages:
        return passed(name, f"correct: your prediction matches the measured counts ({first:,} then {second:,}).")
    return failed(name, " ".join(messages))
