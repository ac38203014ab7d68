"""Self-checking exercises: compare a learner's answer with the expected one and say what is wrong.

Every notebook ends with exercises; each exercise's check (in ``lora_edu.exercises``) is built from
the three functions here. A check returns a `CheckResult` whose text is shown under the cell:

    ✅ Exercise 1: correct (40).
    ❌ Exercise 1: expected 40, got 42: off by 2 (5.00 % too high).
    ⏳ Exercise 1: not answered yet: replace the ... with your answer.

Explained in notebook 00_welcome (how to use the course).
"""
from __future__ import annotations

import functools
import inspect
import numbers
from dataclasses import dataclass

import numpy as np

NOT_ANSWERED = ...  # exercises start as `answer = ...`


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``passed`` (None while unanswered) and the message shown to the learner."""

    exercise: str
    passed: bool | None
    message: str

    def __bool__(self) -> bool:
        return bool(self.passed)

    def __repr__(self) -> str:
        mark = {True: "✅", False: "❌", None: "⏳"}[self.passed]
        return f"{mark} {self.exercise}: {self.message}"

    __str__ = __repr__


def not_answered(exercise: str) -> CheckResult:
    return CheckResult(exercise, None, "not answered yet: replace the ... with your answer.")


def passed(exercise: str, message: str = "correct.") -> CheckResult:
    return CheckResult(exercise, True, message)


def failed(exercise: str, message: str) -> CheckResult:
    return CheckResult(exercise, False, message)


def exercise(name: str, int_answer: str | None = None):
    """Turn ``check(name, answer, *inputs)`` into the check ``check(answer, *inputs)`` of exercise ``name``:
    while ``answer`` is ``...`` it says "not answered yet" without looking at the inputs. With ``int_answer``
    (what the int counts, e.g. "a rank") an answer that is not an int fails before ``check`` runs.

        @exercise("Exercise 1")
        def check_rank(name, answer, matrix): ...
    """
    def decorate(check):
        signature = inspect.signature(check)

        @functools.wraps(check)
        def checked(answer, *inputs, **options) -> CheckResult:
            if answer is NOT_ANSWERED:
                return not_answered(name)
            if int_answer and (isinstance(answer, bool) or not isinstance(answer, numbers.Integral)):
                return failed(name, f"expected an int ({int_answer}), got {type(answer).__name__} {answer!r}.")
            return check(name, answer, *inputs, **options)

        checked.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
        return checked
    return decorate


def _as_array(value) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)  # a tensor, any device


def as_numbers(value) -> np.ndarray | None:
    """``value`` (a number, a list or array of numbers, a tensor on any device) as a float array; None for
    anything else: strings, None, booleans and arrays of them are not numbers."""
    if isinstance(value, (str, bytes, bool, type(None))):
        return None
    try:
        array = _as_array(value)
    except (TypeError, ValueError, RuntimeError):  # ragged lists, tensors NumPy cannot hold
        return None
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        return None
    return array.astype(float)


def _fmt(x: float, integral: bool = False) -> str:
    return f"{x:,.0f}" if integral or (float(x).is_integer() and abs(x) < 1e15) else f"{x:,.6g}"


def _relative(off: float, expected: float) -> str:
    if expected == 0:
        return ""
    rel = abs(off) / abs(expected)
    shown = f"{rel:.2%}" if rel >= 1e-4 else f"{rel:.1e} relative"
    return f" ({shown} too {'high' if off > 0 else 'low'})"


def check_value(exercise: str, got, expected, *, rtol: float = 1e-6, atol: float = 0.0,
                what: str = "") -> CheckResult:
    """Compare numbers or arrays: equal within ``atol + rtol * |expected|``, element by element.

    Integer answers (counts, bytes) must match exactly. Strings, None and booleans are not numbers.
    A wrong scalar is reported with the difference and the relative error; a wrong array with its
    shape, or with the largest difference and where it is.
    """
    if got is NOT_ANSWERED:
        return not_answered(exercise)
    label = f"{what} " if what else ""
    for_what = f" for {what}" if what else ""
    got_arr = as_numbers(got)
    if got_arr is None:
        return failed(exercise, f"expected a number or an array of numbers{for_what}, "
                                f"got {type(got).__name__}: {got!r:.60}")
    integral = np.issubdtype(_as_array(expected).dtype, np.integer)
    exp_arr = as_numbers(expected)
    if got_arr.shape != exp_arr.shape:
        return failed(exercise, f"{label}has shape {tuple(got_arr.shape)}, expected {tuple(exp_arr.shape)}.")
    if not np.all(np.isfinite(got_arr)):
        return failed(exercise, f"{label}contains NaN or infinity.")
    diff = np.abs(got_arr - exp_arr)
    tolerance = np.zeros_like(exp_arr) if integral else atol + rtol * np.abs(exp_arr)
    if np.all(diff <= tolerance):
        shown = _fmt(float(exp_arr), integral) if exp_arr.ndim == 0 else f"shape {tuple(exp_arr.shape)}"
        return passed(exercise, f"correct ({label}{shown}).")
    if exp_arr.ndim == 0:
        g, e = float(got_arr), float(exp_arr)
        off = g - e
        return failed(exercise, f"{label}expected {_fmt(e, integral)}, got {_fmt(g)}: "
                                f"off by {_fmt(abs(off))}{_relative(off, e)}.")
    worst = np.unravel_index(int(np.argmax(diff - tolerance)), diff.shape)
    n_bad = int(np.sum(diff > tolerance))
    return failed(exercise, f"{label}{n_bad} of {diff.size} entries are off; the largest difference is "
                            f"{_fmt(float(diff[worst]))} at index {tuple(int(i) for i in worst)} "
                            f"(expected {_fmt(float(exp_arr[worst]))}, got {_fmt(float(got_arr[worst]))}).")


def is_number(value) -> bool:
    """A real number (int, float or a NumPy scalar), not a bool: an answer hints can be computed for."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def with_hint(result: CheckResult, hint: str) -> CheckResult:
    """``result``, with `` Hint: {hint}`` added to its message when it failed."""
    return result if result.passed is not False else failed(result.exercise, f"{result.message} Hint: {hint}")


