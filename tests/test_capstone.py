"""lora_edu.capstone: the run is seeded and leaves the shipped model alone; grading and bad input."""
import pytest
import torch
from peft import LoraConfig

from lora_edu import capstone


def test_run_is_repeatable_and_does_not_move_the_learners_random_numbers():
    plan = dict(capstone.reference_plan(), steps=3)
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    first = capstone.run(plan)
    assert torch.rand(1) == before
    second = capstone.run(plan)
    assert first.loss == second.loss and first.trainable == 21_888
    base, *_ , base_loss = capstone._base_and_data()
    assert capstone.run(dict(plan, steps=0)).loss == pytest.approx(base_loss)  # the cached base is not trained


def test_reference_plan_gains_the_margin_within_budget():
    result = capstone.run(capstone.reference_plan())
    assert capstone.over_budget(result) == []
    assert result.gain >= capstone.MARGIN
    assert capstone.grade(result) == (True, [])


@pytest.mark.parametrize("plan, error, words", [
    ([], TypeError, "plan must be a dict"),
    ({"config": LoraConfig(), "steps": 1}, ValueError, "missing ['lr']"),
    ({"config": "q_proj", "steps": 1, "lr": 1e-3}, TypeError, "plan['config'] must be a peft.LoraConfig"),
    ({"config": LoraConfig(), "steps": -1, "lr": 1e-3}, ValueError, "plan['steps']"),
    ({"config": LoraConfig(), "steps": 1, "lr": -1.0}, ValueError, "plan['lr']"),
])
def test_bad_plans_are_refused(plan, error, words):
    with pytest.raises(error) as info:
        capstone.check_plan(plan)
    assert words in str(info.value)


def test_grade_reports_every_broken_limit():
    run = capstone.CapstoneRun(trainable=90_000, total=430_000, targets=("q_proj",), scaling=2.0, steps=50,
                               lr=1e-3, memory_bytes=3 * 2 ** 20, base_loss=2.0, loss=1.0)
    ok, reasons = capstone.grade(run)
    assert not ok and len(reasons) == 3
    good = capstone.CapstoneRun(20_000, 360_000, ("q_proj",), 2.0, 40, 5e-3, 2 ** 20, 2.0, 2.0)
    assert capstone.grade(good)[1] == [capstone.grade(good)[1][0]] and "nothing" in capstone.grade(good)[1][0]


def test_run_refuses_a_bad_train_flag_before_building_anything():
    with pytest.raises(TypeError) as info:
        capstone.run(capstone.reference_plan(), train="yes")
    assert "train must be True or False" in str(info.value)


def test_counting_only_run_does_not_train():
    counted = capstone.run(capstone.reference_plan(), train=False)
    assert counted.trainable == 21_888 and counted.loss == counted.base_loss == capstone.base_loss()
    assert capstone.over_budget(counted) == []
