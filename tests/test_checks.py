"""The exercise-check core (lora_edu.checks) and the warm-up checks of notebook 00."""
import inspect

import numpy as np
import pytest
import torch

from lora_edu.checks import REVEAL, CheckResult, check_true, check_value, exercise, how_far, reveal
from lora_edu.exercises import nb00


def test_unanswered_is_neither_pass_nor_fail():
    result = check_value("Exercise 1", ..., 40)
    assert result.passed is None and not result
    assert repr(result) == "⏳ Exercise 1: not answered yet: replace the ... with your answer."


def test_right_scalar_passes_and_says_so():
    result = check_value("Exercise 1", 40, 40, what="numbers stored")
    assert result.passed is True
    assert str(result) == "✅ Exercise 1: correct (numbers stored 40)."


def test_wrong_scalar_says_the_direction_and_a_coarse_size_only():
    result = check_value("Exercise 1", 42, 40)
    assert result.passed is False
    assert str(result) == "❌ Exercise 1: too high (within 10 %)."
    assert str(check_value("E", 30, 40, what="bytes")) == "❌ E: bytes: too low (off by more than 10 %)."


@pytest.mark.parametrize("got, expected, said", [
    (40.2, 40, "too high (within 1 %)"), (39, 40, "too low (within 10 %)"),
    (50, 40, "too high (off by more than 10 %)"),
    (80, 40, "too high (off by about a factor of 2)"), (60, 40, "too high (off by about a factor of 2)"),
    (4, 40, "too low (off by about a factor of 10)"), (0.13, 40, "too low (off by about a factor of 300)"),
    (1e6, 40, "too high (off by more than a factor of 1000)"), (0, 40, "zero, but it should not be"),
    (-40, 40, "wrong sign"), (-0.8, -0.4, "too low (off by about a factor of 2)"), (1, 0, "too high"),
])
def test_how_far(got, expected, said):
    assert how_far(got, expected) == said


def test_reveal_shows_the_expected_value_on_request_only():
    check = exercise("Exercise 9")(lambda name, answer, x: check_value(name, answer, 2 * x, what="twice x"))
    shown = reveal(check, 20)
    assert shown.passed is None and str(shown) == "⏳ Exercise 9: shown on request: the answer is 40 (twice x)."
    assert "40" not in str(check(41, 20)) and "40" not in str(check(0, 20))
    assert "[[0. 1.]" in check_value("E", REVEAL, np.arange(2.0).reshape(1, 2)).message
    assert "answer is 100" in str(reveal(nb00.check_dense_count))
    assert "LORA_EDU_DEVICE" in str(reveal(nb00.check_device_variable))


def test_tolerance_is_relative_and_absolute():
    assert check_value("E", 1.0 + 1e-9, 1.0).passed
    assert not check_value("E", 1.001, 1.0).passed
    assert check_value("E", 1.001, 1.0, rtol=1e-2).passed
    assert check_value("E", 1e-9, 0.0, atol=1e-8).passed


def test_arrays_report_shape_and_worst_entry():
    expected = np.arange(6.0).reshape(2, 3)
    assert check_value("E", torch.tensor(expected), expected).passed
    wrong_shape = check_value("E", expected.T, expected)
    assert "has shape (3, 2), expected (2, 3)" in str(wrong_shape)
    off = expected.copy()
    off[1, 2] += 0.5
    message = str(check_value("E", off, expected, what="ΔW"))
    assert message == "❌ E: ΔW: 1 of 6 entries are off; the worst is at index (1, 2): too high (within 10 %)."
    assert "5.5" not in message and "0.5" not in message


@pytest.mark.parametrize("answer", ["forty", "40", None, True, [1, "a"], b"40"])
def test_non_numbers_fail_clearly(answer):
    result = check_value("E", answer, 40)
    assert result.passed is False and "expected a number" in str(result)


def test_nan_fails_clearly():
    assert "NaN" in str(check_value("E", float("nan"), 40.0))


def test_integer_answers_must_be_exact_and_read_with_separators():
    result = check_value("E", 1_872_000_001, 1_872_000_000, what="bytes")
    assert result.passed is False
    assert str(result) == "❌ E: bytes: too high (within 1 %)."
    assert check_value("E", 1_872_000_000.0, 1_872_000_000).passed


def test_check_true():
    assert check_true("E", True, "no").passed
    result = check_true("E", False, "off by 3")
    assert isinstance(result, CheckResult) and str(result) == "❌ E: off by 3"


@pytest.mark.parametrize("check, right, wrongs", [
    (nb00.check_dense_count, 100, [10, 20, 40]),
    (nb00.check_factored_count, 40, [100, 20, 4]),
    (nb00.check_device_variable, "LORA_EDU_DEVICE", ["CUDA_VISIBLE_DEVICES", 3]),
])
def test_welcome_exercises(check, right, wrongs):
    assert check(...).passed is None
    assert check(right).passed is True
    for wrong in wrongs:
        result = check(wrong)
        assert result.passed is False and len(str(result)) > 20


def test_exercise_decorator_answers_unanswered_checks_and_hides_its_name_argument():
    @exercise("Exercise 9")
    def check_double(name, answer, x: int) -> CheckResult:
        """Twice ``x``."""
        return check_value(name, answer, 2 * x)

    assert list(inspect.signature(check_double).parameters) == ["answer", "x"]
    assert check_double.__name__ == "check_double" and check_double.__doc__ == "Twice ``x``."
    assert str(check_double(..., "not even looked at")) == ("⏳ Exercise 9: not answered yet: replace the ... "
                                                             "with your answer.")
    assert check_double(6, 3).passed and check_double(answer=7, x=3).passed is False
    counted = exercise("Exercise 8", int_answer="a rank")(lambda name, answer: check_value(name, answer, 2))
    assert counted(2) and str(counted(2.0)) == "❌ Exercise 8: expected an int (a rank), got float 2.0."
