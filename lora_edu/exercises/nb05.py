"""Checks for the exercises of notebook 05_finetuning_strategies_compared, with a hint for the usual mistakes
(the frozen weight counted as trainable, Adam's two states forgotten, d·k instead of r(d+k)), a serial adapter
built by hand, and a prediction checked against a run of the notebook's own experiment."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import (NOT_ANSWERED, REVEAL, CheckResult, check_value, as_numbers, exercise, failed, hint_for_mistake,
                      how_far, not_answered, passed, revealed)
from ..strategies import SerialAdapter


def _check_shape_arguments(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


@exercise("Exercise 1")
def check_lora_layer_parameters(name, answer, d_out: int, d_in: int, r: int) -> CheckResult:
    """Exercise 1: trainable numbers LoRA adds to one ``d_out × d_in`` layer: ``r (d_in + d_out)``."""
    _check_shape_arguments(d_out=d_out, d_in=d_in, r=r)
    result = check_value(name, answer, r * (d_in + d_out), what="trainable numbers")
    return hint_for_mistake(result, answer, [
        (d_out * d_in, "that is the dense ΔW (d_out·d_in): LoRA stores two thin factors instead."),
        (r * d_in, "that is A alone (r × d_in); B (d_out × r) trains too."),
        (r * d_out, "that is B alone (d_out × r); A (r × d_in) trains too."),
        (r * d_in * d_out, "the factors are added, not multiplied: r·d_in + r·d_out."),
    ], rtol=1e-9)


@exercise("Exercise 2")
def check_training_bytes(name, answer, trainable: int, bytes_per_number: int = 4,
                         trainable_tensors: int | None = None) -> CheckResult:
    """Exercise 2: bytes AdamW training keeps per trainable number: weight + gradient + two moments.

    Expected ``4 · bytes_per_number · trainable`` (16 bytes each in float32); the 4-byte step counters
    are left out. ``trainable_tensors`` (how many trainable tensors, optional) lets the check recognise
    an answer that includes them: ``16 · trainable + 4 · trainable_tensors``.
    """
    _check_shape_arguments(trainable=trainable, bytes_per_number=bytes_per_number)
    if trainable_tensors is not None:
        _check_shape_arguments(trainable_tensors=trainable_tensors)
    expected = 4 * bytes_per_number * trainable
    result = check_value(name, answer, expected, what="bytes")
    # matched exactly (the default rtol=1e-9 below): an answer merely close to 16·n is not "off by the counters"
    counters = [(expected + 4 * trainable_tensors,
                 f"that includes AdamW's 4-byte step counter for each of the {trainable_tensors} trainable tensors "
                 f"(16·n + 4·{trainable_tensors}, as in the table of section 5); the exercise leaves them out.")
                ] if trainable_tensors is not None else []
    return hint_for_mistake(result, answer, counters + [
        (expected / 1e6, "that is in megabytes (10⁶ bytes); give the answer in bytes.", 0.005),
        (expected / 2 ** 20, "that is in MiB (2²⁰ bytes); give the answer in bytes.", 0.005),
        (bytes_per_number * trainable, "that is the weights alone; training also keeps a gradient and "
                                       "AdamW's two moment estimates per number."),
        (2 * bytes_per_number * trainable, "weights and gradients: AdamW adds two more numbers per weight "
                                           "(exp_avg and exp_avg_sq)."),
        (3 * bytes_per_number * trainable, "you counted one AdamW state; it keeps two (exp_avg and exp_avg_sq)."),
        (4 * trainable, "that counts numbers, not bytes: multiply by the bytes per number."),
    ], rtol=1e-9)


@exercise("Exercise 3")
def check_flop_ratio(name, answer, d: int, k: int, r: int) -> CheckResult:
    """Exercise 3: extra multiply-adds of an unmerged LoRA layer relative to ``W0 (d × k)``: ``r(d+k)/(dk)``."""
    _check_shape_arguments(d=d, k=k, r=r)
    expected = r * (d + k) / (d * k)
    result = check_value(name, answer, expected, rtol=1e-6, what="extra compute ratio")
    return hint_for_mistake(result, answer, [
        (100 * expected, "that is a percentage; give the fraction (divide by 100).", 0.01),
        (expected, "close, but rounded; compute it in Python, e.g. r * (d + k) / (d * k), and do not round.", 0.02),
        (1 + expected, "that is the total (1 + the extra part); the question asks for the extra part only."),
        (r / d, "x goes through A (r × k) and then B (d × r): count both products, r·k + d·r."),
        (r / k, "x goes through A (r × k) and then B (d × r): count both products, r·k + d·r."),
    ], rtol=1e-9)


@exercise("Exercise 4")
def check_adapter_parameters(name, answer, width: int, bottleneck: int, sublayers: int) -> CheckResult:
    """Exercise 4: trainable numbers of serial adapters: per sub-layer ``2·d·m + m + d`` (two weights, two biases)."""
    _check_shape_arguments(width=width, bottleneck=bottleneck, sublayers=sublayers)
    d, m = width, bottleneck
    per_adapter = 2 * d * m + m + d
    result = check_value(name, answer, sublayers * per_adapter, what="trainable numbers")
    too_few_adapters = [(count * per_adapter, f"one adapter has the right size, but you counted {count} adapters; "
                                              f"there is one after every target sub-layer: {sublayers} in all "
                                              f"(attention and MLP in each block).")
                        for count in range(2, sublayers) if sublayers % count == 0]
    return hint_for_mistake(result, answer, too_few_adapters + [
        (sublayers * 2 * d * m, "you left out the biases: down has m, up has d."),
        (2 * d * m + m + d, "that is one adapter; there is one after every target sub-layer."),
        (sublayers * d * m, "each adapter has two matrices: down (m × d) and up (d × m)."),
    ], rtol=1e-9)


ADAPTER_CASES = ((6, 2, (4, 6)), (16, 4, (2, 3, 16)), (5, 1, (7, 5)))  # (d, m, shape of h)


def _reference_adapter(d: int, m: int, seed: int) -> SerialAdapter:
    """The package's adapter on a width-``d`` sub-layer, with random (non-zero) ``down`` and ``up``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    reference = SerialAdapter(nn.Linear(d, d), m, init_scale=0.5)
    nn.init.normal_(reference.up.bias, 0.0, 0.5)
    torch.random.set_rng_state(generator_state)  # the learner's random numbers are not moved on
    return reference


