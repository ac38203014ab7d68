"""Self-checking exercises: compare a learner's answer with the expected one and say what is wrong.

Every notebook ends with exercises; each exercise's check (in ``lora_edu.exercises``) is built from
the functions here. A check returns a `CheckResult` whose text is shown under the cell. A wrong answer
gets its direction, a coarse size and, where a common slip explains it, a hint; never the expected value,
the exact offset or the exact relative error:

    ✅ Exercise 1: correct (40).
    ❌ Exercise 1: too high (within 10 %).
    ❌ Exercise 3: bytes: too low (off by about a factor of 4). Hint: that is the weights only; add gradients ...
    ❌ Exercise 3: ΔW: 15 of 15 entries are off; the worst is at index (2, 4): too high (within 10 %).
    ⏳ Exercise 1: not answered yet: replace the ... with your answer.

The value is shown only on request, for the learner who gives up: ``reveal(check, *inputs)`` runs the
check without an answer and says what the answer is (the notebooks' hidden solutions say how):

    >>> reveal(lora_edu.exercises.nb00.check_dense_count)
    ⏳ Exercise 1: shown on request: the answer is 100 (numbers stored).

Explained in notebook 00_welcome (how to use the course).
"""
from __future__ import annotations

import functools
import inspect
import numbers
from dataclasses import dataclass

import numpy as np

NOT_ANSWERED = ...  # exercises start as `answer = ...`


class _Reveal:
    def __repr__(self) -> str:
        return "REVEAL"


REVEAL = _Reveal()  # the answer `reveal` passes to a check to ask for the expected value


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
    ``check`` answers ``answer=REVEAL`` (sent by `reveal`) with `revealed`.

        @exercise("Exercise 1")
        def check_rank(name, answer, matrix): ...
    """
    def decorate(check):
        signature = inspect.signature(check)

        @functools.wraps(check)
        def checked(answer, *inputs, **options) -> CheckResult:
            if answer is NOT_ANSWERED:
                return not_answered(name)
            not_int = isinstance(answer, bool) or not isinstance(answer, numbers.Integral)
            if int_answer and not_int and answer is not REVEAL:
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


def how_far(got: float, expected: float) -> str:
    """The direction and a coarse size of a wrong number, never the expected value, the offset or the
    relative error: "too high (within 1 %)", "too low (off by about a factor of 3)", "wrong sign"."""
    if got == 0 and expected != 0:
        return "zero, but it should not be"
    if got * expected < 0:
        return "wrong sign"
    direction = "too high" if got > expected else "too low"
    if expected == 0:
        return direction
    relative = abs(got - expected) / abs(expected)
    factor = max(got / expected, expected / got)
    if relative <= 0.01:
        return f"{direction} (within 1 %)"
    if relative <= 0.1:
        return f"{direction} (within 10 %)"
    if factor < 1.5:
        return f"{direction} (off by more than 10 %)"
    if factor > 1000:
        return f"{direction} (off by more than a factor of 1000)"
    return f"{direction} (off by about a factor of {float(f'{factor:.1g}'):g})"


def reveal(check, *inputs, **options) -> CheckResult:
    """The answer of ``check`` for these inputs, for the learner who gives up (a check never shows it otherwise):
    ``reveal(nb03.check_break_even, d=768, k=3072)``. The notebooks' hidden solutions say how to get it."""
    return check(REVEAL, *inputs, **options)


def revealed(exercise: str, answer: str) -> CheckResult:
    """What a check returns to `reveal`: its ``answer``, neither passed nor failed."""
    return CheckResult(exercise, None, f"shown on request: the answer is {answer}.")


def _show(array: np.ndarray, integral: bool) -> str:
    if array.ndim == 0:
        return _fmt(float(array), integral)
    return np.array2string(array, precision=4, suppress_small=True)


def check_value(exercise: str, got, expected, *, rtol: float = 1e-6, atol: float = 0.0,
                what: str = "") -> CheckResult:
    """Compare numbers or arrays: equal within ``atol + rtol * |expected|``, element by element.

    Integer answers (counts, bytes) must match exactly. Strings, None and booleans are not numbers.
    A wrong scalar is reported with its direction and a coarse size (`how_far`); a wrong array with its
    shape, or with how many entries are off and where the worst one is. ``got=REVEAL`` shows ``expected``.
    """
    if got is NOT_ANSWERED:
        return not_answered(exercise)
    label = f"{what}: " if what else ""
    for_what = f" for {what}" if what else ""
    integral = np.issubdtype(_as_array(expected).dtype, np.integer)
    exp_arr = as_numbers(expected)
    if got is REVEAL:
        return revealed(exercise, f"{_show(exp_arr, integral)}{f' ({what})' if what else ''}")
    got_arr = as_numbers(got)
    if got_arr is None:
        return failed(exercise, f"expected a number or an array of numbers{for_what}, "
                                f"got {type(got).__name__}: {got!r:.60}")
    if got_arr.shape != exp_arr.shape:
        return failed(exercise, f"{label}has shape {tuple(got_arr.shape)}, expected {tuple(exp_arr.shape)}.")
    if not np.all(np.isfinite(got_arr)):
        return failed(exercise, f"{label}contains NaN or infinity.")
    diff = np.abs(got_arr - exp_arr)
    tolerance = np.zeros_like(exp_arr) if integral else atol + rtol * np.abs(exp_arr)
    if np.all(diff <= tolerance):
        shown = _fmt(float(exp_arr), integral) if exp_arr.ndim == 0 else f"shape {tuple(exp_arr.shape)}"
        return passed(exercise, f"correct ({what + ' ' if what else ''}{shown}).")
    if exp_arr.ndim == 0:
        return failed(exercise, f"{label}{how_far(float(got_arr), float(exp_arr))}.")
    worst = np.unravel_index(int(np.argmax(diff - tolerance)), diff.shape)
    n_bad = int(np.sum(diff > tolerance))
    return failed(exercise, f"{label}{n_bad} of {diff.size} entries are off; the worst is at index "
                            f"{tuple(int(i) for i in worst)}: {how_far(got_arr[worst], exp_arr[worst])}.")


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
    """Pass when ``condition`` holds; otherwise report ``failure`` (what is wrong, its direction and a coarse size)."""
    return passed(exercise, success) if condition else failed(exercise, failure)
