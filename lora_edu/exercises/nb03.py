"""Checks for the exercises of notebook 03_parameter_savings."""
from __future__ import annotations

from ..checks import (REVEAL, CheckResult, check_int, check_value, exercise, failed, hint_for_mistake, how_far,
                      is_number, revealed, with_hint)
from ..counting import (TransformerShape, checkpoint_bytes, count_model_params, lora_params,
                        lora_trainable_params, training_memory_bytes)

UNITS = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _unit_hint(result: CheckResult, answer, expected: int) -> CheckResult:
    """A wrong answer that matches ``expected`` once multiplied by a unit (1.99 for 1,991,036,928 B) is in that unit."""
    if result.passed is not False or not is_number(answer) or answer <= 0:
        return result
    slips = {unit: abs(answer * factor / expected - 1) for unit, factor in UNITS.items()}
    unit = min(slips, key=slips.get)
    if slips[unit] <= 0.05:
        return with_hint(result, f"{answer:g} looks like the size in {unit}; the answer is in bytes (an int): "
                                 f"compute it in code without dividing by {UNITS[unit]:,.0f}.")
    return result


@exercise("Exercise 1")
def check_lora_params(name, answer, d: int, k: int, r: int) -> CheckResult:
    """Exercise 1: LoRA's trainable parameters for one ``d × k`` matrix at rank ``r``: ``r·(d + k)``."""
    result = check_value(name, answer, lora_params(d, k, r), what="trainable parameters")
    return hint_for_mistake(result, answer, [
        (d * k, "that is the dense matrix, d·k."),
        (r * d * k, "B is d×r and A is r×k: add their sizes."),
        (2 * r * max(d, k), "d and k differ here: B is d×r, A is r×k."),
    ], rtol=1e-9)


@exercise("Exercise 2", int_answer="a rank")
def check_break_even(name, answer, d: int, k: int) -> CheckResult:
    """Exercise 2: the largest integer rank at which LoRA still stores fewer numbers: ``r·(d+k) < d·k``."""
    expected = (d * k - 1) // (d + k)  # the largest r with r·(d+k) < d·k
    if answer is REVEAL:
        return revealed(name, f"r = {expected}")
    if answer < 1:
        return failed(name, f"a rank is at least 1, got {answer}.")
    return check_int(name, answer, expected,
                     f"correct: r = {expected} stores {expected * (d + k):,} < {d * k:,} numbers.",
                     f"r = {answer} saves ({answer * (d + k):,} < {d * k:,} numbers), but a larger rank saves "
                     f"too: {how_far(answer, expected)}.",
                     f"at r = {answer} LoRA stores {answer * (d + k):,} numbers, not fewer than the "
                     f"dense {d * k:,}: {how_far(answer, expected)}.")


@exercise("Exercise 3")
def check_full_finetuning_memory(name, answer, shape: TransformerShape, precision: str = "fp32") -> CheckResult:
    """Exercise 3: bytes of weights + gradients + Adam states for full fine-tuning of ``shape``.

    The answer is in bytes; one given in kB/MB/GB (or KiB/MiB/GiB) gets a hint saying so.
    """
    n = count_model_params(shape)
    expected = training_memory_bytes(n, n, precision)["total"]
    result = check_value(name, answer, expected, what="bytes")
    result = hint_for_mistake(result, answer, [
        (4 * n, "that is the weights only; add gradients and Adam's m and v."),
        (8 * n, "weights and gradients; Adam adds two more values per weight."),
        (12 * n, "Adam keeps two moments (m and v) per weight."),
    ], rtol=1e-9)
    return _unit_hint(result, answer, expected)


@exercise("Exercise 4")
def check_adapter_checkpoint(name, answer, shape: TransformerShape, r: int, targets,
                             dtype: str = "bf16") -> CheckResult:
    """Exercise 4: bytes of a LoRA adapter file (its factors only) in ``dtype``.

    The answer is in bytes; one given in kB/MB/GB (or KiB/MiB/GiB) gets a hint saying so.
    """
    n = lora_trainable_params(shape, r, targets)
    expected = checkpoint_bytes(n, dtype)
    result = check_value(name, answer, expected, what="bytes")
    result = hint_for_mistake(result, answer, [
        (n, "that is the number of parameters; multiply by bytes per value."),
        (n * 4, f"that is fp32 (4 B each); {dtype} is the question."),
    ], rtol=1e-9)
    return _unit_hint(result, answer, expected)
