"""The checks of notebook 07's exercises: each solution passes, each usual mistake fails with its diagnosis, and
no failure message gives the expected value away."""
import math

import pytest
import torch

from lora_edu.exercises import nb07
from lora_edu.checks import NOT_ANSWERED, reveal


def solution(x, layer, names):
    rows = []
    for x_i, name in zip(x, names):
        h = layer.base(x_i)
        if name != "__base__":
            h = h + layer.scaling[name] * (layer.lora_B[name] @ (layer.lora_A[name] @ x_i))
        rows.append(h)
    return torch.stack(rows)


def test_mixed_forward_solution_passes_and_stub_is_unanswered():
    assert nb07.check_mixed_forward(solution)
    assert nb07.check_mixed_forward(lambda x, layer, names: None).passed is None
    state = torch.random.get_rng_state()
    nb07.check_mixed_forward(solution)
    assert torch.equal(state, torch.random.get_rng_state()), "the check must not move the learner's random numbers"


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda x, layer, names: solution(x, layer, ["a"] * len(names)), "row"),
    (lambda x, layer, names: torch.stack([layer.base(x_i) + (layer.lora_B[n] @ (layer.lora_A[n] @ x_i))
                                          if n != "__base__" else layer.base(x_i) for x_i, n in zip(x, names)]),
     "missing its scaling"),
    (lambda x, layer, names: layer.base(x), "no adapter at all"),
    (lambda x, layer, names: solution(x, layer, names).T, "shape"),
    (lambda x, layer, names: 1 / 0, "ZeroDivisionError"),
])
def test_mixed_forward_mistakes_are_diagnosed(wrong, diagnosis):
    result = nb07.check_mixed_forward(wrong)
    assert result.passed is False and diagnosis in result.message, result.message


def test_merge_bound():
    bandwidth = 2.5e10
    right = 2 * 2 * 8192 * 8192 * 4 / bandwidth
    assert nb07.check_merge_bound(right, 8192, bandwidth)
    assert nb07.check_merge_bound(NOT_ANSWERED, 8192, bandwidth).passed is None
    half = nb07.check_merge_bound(right / 2, 8192, bandwidth)
    assert not half and "two updates" in half.message
    no_bytes = nb07.check_merge_bound(right / 16, 8192, bandwidth)
    assert not no_bytes and "4 bytes each" in no_bytes.message


def test_adapter_storage():
    right = 50 * 32 * 2 * 16 * (4096 + 4096) * 2
    assert nb07.check_adapter_storage(right, tasks=50, r=16)
    fp32 = nb07.check_adapter_storage(2 * right, tasks=50, r=16)
    assert not fp32 and "2 bytes each" in fp32.message
    one = nb07.check_adapter_storage(right // 50, tasks=50, r=16)
    assert not one and "one adapter" in one.message


def measured():
    return {(nb07.MERGE_WAY, 64, 32): 150.0, (nb07.GATHERED_WAY, 64, 32): 1800.0, (nb07.REUSED_WAY, 64, 32): 3600.0,
            (nb07.LOOP_WAY, 64, 32): 700.0, ("one adapter, unmerged", 64): 4000.0}


def test_speedup_reads_the_measurements():
    table = measured()
    assert nb07.check_speedup(12.0, table, 64, 32) and nb07.check_speedup(12.1, table, 64, 32)
    upside_down = nb07.check_speedup(150 / 1800, table, 64, 32)
    assert not upside_down and "upside down" in upside_down.message
    reused = nb07.check_speedup(24.0, table, 64, 32)
    assert not reused and "set-up reused" in reused.message
    assert nb07.check_speedup(NOT_ANSWERED, table, 64, 32).passed is None


@pytest.mark.parametrize("check, right, inputs", [
    (nb07.check_merge_bound, 2 * 2 * 8192 * 8192 * 4 / 2.5e10, (8192, 2.5e10)),
    (nb07.check_adapter_storage, 50 * 32 * 2 * 16 * (4096 + 4096) * 2, (50, 16)),
    (nb07.check_speedup, 12.0, (measured(), 64, 32)),
])
@pytest.mark.parametrize("factor", [0.0, -1.0, 0.5, 1.5, 3.0, 10.0])
def test_wrong_answers_do_not_reveal_the_expected_value(check, right, inputs, factor):
    message = check(right * factor, *inputs).message
    spellings = {f"{right:g}", f"{right:,.0f}", f"{right:.3g}", f"{right:.4g}", f"{right:,}", f"{right:.6g}"}
    offset = abs(right * factor - right)
    spellings |= {f"{offset:g}", f"{offset:,.0f}", f"{offset:.3g}"} if offset else set()
    leaked = [s for s in spellings if s in message and not math.isclose(float(s.replace(",", "")), 0)]
    assert not leaked, (message, leaked)


def test_reveal_shows_each_answer_on_request():
    assert "torch.stack" in reveal(nb07.check_mixed_forward).message
    assert "12" in reveal(nb07.check_speedup, measured(), 64, 32).message
    assert f"{50 * 32 * 2 * 16 * 8192 * 2:,}" in reveal(nb07.check_adapter_storage, 50, 16).message
    assert reveal(nb07.check_merge_bound, 8192, 2.5e10).passed is None
