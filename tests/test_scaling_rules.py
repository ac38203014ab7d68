"""lora_edu.scaling_rules: the α rules, LoRA's and rsLoRA's scaling, and A's seeded, nested initialisation."""
import math

import pytest
import torch

from lora_edu.scaling_rules import ALPHA_RULES, RANKS, alpha_for, lora_init_A, lora_scaling

def test_alpha_rules_and_scaling():
    assert [alpha_for(rule, 8) for rule in ALPHA_RULES] == [8.0, 16.0, 16.0]
    assert alpha_for("fixed", 8, fixed_alpha=4) == 4.0
    assert all(lora_scaling(alpha_for("2r", r), r) == 2.0 for r in RANKS)
    assert lora_scaling(16, 64, "alpha/sqrt(r)") == 2.0
    assert lora_scaling(16, 64, "alpha/r") == 0.25


def test_lora_init_a_matches_peft_distribution_and_is_nested():
    a = lora_init_A(256, 64, seed=3)
    assert a.shape == (64, 256) and float(a.abs().max()) <= 1 / 16
    assert abs(float(a.std()) - 1 / math.sqrt(3 * 256)) < 0.002  # uniform on [-b, b]: std b/√3
    assert torch.equal(lora_init_A(256, 64, seed=3), a)
    assert not torch.equal(lora_init_A(256, 64, seed=4), a)
    assert torch.equal(lora_init_A(256, 8, seed=3), a[:8])  # nested: rank 8 is rank 64's first rows
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(lora_init_A(256, 64, generator=generator), a)
    assert not torch.equal(lora_init_A(256, 64, generator=generator), a)  # the generator moved on


@pytest.mark.parametrize("call, error, match", [
    (lambda: alpha_for("3r", 4), ValueError, r"rule='3r' is not allowed; allowed values: 'r', '2r', 'fixed'"),
    (lambda: alpha_for("r", 0), ValueError, r"r must be an int >= 1, got 0"),
    (lambda: alpha_for("fixed", 4, fixed_alpha=-1), ValueError, r"fixed_alpha must be a finite number > 0"),
    (lambda: lora_scaling(16, 4, "alpha/r2"), ValueError,
     r"rule='alpha/r2' is not allowed; allowed values: 'alpha/r', 'alpha/sqrt\(r\)'"),
    (lambda: lora_scaling(0, 4), ValueError, r"alpha must be a finite number > 0, got 0.0"),
    (lambda: lora_scaling(16, 2.5), TypeError, r"r must be an int >= 1, got float 2.5"),
    (lambda: lora_scaling(float("nan"), 4), ValueError, r"alpha must be a finite number > 0, got nan"),
    (lambda: lora_init_A(0, 4), ValueError, r"in_features must be an int >= 1"),
    (lambda: lora_init_A(8, 4, seed=-1), ValueError, r"seed must be an int >= 0"),
    (lambda: lora_init_A(8, 4, generator=3), TypeError, r"generator must be a CPU torch.Generator"),
])
def test_bad_input_raises_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()
