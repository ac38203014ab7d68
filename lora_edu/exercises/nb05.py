"""Checks for the exercises of notebook 05_finetuning_strategies_compared.

Each check takes the learner's ``answer`` (``...`` while unanswered) plus the exercise's inputs and
returns a `lora_edu.checks.CheckResult` that says what is wrong and by how much, with a hint for the
usual mistakes (the frozen weight counted as trainable, Adam's two states forgotten, d·k instead of
r(d+k)).
"""
from __future__ import annotations

import math

from ..checks import (NOT_ANSWERED, CheckResult, check_value, failed, hint_for_mistake, is_number, not_answered,
                      passed, with_hint)


def _as_scalar(answer):
    """A 0-d tensor or array (``torch.tensor(640)``, ``np.int64(640)``) as a plain Python number."""
    if getattr(answer, "ndim", None) == 0 and hasattr(answer, "item") and not isinstance(answer, bool):
        value = answer.item()
        if is_number(value):
            return value
    return answer


def _check_count(name: str, answer, expected: int, what: str) -> CheckResult:
    """An exact whole number: say how far off a wrong one is, with every digit shown."""
    if answer is NOT_ANSWERED:
        return not_answered(name)
    if not is_number(answer):
        return failed(name, f"expected a number of {what}, got {type(answer).__name__}: {answer!r:.40}")
    if not math.isfinite(answer):
        return failed(name, f"expected {expected:,} {what}, got {answer}: the answer must be a finite number.")
    if answer == expected:
        return passed(name, f"correct ({expected:,} {what}).")
    off = float(answer) - expected
    shown_off = (f"{abs(off):,.0f}" if float(off).is_integer()
                 else f"{abs(off):,.2f}" if abs(off) >= 1 else f"{abs(off):.6g}")
    relative = abs(off) / expected
    shown_relative = f"{relative:.2%}" if relative >= 1e-4 else f"{relative:.1e} relative"
    return failed(name, f"expected {expected:,} {what}, got {answer:,}: off by {shown_off} "
                        f"({shown_relative} too {'high' if off > 0 else 'low'}).")


