"""Checks for the exercises of notebook 07_many_tasks_one_model: a mixed-batch forward built by hand, the bound of
a merged switch, the storage of many adapters, and a speed-up read off the notebook's own measurements."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..adapters import per_example_adapters
from ..checks import (REVEAL, CheckResult, check_value, exercise, failed, hint_for_mistake, not_answered, passed,
                      revealed)
from ..counting import LLAMA_7B, checkpoint_bytes, lora_trainable_params
from ..lora import BASE, LoraConfig, LoRALinear

MERGE_WAY, LOOP_WAY = "merge per group", "loop over adapters (PEFT)"
GATHERED_WAY, REUSED_WAY = "gathered, set-up per batch", "gathered, set-up reused"


def _mixed_cases():
    """Random layers with three adapters of ranks 2, 3 and 1, and the name lists the check feeds them."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(7)
    layer = LoRALinear(nn.Linear(6, 5), LoraConfig(r=2, lora_alpha=4, init_lora_weights=False), "a")
    layer.add_adapter("b", LoraConfig(r=3, lora_alpha=3, init_lora_weights=False))
    layer.add_adapter("c", LoraConfig(r=1, lora_alpha=8, init_lora_weights=False))
    names = [["a", "b", "c", "a"], [BASE, "b", "b"], ["c"], ["a", BASE, "c", "b", "a", "c"]]
    cases = [(torch.randn(len(n), 6), n) for n in names]
    torch.random.set_rng_state(generator_state)  # the learner's random numbers are not moved on
    return layer.eval(), cases


def _row_diagnosis(got_row, x_row, layer, name) -> str:
    """Which usual slip a wrong row shows (computed without showing the right row)."""
    if name == BASE:
        return "it should be the frozen layer's output alone (no adapter)"
    a, b, s = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
    base, branch = layer.base(x_row), b @ (a @ x_row)
    slips = [(base + branch, "the branch is missing its scaling s = lora_alpha / r"),
             (branch * s, "the frozen layer's output base(x) is missing"),
             (base, "it has no adapter at all, but this row asks for one")]
    slips += [(base + layer.scaling[o] * (layer.lora_B[o] @ (layer.lora_A[o] @ x_row)),
               f"it used adapter {o!r}: each row must use the adapter named for it") for o in layer.lora_A if o != name]
    for value, hint in slips:
        if torch.allclose(got_row, value, atol=1e-5):
            return hint
    return f"it is not base(x) + s · B A x with adapter {name!r} (rank {layer.r[name]})"


def check_mixed_forward(function) -> CheckResult:
    """Exercise 1 (build it): ``function(x, layer, names)`` must return ``base(x_i) + s_t B_t A_t x_i`` per row,
    each with the adapter ``names[i]`` (``"__base__"``: none), equal to `lora_edu.per_example_adapters`
    within 1e-5 on four cases with adapters of different ranks."""
    name = "Exercise 1"
    if function is REVEAL:
        return revealed(name, "for each row i: layer.base(x[i]), plus, unless names[i] is '__base__', "
                              "layer.scaling[n] * layer.lora_B[n] @ (layer.lora_A[n] @ x[i]) with n = names[i]; "
                              "then torch.stack the rows")
    if not callable(function):
        return failed(name, f"expected a function mixed_lora_forward(x, layer, names), got {type(function).__name__}.")
    layer, cases = _mixed_cases()
    for number, (x, names) in enumerate(cases, start=1):
        with torch.no_grad(), per_example_adapters(nn.Sequential(layer).eval(), names):
            expected = layer(x)
        try:
            with torch.no_grad():
                got = function(x.clone(), copy.deepcopy(layer), list(names))
        except Exception as error:  # the learner's code: report whatever it raised
            return failed(name, f"case {number} (names {names}) raised {type(error).__name__}: {error}")
        if got is None and number == 1:
            return not_answered(name)
        if not isinstance(got, torch.Tensor):
            return failed(name, f"case {number}: expected a torch.Tensor, got {type(got).__name__}.")
        if tuple(got.shape) != tuple(expected.shape):
            return failed(name, f"case {number} (names {names}): the output has shape {tuple(got.shape)}; it should be "
                                f"(batch, out_features) = {tuple(expected.shape)}.")
        wrong = [i for i in range(len(names)) if not torch.allclose(got[i], expected[i], atol=1e-5)]
        if wrong:
            i = wrong[0]
            return failed(name, f"case {number} (names {names}): {len(wrong)} of {len(names)} rows are off; row {i} "
                                f"(adapter {names[i]!r}): {_row_diagnosis(got[i], x[i], layer, names[i])}.")
    return passed(name, "correct: every row used its own adapter, equal to per_example_adapters in all 4 cases.")


@exercise("Exercise 2")
def check_merge_bound(name, answer, d: int, bandwidth: float) -> CheckResult:
    """Exercise 2: the bound of a merged switch of one ``d × d`` float32 layer: two in-place updates, each one read
    and one write of the weight: ``2 · 2 · 4 d² / bandwidth`` seconds."""
    expected = 2 * 2 * 4 * d * d / bandwidth
    result = check_value(name, answer, expected, rtol=1e-3, what="seconds")
    return hint_for_mistake(result, answer, [
        (expected / 2, "half of it: a switch is two updates (unmerge the old adapter, merge the new), and each "
                       "update both reads and writes the weight."),
        (expected / 4, "a quarter: two updates, each a read and a write, so four passes over the weight."),
        (expected / 16, "count bytes, not numbers: float32 is 4 bytes each; and four passes over the weight."),
        (expected * 2, "twice the bound: the bandwidth already counts the read and the write of a copy."),
    ], rtol=1e-3)


@exercise("Exercise 3")
def check_adapter_storage(name, answer, tasks: int, r: int) -> CheckResult:
    """Exercise 3: bytes of ``tasks`` LLaMA-7B adapters at rank ``r`` on q and v, in bf16:
    ``tasks · 32 · 2 · r (4096 + 4096) · 2``."""
    one = checkpoint_bytes(lora_trainable_params(LLAMA_7B, r=r, targets=("q", "v")), "bf16")
    result = check_value(name, answer, tasks * one, what="bytes")
    return hint_for_mistake(result, answer, [
        (one, "that is one adapter; the question asks for all of them."),
        (tasks * one * 2, "twice too much: bf16 numbers are 2 bytes each, not 4."),
        (tasks * one / 2, "half of it: take r = 16, count both factors (A is r × 4096, B is 4096 × r), both "
                          "matrices (q and v), and 2 bytes per bf16 number."),
        (tasks * one / 32, "that is one block; LLaMA-7B has 32, each with its own q and v adapters."),
    ], rtol=1e-9)


@exercise("Exercise 4")
def check_speedup(name, answer, throughput: dict, batch: int, distinct: int) -> CheckResult:
    """Exercise 4: the throughput of the gathered product (set-up per batch) over that of merge per group, in the
    notebook's own measurements ``throughput[way, batch, distinct]`` (sequences per second)."""
    gathered, merged = throughput[GATHERED_WAY, batch, distinct], throughput[MERGE_WAY, batch, distinct]
    result = check_value(name, answer, gathered / merged, rtol=0.02, what="the ratio")
    return hint_for_mistake(result, answer, [
        (merged / gathered, "upside down: the gathered product's throughput goes on top."),
        (throughput[REUSED_WAY, batch, distinct] / merged, "that uses the set-up reused; the question is about the "
                                                           "set-up paid per batch."),
        (gathered / throughput[LOOP_WAY, batch, distinct], "that compares with PEFT's loop, not with merge per group."),
    ], rtol=0.02)
