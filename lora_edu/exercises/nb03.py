"""Checks for the exercises of notebook 03_parameter_savings: counts and bytes by hand, a savings calculator
built by the learner (checked on random shapes against `lora_edu.counting`, whose functions it may not call), and
a prediction of the optimizer state that the check measures."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from .. import counting
from ..checks import (REVEAL, CheckResult, as_numbers, check_int, check_value, exercise, failed, hint_for_mistake,
                      how_far, is_number, not_answered, passed, revealed, with_hint)
from ..counting import (TransformerShape, checkpoint_bytes, count_model_params, lora_params,
                        lora_trainable_params, training_memory_bytes)
from ..lora import LoraConfig, add_lora
from ..measure import optimizer_state_bytes
from ._build_it import is_stub, run_forbidding

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


# --- Build it: a savings calculator, on random shapes ---

def _savings_cases() -> list[tuple[int, int, int]]:
    """``(d, k, r)``: the notebook's examples, a break-even tie, ranks above break-even (LoRA stores more) and
    random shapes from a fixed generator (the learner's random numbers are not moved on)."""
    rng = np.random.default_rng(2106)
    cases = [(10, 10, 2), (2500, 2500, 8), (768, 3072, 16), (10, 10, 5), (12, 20, 9), (1, 7, 1)]
    for above in (False, False, True, True):
        d, k = (int(v) for v in rng.integers(2, 5000, size=2))
        low = math.ceil(d * k / (d + k)) if above else 1   # from the break-even rank up: LoRA stores as much or more
        cases.append((d, k, int(rng.integers(low, min(d, k) + 1))))
    return cases


SAVINGS_SHORTCUTS = [(counting, "lora_params", "calls lora_edu.counting.lora_params"),
                     (counting, "savings_ratio", "calls lora_edu.counting.savings_ratio"),
                     (counting, "lora_trainable_params", "calls lora_edu.counting.lora_trainable_params")]


def _regime(d: int, k: int, r: int) -> str:
    lora, full = r * (d + k), d * k
    return ("at the break-even rank: a tie" if lora == full else
            "above the break-even rank: LoRA stores more" if lora > full else "below the break-even rank")


def check_lora_savings(function) -> CheckResult:
    """Exercise 5 (build it): ``function(d, k, r)`` returns ``(lora, ratio)`` for one ``d × k`` matrix at rank
    ``r``: LoRA's parameter count ``r·(d + k)`` (an int) and the savings ratio ``d·k / (r·(d + k))`` (below 1 when
    LoRA stores more). Checked on ten shapes against `lora_edu.counting` (exact count, ratio within 1e-9),
    whose `lora_params` and `savings_ratio` it may not call."""
    name = "Exercise 5"
    if function is REVEAL:
        return revealed(name, "lora = r * (d + k); ratio = d * k / lora; return lora, ratio")
    if not callable(function):
        return failed(name, f"expected a function lora_savings(d, k, r), got {type(function).__name__}.")
    if is_stub(function):
        return not_answered(name)
    cases = _savings_cases()
    for number, (d, k, r) in enumerate(cases, start=1):
        case = f"case {number} (d = {d}, k = {k}, r = {r}, {_regime(d, k, r)})"
        got, forbidden, error = run_forbidding(function, SAVINGS_SHORTCUTS, d, k, r)
        if forbidden:
            return failed(name, f"{case}: your function {forbidden}, which the task forbids: compute it from d, k "
                                "and r.")
        if error is not None:
            return failed(name, f"{case} raised {type(error).__name__}: {error}")
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(is_number(v) for v in got):
            return failed(name, f"{case}: expected two numbers (lora, ratio), got {got!r:.60}.")
        lora, ratio = got
        expected_lora, expected_ratio = counting.lora_params(d, k, r), counting.savings_ratio(d, k, r)
        if lora != expected_lora:
            hint = next((h for value, h in [
                (d * k, "that is the dense matrix, d·k."),
                (r * d * k, "B is d×r and A is r×k: add their sizes."),
                (d + k, "that is one rank's worth: B and A have r columns and rows."),
                (2 * r * max(d, k), "d and k differ here: B is d×r, A is r×k."),
                (2 * r * min(d, k), "d and k differ here: B is d×r, A is r×k."),
            ] if value == lora and value != expected_lora), None)
            return failed(name, f"{case}: the count is {how_far(lora, expected_lora)}."
                                + (f" Hint: {hint}" if hint else ""))
        if not math.isclose(ratio, expected_ratio, rel_tol=1e-9):
            hint = next((h for value, h in [
                (1 / expected_ratio, "upside down: the dense count d·k goes on top."),
                (d / (2 * r), "d/(2r) holds only for a square matrix; here use d·k / (r·(d + k))."),
                ((d * k) // (r * (d + k)), "that is integer division (//): use / for the ratio."),
                (round(expected_ratio, 2), "do not round the ratio."),
            ] if math.isclose(ratio, value, rel_tol=1e-9)), None)
            return failed(name, f"{case}: the count is right, the ratio is {how_far(ratio, expected_ratio)}."
                                + (f" Hint: {hint}" if hint else ""))
    return passed(name, f"correct on all {len(cases)} shapes, including a break-even tie and ranks where LoRA "
                        "stores more.")


# --- Predict, then measure: AdamW's state ---

def measure_optimizer_state(model: nn.Module, target_modules, r: int) -> int:
    """Bytes AdamW holds after one step when LoRA (rank ``r``) adapts ``target_modules`` of a copy of ``model``
    (``model`` maps ``(batch, in_features)`` of its first layer): the measurement Exercise 6 predicts."""
    with torch.random.fork_rng(devices=[]):  # the learner's random numbers are not moved on
        adapted = add_lora(copy.deepcopy(model), LoraConfig(target_modules=target_modules, r=r, lora_alpha=2 * r))
        first = next(m for m in adapted.modules() if isinstance(m, nn.Linear))
        optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-3)
        adapted(torch.randn(4, first.in_features)).pow(2).mean().backward()
        optimizer.step()
    return optimizer_state_bytes(optimizer)


@exercise("Exercise 6")
def check_optimizer_state(name, answer, model: nn.Module, target_modules, r: int) -> CheckResult:
    """Exercise 6: a prediction of the bytes AdamW's state holds after one step of LoRA (rank ``r`` on
    ``target_modules``) on ``model``, in float32; the check measures it (`measure_optimizer_state`)."""
    expected = measure_optimizer_state(model, target_modules, r)
    number = as_numbers(answer)
    if number is not None and number.ndim == 0 and np.isfinite(number) and not float(number).is_integer():
        return failed(name, f"expected a whole number of bytes, got {type(answer).__name__} {answer!r:.60}.")
    result = check_value(name, answer, expected, what="bytes")
    with torch.random.fork_rng(devices=[]):
        adapted = add_lora(copy.deepcopy(model), LoraConfig(target_modules=target_modules, r=r))
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    n, tensors = sum(p.numel() for p in trainable), len(trainable)
    total = sum(p.numel() for p in model.parameters())
    return hint_for_mistake(result, answer, [
        (8 * n, "m and v are right; AdamW also keeps a step counter, one 4-byte number per trainable tensor."),
        (4 * n + 4 * tensors, "Adam keeps two moments per trainable number (m and v), 4 bytes each."),
        (16 * n + 4 * tensors, "that adds the weights and gradients; the optimizer's state is m, v and the step."),
        (16 * n, "that is weights, gradients and both moments; the optimizer's state is m, v and the step."),
        (2 * n, "count bytes, not numbers: each of m and v is 4 bytes per number (float32)."),
        (8 * total, "that is full fine-tuning's state: LoRA's optimizer sees only lora_A and lora_B."),
    ], rtol=1e-9)