def _check_shape_arguments(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_lora_layer_parameters(answer, d_out: int, d_in: int, r: int) -> CheckResult:
    """Exercise 1: trainable numbers LoRA adds to one ``d_out × d_in`` layer: ``r (d_in + d_out)``."""
    _check_shape_arguments(d_out=d_out, d_in=d_in, r=r)
    answer = _as_scalar(answer)
    expected = r * (d_in + d_out)
    result = _check_count("Exercise 1", answer, expected, "trainable numbers")
    return hint_for_mistake(result, answer, [
        (d_out * d_in, "that is the dense ΔW (d_out·d_in): LoRA stores two thin factors instead."),
        (r * d_in, "that is A alone (r × d_in); B (d_out × r) trains too."),
        (r * d_out, "that is B alone (d_out × r); A (r × d_in) trains too."),
        (r * d_in * d_out, "the factors are added, not multiplied: r·d_in + r·d_out."),
    ], rtol=1e-9)


def check_training_bytes(answer, trainable: int, bytes_per_number: int = 4,
                         trainable_tensors: int | None = None) -> CheckResult:
    """Exercise 2: bytes AdamW training keeps per trainable number: weight + gradient + two moments.

    Expected ``4 · bytes_per_number · trainable`` (16 bytes each in float32); the 4-byte step counters
    are left out. ``trainable_tensors`` (how many trainable tensors, optional) lets the check recognise
    an answer that includes them: ``16 · trainable + 4 · trainable_tensors``.
    """
    _check_shape_arguments(trainable=trainable, bytes_per_number=bytes_per_number)
    if trainable_tensors is not None:
        _check_shape_arguments(trainable_tensors=trainable_tensors)
    answer = _as_scalar(answer)
    expected = 4 * bytes_per_number * trainable
    result = _check_count("Exercise 2", answer, expected, "bytes")
    mistakes = []
    if trainable_tensors is not None:
        mistakes.append((expected + 4 * trainable_tensors,
                         f"that includes AdamW's 4-byte step counter for each of the {trainable_tensors} trainable "
                         f"tensors (16·n + 4·{trainable_tensors}, as in the table of section 5); the exercise "
                         "leaves the counters out."))
    mistakes += [(expected / 1e6, "that is in megabytes (10⁶ bytes); give the answer in bytes."),
                 (expected / 2 ** 20, "that is in MiB (2²⁰ bytes); give the answer in bytes.")]
    for candidate, hint in mistakes:
        if result.passed is False and is_number(answer) and math.isfinite(answer) \
                and abs(answer - candidate) <= 0.005 * candidate:
            return with_hint(result, hint)
    return hint_for_mistake(result, answer, [
        (bytes_per_number * trainable, "that is the weights alone; training also keeps a gradient and "
                                       "AdamW's two moment estimates per number."),
        (2 * bytes_per_number * trainable, "weights and gradients: AdamW adds two more numbers per weight "
                                           "(exp_avg and exp_avg_sq)."),
        (3 * bytes_per_number * trainable, "you counted one AdamW state; it keeps two (exp_avg and exp_avg_sq)."),
        (4 * trainable, "that counts numbers, not bytes: multiply by the bytes per number."),
    ], rtol=1e-9)


def check_flop_ratio(answer, d: int, k: int, r: int) -> CheckResult:
    """Exercise 3: extra multiply-adds of an unmerged LoRA layer relative to ``W0 (d × k)``: ``r(d+k)/(dk)``."""
    _check_shape_arguments(d=d, k=k, r=r)
    expected = r * (d + k) / (d * k)
    result = check_value("Exercise 3", answer, expected, rtol=1e-6, what="extra compute ratio")
    value = _as_scalar(answer)
    if result.passed is False and is_number(value) and math.isfinite(value):
        if abs(value - 100 * expected) <= 0.01 * 100 * expected:
            return with_hint(result, "that is a percentage; give the fraction (divide by 100).")
        if abs(value - expected) <= 0.02 * expected:
            return with_hint(result, "close, but rounded; compute it in Python, e.g. r * (d + k) / (d * k), "
                                     "and do not round.")
    return hint_for_mistake(result, answer, [
        (1 + expected, "that is the total (1 + the extra part); the question asks for the extra part only."),
        (r / d, "x goes through A (r × k) and then B (d × r): count both products, r·k + d·r."),
        (r / k, "x goes through A (r × k) and then B (d × r): count both products, r·k + d·r."),
    ], rtol=1e-9)


def check_adapter_parameters(answer, width: int, bottleneck: int, sublayers: int) -> CheckResult:
    """Exercise 4: trainable numbers of serial adapters: per sub-layer ``2·d·m + m + d`` (two weights, two biases)."""
    _check_shape_arguments(width=width, bottleneck=bottleneck, sublayers=sublayers)
    answer = _as_scalar(answer)
    d, m = width, bottleneck
    per_adapter = 2 * d * m + m + d
    expected = sublayers * per_adapter
    result = _check_count("Exercise 4", answer, expected, "trainable numbers")
    for count in range(2, sublayers):
        if sublayers % count == 0 and result.passed is False and is_number(answer) \
                and answer == count * per_adapter:
            return with_hint(result, f"one adapter has the right size ({per_adapter:,}), but you counted {count} "
                                     f"adapters; there is one after every target sub-layer: {sublayers} in all "
                                     f"(attention and MLP in each block).")
    return hint_for_mistake(result, answer, [
        (sublayers * 2 * d * m, "you left out the biases: down has m, up has d."),
        (2 * d * m + m + d, "that is one adapter; there is one after every target sub-layer."),
        (sublayers * d * m, "each adapter has two matrices: down (m × d) and up (d × m)."),
    ], rtol=1e-9)