def _adapter_diagnosis(got, h, down, up) -> str:
    """Which usual slip an adapter output shows (computed without showing the right output)."""
    slips = [(up(F.gelu(down(h))), "the residual is missing: the adapter returns h + up(gelu(down(h))), not "
                                   "only the bottleneck's output"),
             (h + up(down(h)), "the nonlinearity is missing: without the gelu the adapter is a linear map, "
                               "which could be merged into the weights"),
             (h + up(F.relu(down(h))), "that uses ReLU; the package's adapter (and Houlsby et al.) use GELU"),
             (h + F.gelu(up(down(h))), "the gelu sits after up; it belongs between down and up"),
             (h, "the output is h itself: the bottleneck path adds nothing")]
    for value, hint in slips:
        if value.shape == got.shape and torch.allclose(got, value, atol=1e-5):
            return hint
    return "it is not h + up(gelu(down(h)))"


def check_adapter_block(function) -> CheckResult:
    """Exercise 5 (build it): ``function(d, m)`` returns an ``nn.Module`` with ``down = nn.Linear(d, m)`` and
    ``up = nn.Linear(m, d)`` whose forward maps ``h (..., d)`` to ``h + up(gelu(down(h)))``, with ``up`` zero at
    the start (weight and bias), so the block starts as the identity. Checked on three (d, m, shape) cases: the
    layers' shapes, the identity at initialisation, what trains, and the output against the package's
    `lora_edu.strategies.SerialAdapter` with the same random weights (within 1e-5)."""
    name = "Exercise 5"
    if function is REVEAL:
        return revealed(name, "a module with self.down = nn.Linear(d, m), self.up = nn.Linear(m, d), "
                              "nn.init.zeros_ on up.weight and up.bias, and forward(h) = h + self.up(F.gelu(self.down(h)))")
    if function is NOT_ANSWERED:
        return not_answered(name)
    if not callable(function):
        return failed(name, f"expected a function make_adapter(d, m), got {type(function).__name__}.")
    generator_state = torch.random.get_rng_state()
    try:
        return _run_adapter_cases(name, function)
    finally:
        torch.random.set_rng_state(generator_state)  # building the learner's layers draws random numbers