def hint_for_mistake(result: CheckResult, answer, mistakes, rtol: float = 1e-6, atol: float = 1e-12,
                     otherwise: str | None = None) -> CheckResult:
    """``result`` with the hint of the first mistake a wrong numeric ``answer`` reproduces: ``mistakes`` are
    ``(value, hint)`` pairs, matched within ``atol + rtol * |value|`` (entry by entry for arrays of the same
    shape), or ``(value, hint, rtol)`` for a mistake matched more loosely (a value typed in rounded).
    ``otherwise`` is the hint for a wrong number that reproduces none of them."""
    got = as_numbers(answer)
    if result.passed is not False or got is None:
        return result
    for value, hint, *loose in mistakes:
        candidate = as_numbers(value)
        if got.shape == candidate.shape and np.allclose(got, candidate, rtol=loose[0] if loose else rtol, atol=atol):
            return with_hint(result, hint)
    return with_hint(result, otherwise) if otherwise else result


def check_int(exercise: str, answer: int, expected: int, correct: str, too_low: str, too_high: str) -> CheckResult:
    """Pass with ``correct`` when the int ``answer`` equals ``expected``; else fail with ``too_low`` or ``too_high``."""
    if answer == expected:
        return passed(exercise, correct)
    return failed(exercise, too_low if answer < expected else too_high)


def check_true(exercise: str, condition: bool, failure: str, success: str = "correct.") -> CheckResult:
    """Pass when ``condition`` holds; otherwise report ``failure`` (say what is wrong and by how much)."""
    return passed(exercise, success) if condition else failed(exercise, failure)
