"""The exercise checks of notebook 10: the build-it NF4 block quantizer passes with the solution, fails with the
usual slips (naming the case and the slip) and refuses the package's quantizer; the value checks pass the right
answer and diagnose the wrong ones."""
import math

import pytest
import torch

from lora_edu import quantization as Q
from lora_edu.checks import NOT_ANSWERED, reveal
from lora_edu.exercises import nb10
from lora_edu.models import GPTConfig, TinyGPT


def quantize_block(values):
    absmax = values.abs().max()
    return (values[:, None] / absmax - Q.nf4_code()).abs().argmin(dim=1), absmax


def stub(values): ...


def test_quantize_block_solution_passes_and_stub_is_unanswered():
    assert nb10.check_quantize_block(quantize_block)
    assert nb10.check_quantize_block(stub).passed is None
    state = torch.random.get_rng_state()
    nb10.check_quantize_block(quantize_block)
    assert torch.equal(state, torch.random.get_rng_state()), "the check must not move the learner's random numbers"


def via_searchsorted(values):                                    # another right way: the midpoints
    absmax = float(values.abs().max())
    code = Q.nf4_code()
    return torch.searchsorted((code[1:] + code[:-1]) / 2, values / absmax), absmax


def test_other_right_answers_pass():
    assert nb10.check_quantize_block(via_searchsorted)
    assert nb10.check_quantize_block(lambda v: (quantize_block(v)[0].to(torch.uint8), quantize_block(v)[1]))


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda v: ((v[:, None] / v.max() - Q.nf4_code()).abs().argmin(dim=1), v.max()), "largest magnitude"),
    (lambda v: ((v[:, None] - Q.nf4_code()).abs().argmin(dim=1), v.abs().max()), "unscaled"),
    (lambda v: ((v[:, None] / v.abs().max() - torch.arange(-7, 9) / 8).abs().argmin(dim=1), v.abs().max()),
     "evenly spaced"),
    (lambda v: ((v[:, None] / v.abs().max() + Q.nf4_code()).abs().argmin(dim=1), v.abs().max()), "signs are flipped"),
    (lambda v: ((v[:, None] / v.abs().max() - Q.nf4_code()).abs().min(dim=1).values, v.abs().max()), "integers"),
    (lambda v: (quantize_block(v)[0][:-1], v.abs().max()), "shape"),
    (lambda v: quantize_block(v)[0], "pair"),
    (lambda v: (quantize_block(v)[0], v.abs().mean()), "largest magnitude max |x|"),
    (lambda v: (quantize_block(v)[0] + 1, v.abs().max()), "0 … 15"),
    (lambda v: (quantize_block(v)[0].flip(0), v.abs().max()), "nearest NF4 value"),
    (lambda v: 1 / 0, "ZeroDivisionError"),
])
def test_quantize_block_mistakes_are_diagnosed(wrong, diagnosis):
    result = nb10.check_quantize_block(wrong)
    assert result.passed is False and diagnosis in result.message and "case" in result.message, result.message


def test_quantize_block_mistake_names_the_case():
    only_short_blocks_wrong = lambda v: quantize_block(v) if len(v) != 17 else (quantize_block(v)[0].flip(0), v.abs().max())
    result = nb10.check_quantize_block(only_short_blocks_wrong)
    assert not result and "case 2 (a short last block of 17 numbers)" in result.message, result.message


@pytest.mark.parametrize("shortcut, forbidden", [
    (lambda v: (Q.quantize_4bit(v, blocksize=len(v) if len(v) > 1 else 2).packed, v.abs().max()),
     "lora_edu.quantization.quantize_4bit"),
    (lambda v: (quantize_block(v)[0], Q.dequantize_4bit(Q.quantize_4bit(v)) and v.abs().max()),
     "lora_edu.quantization.quantize_4bit"),
])
def test_quantize_block_shortcuts_fail(shortcut, forbidden):
    result = nb10.check_quantize_block(shortcut)
    assert result.passed is False and forbidden in result.message and "forbids" in result.message, result.message
    assert Q.quantize_4bit(torch.ones(4)).absmax.item() == 1.0, "the package's function works after the check"


