"""Checks for the warm-up exercises of notebook 00_welcome: they show how every exercise in the course works."""
from __future__ import annotations

from ..checks import REVEAL, CheckResult, check_true, check_value, exercise, failed, revealed
from ..environment import DEVICE_ENV_VAR


def check_dense_count(answer) -> CheckResult:
    """Exercise 1: how many numbers a dense 10×10 matrix stores."""
    return check_value("Exercise 1", answer, 10 * 10, what="numbers stored")


def check_factored_count(answer) -> CheckResult:
    """Exercise 2: how many numbers a 10×2 factor and a 2×10 factor store together."""
    return check_value("Exercise 2", answer, 10 * 2 + 2 * 10, what="numbers stored")


@exercise("Exercise 3")
def check_device_variable(name, answer) -> CheckResult:
    """Exercise 3: the name of the environment variable that forces a device."""
    if answer is REVEAL:
        return revealed(name, repr(DEVICE_ENV_VAR))
    if not isinstance(answer, str):
        return failed(name, f"expected the variable's name as a string, got {type(answer).__name__}")
    return check_true(name, answer.strip() == DEVICE_ENV_VAR,
                      f"{answer!r} is not it: lora_edu reads one variable, named in the section "
                      f"'Running on a CPU or a GPU'.", success=f"correct ({DEVICE_ENV_VAR}).")
