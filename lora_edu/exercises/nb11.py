"""Checks for the exercises of notebook 11_choosing_a_strategy: the capstone (a PEFT plan for the tiny Llama on a
new domain under a budget, trained and graded on held-out text by `lora_edu.capstone`) and the planner's storage
arithmetic."""
from __future__ import annotations

from .. import capstone
from ..checks import REVEAL, CheckResult, check_value, exercise, failed, hint_for_mistake, not_answered, passed, revealed
from ..counting import checkpoint_bytes, count_model_params, lora_trainable_params
from ..planner import LORA_R, LORA_TARGETS, MODELS


def check_capstone(function) -> CheckResult:
    """Capstone (build it): ``function()`` returns a plan ``{"config": peft.LoraConfig, "steps": int, "lr":
    float}``. The check trains it with `lora_edu.capstone.run` and passes it when it keeps to
    `capstone.BUDGET` and gains at least `capstone.MARGIN` nats per character over the base model on held-out
    ``"reference"`` text; a miss is explained by `capstone.grade` (never with the reference's loss)."""
    name = "Capstone"
    if function is REVEAL:
        return revealed(name, "{'config': LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'k_proj', "
                              "'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']), 'steps': 40, 'lr': 5e-3}")
    if not callable(function):
        return failed(name, f"expected a function capstone_plan(), got {type(function).__name__}.")
    try:
        plan = function()
    except Exception as error:  # the learner's code: report whatever it raised
        return failed(name, f"capstone_plan() raised {type(error).__name__}: {error}")
    if plan is None or plan is Ellipsis:
        return not_answered(name)
    try:
        counted = capstone.run(plan, train=False)  # over budget: say so before spending any steps
    except (TypeError, ValueError) as error:
        return failed(name, f"the plan was refused: {error}")
    problems = capstone.over_budget(counted)
    if problems:
        return failed(name, "over budget: " + " ".join(problems))
    result = capstone.run(plan)
    ok, reasons = capstone.grade(result)
    measured = (f"{result.trainable:,} trainable parameters, {result.steps} steps, held-out loss "
                f"{result.loss:.3f} against the base model's {result.base_loss:.3f} nats/char")
    if ok:
        return passed(name, f"passed: {measured}, within the budget.")
    return failed(name, f"not yet ({measured}; the bar is a gain of {capstone.MARGIN} nats/char). "
                        + " ".join(reasons))


@exercise("Exercise 2", int_answer="a number of bytes")
def check_storage_bytes(name, answer, model: str = "7B", n_tasks: int = 10) -> CheckResult:
    """Exercise 2: bytes to store ``n_tasks`` LoRA fine-tunes (r = 8 on q and v) of Llama-2 ``model`` in bf16:
    one base plus one adapter per task, ``2 (total + n_tasks · adapter)`` (notebooks 03 and 07)."""
    shape = MODELS[model]
    total, adapter = count_model_params(shape), lora_trainable_params(shape, LORA_R, LORA_TARGETS)
    expected = checkpoint_bytes(total) + n_tasks * checkpoint_bytes(adapter)
    if answer is REVEAL:
        return revealed(name, f"{expected:,} bytes")
    result = check_value(name, answer, expected, rtol=1e-3, what="bytes")
    return hint_for_mistake(result, answer, [
        (n_tasks * checkpoint_bytes(total), "that is one full copy per task: LoRA shares one base."),
        (n_tasks * checkpoint_bytes(total + adapter), "LoRA stores the base once, not once per task."),
        (n_tasks * checkpoint_bytes(adapter), "the adapters alone: the base has to be stored once too."),
        (2 * expected, "that is fp32 (4 bytes a number); bf16 takes 2."),
        (checkpoint_bytes(total) + checkpoint_bytes(adapter), "that is one task; count one adapter per task."),
    ], rtol=1e-3, otherwise="one bf16 base (2 bytes per parameter) plus n_tasks adapters of r (d_in + d_out) per "
                            "adapted layer.")


@exercise("Exercise 3", int_answer="a number of parameters")
def check_capstone_trainable(name, answer, r: int = 4) -> CheckResult:
    """Exercise 3: trainable parameters of LoRA at rank ``r`` on all seven projections of every block of the
    tiny Llama (the capstone's reference targets): ``3 · r · Σ (in + out)`` (notebook 08)."""
    from .nb08 import lora_count

    expected = lora_count(r, capstone.PROJECTIONS)
    if answer is REVEAL:
        return revealed(name, f"{expected:,} (trainable parameters)")
    result = check_value(name, answer, expected, what="trainable parameters")
    return hint_for_mistake(result, answer, [
        (expected // 3, "that is one block; the tiny Llama has three."),
        (lora_count(r, ("q_proj", "k_proj", "v_proj", "o_proj")), "attention only; the MLP's three count too."),
        (lora_count(r, ("q_proj", "v_proj")), "q and v only; the plan adapts all seven projections."),
        (3 * 7 * 96 * 96 * 2 * r // 96, "the MLP's projections are 96 × 256 or 256 × 96, not 96 × 96."),
    ], otherwise="per projection r (in + out): q, k, v, o are 96 → 96; gate and up 96 → 256; down 256 → 96; "
                 "three blocks.")
