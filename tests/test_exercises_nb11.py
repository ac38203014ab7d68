"""The capstone check of notebook 11 (lora_edu.exercises.nb11.check_capstone): the reference solution passes; an
untrained run and badly configured runs fail with the right diagnosis and never show the reference's loss."""
import pytest
from peft import LoraConfig

from lora_edu import capstone
from lora_edu.checks import reveal
from lora_edu.exercises import nb11


@pytest.fixture(scope="module")
def reference_loss():
    return capstone.run(capstone.reference_plan()).loss


def test_reference_solution_passes():
    result = nb11.check_capstone(capstone.reference_plan)
    assert result.passed is True, result.message


def test_stub_is_not_answered():
    def capstone_plan():
        ...
    assert nb11.check_capstone(capstone_plan).passed is None


@pytest.mark.parametrize("plan, diagnosis", [
    (lambda: dict(capstone.reference_plan(), steps=0), "too few steps"),
    (lambda: dict(capstone.reference_plan(), steps=5), "too few steps"),
    (lambda: {"config": LoraConfig(r=16, lora_alpha=1, target_modules=["q_proj", "v_proj"]), "steps": 40,
              "lr": 5e-3}, "α/r too small"),
    (lambda: {"config": LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"]), "steps": 40, "lr": 5e-3},
     "wrong targets"),
    (lambda: dict(capstone.reference_plan(), lr=1e-5), "learning rate too small"),
    (lambda: {"config": LoraConfig(r=16, lora_alpha=32, target_modules=list(capstone.PROJECTIONS)), "steps": 40,
              "lr": 5e-3}, "over the budget of 25,000"),
    (lambda: dict(capstone.reference_plan(), steps=60), "steps is over the budget"),
])
def test_bad_runs_fail_with_their_diagnosis(plan, diagnosis, reference_loss):
    result = nb11.check_capstone(plan)
    assert result.passed is False, result.message
    assert diagnosis in result.message, result.message
    assert f"{reference_loss:.3f}" not in result.message and f"{reference_loss:.2f}" not in result.message


def test_refused_plans_and_raising_functions_fail_clearly():
    assert "plan was refused" in nb11.check_capstone(lambda: {"config": None, "steps": 1, "lr": 1e-3}).message
    assert "raised ZeroDivisionError" in nb11.check_capstone(lambda: 1 / 0).message
    assert nb11.check_capstone(3).passed is False


def test_reveal_shows_the_reference():
    assert "lora_alpha=8" in reveal(nb11.check_capstone).message
