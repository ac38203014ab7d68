"""Checks for the exercises of notebook 03_parameter_savings.

Each check takes the learner's ``answer`` (``...`` while unanswered) plus the exercise's inputs and
returns a `lora_edu.checks.CheckResult` that says what is wrong and by how much.
"""
from __future__ import annotations

import numbers

from ..checks import (NOT_ANSWERED, CheckResult, check_value, failed, hint_for_mistake, is_number, not_answered,
                      passed)
from ..counting import (TransformerShape, checkpoint_bytes, count_model_params, lora_params,
                        lora_trainable_params, training_memory_bytes)


def _with_hint(result: CheckResult, answer, mistakes: dict) -> CheckResult:
    return hint_for_mistake(result, answer, mistakes.items(), rtol=1e-9)


UNITS = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _unit_hint(result: CheckResult, answer, expected: int) -> CheckResult:
    """An answer that matches ``expected`` once multiplied by a unit (1.99 for 1,991,036,928 B) was given in that unit."""
    if result.passed is not False or not is_number(answer) or answer <= 0:
        return result
    slips = {unit: abs(answer * factor / expected - 1) for unit, factor in UNITS.items()}
    unit = min(slips, key=slips.get)
    if slips[unit] <= 0.05:
        return failed(result.exercise, f"{result.message} Hint: {answer:g} looks like the size in {unit}; the "
                                        f"answer is in bytes (an int): compute it in code without dividing by "
                                        f"{UNITS[unit]:,.0f}.")
    return result


def check_lora_params(answer, d: int, k: int, r: int) -> CheckResult:
    """Exercise 1: LoRA's trainable parameters for one ``d × k`` matrix at rank ``r``: ``r·(d + k)``."""
    name = "Exercise 1"
    if answer is NOT_ANSWERED:
        return not_answered(name)
    result = check_value(name, answer, lora_params(d, k, r), what="trainable parameters")
    return _with_hint(result, answer, {d * k: "that is the dense matrix, d·k.",
                                       r * d * k: "B is d×r and A is r×k: add their sizes.",
                                       2 * r * max(d, k): "d and k differ here: B is d×r, A is r×k."})


def check_break_even(answer, d: int, k: int) -> CheckResult:
    """Exercise 2: the largest integer rank at which LoRA still stores fewer numbers: ``r·(d+k) < d·k``."""
    name = "Exercise 2"
    if answer is NOT_ANSWERED:
        return not_answered(name)
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        return failed(name, f"expected an int (a rank), got {type(answer).__name__} {answer!r}.")
    expected = (d * k - 1) // (d + k)  # the largest r with r·(d+k) < d·k
    if answer == expected:
        return passed(name, f"correct: r = {expected} stores {expected * (d + k):,} < {d * k:,} numbers.")
    if answer > expected:
        return failed(name, f"at r = {answer} LoRA stores {answer * (d + k):,} numbers, not fewer than the "
                            f"dense {d * k:,}: too high by {answer - expected}.")
    return failed(name, f"r = {answer} saves, but so does r = {answer + 1} "
                        f"({(answer + 1) * (d + k):,} < {d * k:,}): too low by {expected - answer}.")


def check_full_finetuning_memory(answer, shape: TransformerShape, precision: str = "fp32") -> CheckResult:
    """Exercise 3: bytes of weights + gradients + Adam states for full fine-tuning of ``shape``.

    The answer is in bytes; one given in kB/MB/GB (or KiB/MiB/GiB) gets a hint saying so.
    """
    name = "Exercise 3"
    if answer is NOT_ANSWERED:
        return not_answered(name)
    n = count_model_params(shape)
    expected = training_memory_bytes(n, n, precision)["total"]
    result = check_value(name, answer, expected, what="bytes")
    result = _with_hint(result, answer, {4 * n: "that is the weights only; add gradients and Adam's m and v.",
                                         8 * n: "weights and gradients; Adam adds two more values per weight.",
                                         12 * n: "Adam keeps two moments (m and v) per weight."})
    return _unit_hint(result, answer, expected)


def check_adapter_checkpoint(answer, shape: TransformerShape, r: int, targets, dtype: str = "bf16") -> CheckResult:
    """Exercise 4: bytes of a LoRA adapter file (its factors only) in ``dtype``.

    The answer is in bytes; one given in kB/MB/GB (or KiB/MiB/GiB) gets a hint saying so.
    """
    name = "Exercise 4"
    if answer is NOT_ANSWERED:
        return not_answered(name)
    n = lora_trainable_params(shape, r, targets)
    expected = checkpoint_bytes(n, dtype)
    result = check_value(name, answer, expected, what="bytes")
    result = _with_hint(result, answer, {n: "that is the number of parameters; multiply by bytes per value.",
                                         n * 4: f"that is fp32 (4 B each); {dtype} is the question."})
    return _unit_hint(result, answer, expected)
