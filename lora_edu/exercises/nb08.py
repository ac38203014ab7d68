"""Checks for the exercises of notebook 08_lora_with_peft: a `peft.LoraConfig` built for a parameter budget (checked
by counting on the tiny Llama), the trainable parameters of ``"all-linear"``, the weight a plain mean of two unequal
slices' gradients gives the small slice (the data-parallel experiment), and the spacing of bf16 numbers that decides
what a merge keeps."""
from __future__ import annotations

import copy
import functools
import warnings

import torch

from ..checks import (REVEAL, CheckResult, check_value, exercise, failed, hint_for_mistake, how_far, not_answered,
                      passed, revealed)
from ..hf_model import TINY_LLAMA_CONFIG, make_tiny_llama

BUDGET_TARGETS = ("q_proj", "v_proj")
BUDGETS = (4_000, 12_000, 23_040, 50_000)  # 23,040 is exactly one rank's worth times 20: the boundary case


def _linear_shapes() -> dict[str, tuple[int, int]]:
    """``{projection: (in_features, out_features)}`` of one block of the tiny Llama."""
    c = TINY_LLAMA_CONFIG
    d, ff, kv = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"] * c[
        "num_key_value_heads"]
    return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
            "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}


def lora_count(r: int, targets) -> int:
    """Trainable LoRA parameters on the tiny Llama: ``r (in + out)`` per adapted projection, in every block."""
    shapes = _linear_shapes()
    return TINY_LLAMA_CONFIG["num_hidden_layers"] * sum(r * sum(shapes[t]) for t in targets)


@functools.lru_cache(maxsize=1)
def _base():
    return make_tiny_llama(seed=0)


def _count_with(config) -> tuple[int, list[str], int]:
    """Build the tiny Llama with the learner's config and count: (trainable parameters, adapted module kinds,
    the number of blocks in which every kind of `BUDGET_TARGETS` is adapted)."""
    from peft import get_peft_model

    state = torch.random.get_rng_state()
    try:
        with warnings.catch_warnings():  # what PEFT says about the config is not the check's message
            warnings.simplefilter("ignore")
            model = get_peft_model(copy.deepcopy(_base()), copy.deepcopy(config))
    finally:
        torch.random.set_rng_state(state)  # the learner's random numbers are not moved on
    trainable, _ = model.get_nb_trainable_parameters()
    names = set(model.targeted_module_names)
    kinds = sorted({name.rsplit(".", 1)[-1] for name in names})
    blocks = sum(all(f"model.layers.{i}.self_attn.{t}" in names for t in BUDGET_TARGETS)
                 for i in range(TINY_LLAMA_CONFIG["num_hidden_layers"]))
    return trainable, kinds, blocks


def check_budget_config(function) -> CheckResult:
    """Exercise 1 (build it): ``function(budget)`` returns a ``peft.LoraConfig`` that adapts ``q_proj`` and
    ``v_proj`` of every block of the tiny Llama with the largest rank whose trainable parameters stay within
    ``budget``, and ``lora_alpha = 2 r``. The check builds the model with each config and counts, for the
    budgets in `BUDGETS`."""
    name = "Exercise 1"
    if function is REVEAL:
        return revealed(name, "r = budget // (3 blocks × 2 projections × (96 + 96)) = budget // 1152, and "
                              "LoraConfig(r=r, lora_alpha=2 * r, target_modules=['q_proj', 'v_proj'])")
    if not callable(function):
        return failed(name, f"expected a function budget_config(budget), got {type(function).__name__}.")
    from peft import LoraConfig

    for number, budget in enumerate(BUDGETS, start=1):
        try:
            config = function(budget)
        except Exception as error:  # the learner's code: report whatever it raised
            return failed(name, f"case {number} (budget {budget:,}) raised {type(error).__name__}: {error}")
        if config is None and number == 1:
            return not_answered(name)
        if not isinstance(config, LoraConfig):
            return failed(name, f"case {number} (budget {budget:,}): expected a peft.LoraConfig, got "
                                f"{type(config).__name__}.")
        try:
            count, kinds, blocks = _count_with(config)
        except Exception as error:  # PEFT refused the config
            return failed(name, f"case {number} (budget {budget:,}): get_peft_model refused the config: "
                                f"{type(error).__name__}: {error}")
        if kinds != sorted(BUDGET_TARGETS):
            return failed(name, f"case {number} (budget {budget:,}): the config adapts {kinds}; adapt exactly "
                                f"{list(BUDGET_TARGETS)} (in every block).")
        if blocks < TINY_LLAMA_CONFIG["num_hidden_layers"]:
            return failed(name, f"case {number} (budget {budget:,}): the config adapts q_proj and v_proj in only "
                                f"{blocks} of the {TINY_LLAMA_CONFIG['num_hidden_layers']} blocks; the task asks "
                                "for every block. A regular expression must match every block's names (or give "
                                "the list ['q_proj', 'v_proj'], which matches them all).")
        if config.lora_alpha != 2 * config.r:
            return failed(name, f"case {number} (budget {budget:,}): lora_alpha is {config.lora_alpha} with "
                                f"r = {config.r}; a common rule of thumb, the one the task asks for, is lora_alpha = 2·r.")
        if count > budget:
            return failed(name, f"case {number} (budget {budget:,}): {count:,} trainable parameters is over the "
                                f"budget, {how_far(count, budget)}. Count r (in + out) per adapted layer, for "
                                "every block.")
        if lora_count(config.r + 1, BUDGET_TARGETS) <= budget:
            return failed(name, f"case {number} (budget {budget:,}): {count:,} trainable parameters fits, but a "
                                f"larger rank would fit too ({count / budget:.0%} of the budget used): take the "
                                "largest r that fits.")
    return passed(name, f"correct: every config fits its budget with the largest rank, in all {len(BUDGETS)} cases.")