def test_bitsandbytes_quantizer_is_forbidden_when_loaded():
    functional = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is not installed here")
    cheat = lambda v: (quantize_block(v)[0], functional.quantize_4bit(v.reshape(1, -1).repeat(1, 64)[:, :64],
                                                                    blocksize=64, quant_type="nf4")[1].absmax[0])
    result = nb10.check_quantize_block(cheat)
    assert result.passed is False and "bitsandbytes.functional.quantize_4bit" in result.message, result.message


def test_build_it_reveals_on_request():
    assert "argmin" in reveal(nb10.check_quantize_block).message


# --- Value checks ---

def small_gpt():
    torch.manual_seed(0)
    return TinyGPT(GPTConfig(d_model=64, n_layers=1, n_heads=2, mlp_hidden=128))


def test_unanswered():
    for result in (nb10.check_double_quant_bits(NOT_ANSWERED, 128, 256), nb10.check_quantized_bytes(NOT_ANSWERED, small_gpt()),
                   nb10.check_loraplus_ratio(NOT_ANSWERED, 8, 32)):
        assert result.passed is None and "not answered yet" in str(result)


def test_double_quant_bits():
    assert nb10.check_double_quant_bits(4 + 8 / 128 + 32 / (128 * 256), 128, 256)
    plain = nb10.check_double_quant_bits(4 + 32 / 128, 128, 256)
    assert not plain and "without double quantization" in plain.message
    assert "add the 4 bits" in nb10.check_double_quant_bits(8 / 128 + 32 / (128 * 256), 128, 256).message
    assert "second-level" in nb10.check_double_quant_bits(4 + 8 / 128, 128, 256).message
    assert "divide by both" in nb10.check_double_quant_bits(4 + 8 / 128 + 32 / 256, 128, 256).message


def test_quantized_bytes_measured_on_a_copy():
    model = small_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = [m.weight.shape for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(a * b for a, b in shapes)
    right = sum((a * b + 1) // 2 + 4 * math.ceil(a * b / 128) for a, b in shapes)   # a short last block keeps its absmax
    assert nb10.measure_quantized_bytes(model) == right
    assert nb10.check_quantized_bytes(right, model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n.endswith("q_proj"))
    assert "absmax" in nb10.check_quantized_bytes(weights // 2, model).message
    assert "float32" in nb10.check_quantized_bytes(4 * weights, model).message
    assert "in bits" in nb10.check_quantized_bytes(8 * right, model).message
    assert "blocks of 64" in nb10.check_quantized_bytes(nb10.measure_quantized_bytes(model, 64), model).message
    assert "lm_head" in nb10.check_quantized_bytes(nb10.measure_quantized_bytes(model, 128, ("lm_head",)), model).message
    assert model.lm_head.weight.numel() % 128 != 0                              # so the short block is tested
    floor = sum((a * b + 1) // 2 + 4 * (a * b // 128) for a, b in shapes)
    assert "short" in nb10.check_quantized_bytes(floor, model).message
    other = nb10.check_quantized_bytes(right + 1000, model)
    assert not other and "float32 scale" in other.message and str(right) not in other.message
    assert nb10.check_quantized_bytes(nb10.measure_quantized_bytes(model, 64, ("lm_head",)), model, 64, ("lm_head",))


def test_loraplus_ratio():
    assert nb10.check_loraplus_ratio(4.0, 8, 32) and nb10.check_loraplus_ratio(4, 8, 32)
    assert "upside down" in nb10.check_loraplus_ratio(0.25, 8, 32).message
    assert "square root" in nb10.check_loraplus_ratio(2.0, 8, 32).message
    assert "suggest" in nb10.check_loraplus_ratio(16, 8, 16).message
    assert "square:" in nb10.check_loraplus_ratio(16, 8, 32).message
    assert "expected a number" in nb10.check_loraplus_ratio("4", 8, 32).message