def _run_adapter_cases(name: str, function) -> CheckResult:
    for number, (d, m, shape) in enumerate(ADAPTER_CASES, start=1):
        case = f"case {number} (d={d}, m={m}, h of shape {shape})"
        try:
            block = function(d, m)
        except Exception as error:  # the learner's code: report whatever it raised
            return failed(name, f"{case}: make_adapter raised {type(error).__name__}: {error}")
        if block is None and number == 1:
            return not_answered(name)
        if not isinstance(block, nn.Module):
            return failed(name, f"{case}: expected an nn.Module, got {type(block).__name__}.")
        for part, (fan_in, fan_out) in (("down", (d, m)), ("up", (m, d))):
            layer = getattr(block, part, None)
            if not isinstance(layer, nn.Linear):
                return failed(name, f"{case}: the block needs an attribute {part!r} that is an nn.Linear.")
            if (layer.in_features, layer.out_features) != (fan_in, fan_out):
                return failed(name, f"{case}: wrong shape: {part} maps {layer.in_features} -> {layer.out_features} "
                                    f"features; it should map {'d -> m' if part == 'down' else 'm -> d'} "
                                    f"({fan_in} -> {fan_out}).")
            if layer.bias is None:
                return failed(name, f"{case}: {part} has no bias; both layers of the adapter have one.")
        h = torch.randn(shape, generator=torch.Generator().manual_seed(number))
        try:
            with torch.no_grad():
                start = block(h.clone())
        except Exception as error:
            return failed(name, f"{case}: the forward pass raised {type(error).__name__}: {error}")
        if not isinstance(start, torch.Tensor) or tuple(start.shape) != shape:
            got = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
            return failed(name, f"{case}: wrong shape: the output is {got}; it should have h's shape {shape}.")
        if not torch.allclose(start, h, atol=1e-6) and torch.allclose(start, torch.zeros_like(h), atol=1e-6):
            return failed(name, f"{case}: at initialisation the block returns zeros, not h: the residual is missing "
                                f"(return h + up(gelu(down(h))), so that a new block passes h through unchanged).")
        if not torch.allclose(start, h, atol=1e-6):
            return failed(name, f"{case}: not zero at initialisation: a new block must return h unchanged; start "
                                f"up's weight and bias at zero (nn.init.zeros_), so the model begins as the base model.")
        trainable = sum(p.numel() for p in block.parameters() if p.requires_grad)
        if trainable != 2 * d * m + m + d:
            return failed(name, f"{case}: {trainable} numbers train; an adapter trains exactly down's and up's "
                                f"weights and biases.")
        reference = _reference_adapter(d, m, seed=10 + number)
        trained = copy.deepcopy(block)
        with torch.no_grad():
            for part in ("down", "up"):
                getattr(trained, part).weight.copy_(getattr(reference, part).weight)
                getattr(trained, part).bias.copy_(getattr(reference, part).bias)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(100 + number))
            h = reference.sublayer(x)
            expected = reference(x)
            try:
                got = trained(h.clone())
            except Exception as error:
                return failed(name, f"{case}: the forward pass raised {type(error).__name__}: {error}")
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return failed(name, f"{case}: wrong shape: the output should have h's shape {shape}.")
        if not torch.allclose(got, expected, atol=1e-5):
            return failed(name, f"{case}, with random weights in down and up: "
                                f"{_adapter_diagnosis(got, h, reference.down, reference.up)}.")
    return passed(name, "correct: the identity at the start, then h + up(gelu(down(h))), equal to "
                        "strategies.SerialAdapter in all 3 cases.")


PREDICTION_MARGIN = 0.01  # a prediction passes within the measured range of differences, widened by this


def _accuracies(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size < 2 or not np.all(np.isfinite(array)) or np.any((array < 0) | (array > 1)):
        raise ValueError(f"{name} must be a list of at least 2 test accuracies in [0, 1] (one per seed), "
                         f"got {values!r:.80}")
    return array


@exercise("Exercise 6")
def check_gap_prediction(name, answer, full, lora) -> CheckResult:
    """Exercise 6 (predict, then measure): a predicted gap ``mean(full) - mean(lora)`` in test accuracy, against
    the measured runs (``full``, ``lora``: one accuracy per seed). The prediction passes when it lies within the
    range of differences between one full and one LoRA run, ``[min(full) - max(lora), max(full) - min(lora)]``,
    widened by `PREDICTION_MARGIN` on each side: direction and coarse size, not the exact value. A wrong
    prediction is told its direction and a coarse size, never the measured gap."""
    full, lora = _accuracies("full", full), _accuracies("lora", lora)
    measured = float(full.mean() - lora.mean())
    low, high = float(full.min() - lora.max()) - PREDICTION_MARGIN, float(full.max() - lora.min()) + PREDICTION_MARGIN
    if answer is REVEAL:
        return revealed(name, f"mean(full) - mean(lora) = {measured:.3f}; a prediction passes between "
                              f"{low:.3f} and {high:.3f}")
    if answer is NOT_ANSWERED:
        return not_answered(name)
    got = as_numbers(answer)
    if got is None or got.shape != () or not np.isfinite(got):  # not one finite number: the generic message
        return check_value(name, answer, measured, what="your predicted gap")
    got = float(got)
    if low <= got <= high:
        return passed(name, f"your prediction lies within the measured range: the difference between one full "
                            f"and one LoRA run goes from {low + PREDICTION_MARGIN:+.3f} to "
                            f"{high - PREDICTION_MARGIN:+.3f} (mean {measured:+.3f}).")
    if low > 0 and got <= 0:
        return failed(name, "wrong direction: you predicted LoRA at least level with full fine-tuning; it trails "
                            "in every pair of runs. A higher rank narrows the gap; did it close it?")
    if high < 0 and got >= 0:
        return failed(name, "wrong direction: you predicted LoRA behind full fine-tuning; it is ahead in every "
                            "pair of runs.")
    direction = "too large" if got > high else "too small"
    hint = ("a larger rank gives LoRA's update more directions to use; compare with the gap at r = 4 (section 4)."
            if got > high else "the higher rank narrows the gap, but not that far at this 150-step budget.")
    if abs(got) > 1:
        hint = "a difference of two accuracies lies between -1 and 1: is that in percentage points? Give a fraction."
    return failed(name, f"your predicted gap is {direction}: it lies outside the range of differences between "
                        f"one full and one LoRA run, beyond the spread of the seeds; against the measured mean it is "
                        f"{how_far(got, measured)}. "
                        f"Hint: {hint}")