@exercise("Exercise 2", int_answer="a number of parameters")
def check_all_linear_count(name, answer, r: int) -> CheckResult:
    """Exercise 2: trainable parameters of ``target_modules="all-linear"`` at rank ``r`` on the tiny Llama:
    every projection of every block (``lm_head``, the output layer, is left out), ``r (in + out)`` each."""
    every = tuple(_linear_shapes())
    expected = lora_count(r, every)
    if answer is REVEAL:
        return revealed(name, f"{expected:,} (trainable parameters)")
    vocab, d = TINY_LLAMA_CONFIG["vocab_size"], TINY_LLAMA_CONFIG["hidden_size"]
    result = check_value(name, answer, expected, what="trainable parameters")
    return hint_for_mistake(result, answer, [
        (expected + r * (d + vocab), "that includes lm_head; \"all-linear\" leaves the output layer out."),
        (lora_count(r, ("q_proj", "k_proj", "v_proj", "o_proj")), "that is the attention projections only; "
                                                                  "\"all-linear\" takes the MLP's too."),
        (lora_count(r, ("gate_proj", "up_proj", "down_proj")), "that is the MLP only; the attention projections "
                                                               "count too."),
        (expected // TINY_LLAMA_CONFIG["num_hidden_layers"], "that is one block; the model has three."),
        (lora_count(r, ("q_proj",)) * 7, "the MLP's projections are 96 × 256 or 256 × 96, not 96 × 96."),
    ], otherwise="per projection r (in + out): q, k, v, o are 96 → 96; gate and up 96 → 256; down 256 → 96.")


@exercise("Exercise 3")
def check_small_slice_weight(name, answer, batch: int = 16, small: int = 4) -> CheckResult:
    """Exercise 3: a batch of ``batch`` windows split into two slices, ``batch - small`` and ``small`` windows. The
    loss is a mean over windows, so the whole batch's gradient is ``((batch - small) g_big + small g_small) /
    batch``; a plain mean of the two slices' gradients, ``(g_big + g_small) / 2``, gives each window of the small
    slice the weight ``1 / (2 small)`` instead of ``1 / batch``. The answer: the factor between the two,
    ``batch / (2 small)``."""
    if not 0 < small < batch:
        raise ValueError(f"small must be between 0 and batch={batch} (exclusive), got {small}")
    expected = batch / (2 * small)
    large = batch - small
    result = check_value(name, answer, expected, rtol=1e-3, what="the factor")
    return hint_for_mistake(result, answer, [
        (1 / expected, "inverted: the plain mean gives the small slice *more* weight than its share of the windows."),
        (batch / small, "a plain mean of two slices gives each slice one half of the weight, and that half is "
                        "shared by the slice's windows."),
        (1.0, "a plain mean is right only when the slices are equal; these are not."),
        (batch / (2 * large), "that is the factor of the large slice's windows; the question asks for the small "
                              "slice's."),
    ], rtol=1e-3, otherwise="compare the weight one window of the small slice gets in the plain mean of the "
                            "two slices' gradients with the weight it gets in the whole batch's mean.")


def bf16_gap(value: float) -> float:
    """The gap between bf16(``value``) and the next larger bfloat16 number: ``2^(e - 7)`` for ``value`` in
    ``[2^e, 2^(e+1))`` (bf16 keeps 7 fraction bits: 8 significant bits with the leading 1). Notebook 08."""
    v = torch.tensor(value, dtype=torch.bfloat16)
    return (torch.nextafter(v, torch.tensor(float("inf"), dtype=torch.bfloat16)) - v).item()


@exercise("Exercise 4")
def check_bf16_spacing(name, answer, value: float = 0.1) -> CheckResult:
    """Exercise 4: the gap between ``value`` (0.1: a typical weight of a larger model) and the next larger
    bfloat16 number, `bf16_gap` (``2^-4 · 2^-7`` for 0.1, which lies in ``[2^-4, 2^-3)``). A merged ΔW entry
    smaller than half of it, added to a weight of that size, is rounded away."""
    if not value > 0:
        raise ValueError(f"value must be positive, got {value}")
    expected = bf16_gap(value)
    result = check_value(name, answer, expected, rtol=1e-6, what="the gap")
    near_one = float(torch.finfo(torch.bfloat16).eps)
    return hint_for_mistake(result, answer, [
        (near_one, "that is the gap next to 1.0; next to a smaller number the bf16 numbers lie closer together."),
        (value * near_one, "close, but the gap is set by the power of two at or below the value, not by the value "
                           "itself: bf16 numbers are evenly spaced between two powers of two."),
        (2 * expected, "that is the gap above the next power of two; take the power of two at or below the value."),
        (expected / 2, "that is half the gap: the largest rounding error next to the value, not the gap itself."),
        (expected / 8, "that is float16's gap (10 fraction bits); bfloat16 keeps 7."),
    ])
