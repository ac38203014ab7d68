"""Checks for the exercises of notebook 10_lora_variants: NF4 quantization of one block built by hand, double
quantization's bits per parameter, the bytes of the 4-bit tiny GPT (predicted, then measured on a copy), and the
LoRA+ ratio that reproduces a larger α under Adam.

The build-it check runs the learner's ``quantize_block`` on random blocks against `lora_edu.quantization` with
the package's quantizer (and bitsandbytes', if it is loaded) forbidden while it runs."""
from __future__ import annotations

import copy
import sys

import torch
from torch import nn

from .. import quantization as Q
from ..checks import (REVEAL, CheckResult, check_value, exercise, failed, hint_for_mistake, not_answered, passed,
                      revealed)
from ._build_it import is_stub, loaded, run_forbidding

# --- Exercise 1 (build it): NF4 quantization of one block ---

BLOCK_CASES = [("a block of 64 normal numbers", 64, "normal"), ("a short last block of 17 numbers", 17, "normal"),
               ("a block whose largest magnitude is negative", 64, "negative_peak"),
               ("a block of 64 uniform numbers in [0, 1)", 64, "positive"), ("a block of one number", 1, "normal"),
               ("a block with exact zeros", 32, "zeros")]


def _blocks():
    """The check's blocks, drawn from their own generator (the learner's random numbers are not moved on)."""
    generator = torch.Generator().manual_seed(10)
    blocks = []
    for description, n, kind in BLOCK_CASES:
        if kind == "positive":
            values = torch.rand(n, generator=generator)
        else:
            values = torch.randn(n, generator=generator) * 0.05
        if kind == "negative_peak":
            values[n // 3] = -4 * values.abs().max()
        if kind == "zeros":
            values[::3] = 0.0
        blocks.append((description, values))
    return blocks


def _shortcuts():
    shortcuts = [(Q, "quantize_4bit", "calls lora_edu.quantization.quantize_4bit"),
                 (Q, "dequantize_4bit", "calls lora_edu.quantization.dequantize_4bit"),
                 (Q, "quantization_error", "calls lora_edu.quantization.quantization_error"),
                 (Q.Linear4bit, "__init__", "builds a lora_edu.quantization.Linear4bit")]
    functional = sys.modules.get("bitsandbytes.functional")  # loaded only if the learner (or notebook) imported it
    for attribute in ("quantize_4bit", "quantize_nf4"):
        if loaded("bitsandbytes.functional", attribute) is not None:
            shortcuts.append((functional, attribute, f"calls bitsandbytes.functional.{attribute}"))
    return shortcuts


def _expected(values):
    """(indices (n,) int64, absmax float) from the package: the nearest NF4 value of values / absmax."""
    quantized = Q.quantize_4bit(values, blocksize=max(len(values), 2))
    packed = quantized.packed.reshape(-1)
    indices = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:len(values)].long()
    return indices, float(quantized.absmax[0])


def _block_diagnosis(indices, absmax, values, expected_absmax) -> str:
    code = Q.nf4_code()
    if abs(absmax - float(values.max())) < 1e-12 and abs(absmax - expected_absmax) > 1e-9:
        return "absmax is the largest value, not the largest magnitude: use values.abs().max()"
    if abs(absmax - expected_absmax) > 1e-6 * expected_absmax:
        return "absmax is not the block's largest magnitude max |x|"
    raw = (values[:, None] - code).abs().argmin(dim=1)
    if torch.equal(indices, raw):
        return "the indices are those of the unscaled numbers: divide the block by absmax first, so it spans [-1, 1]"
    even = torch.arange(-7, 9, dtype=torch.float32) / 8
    if torch.equal(indices, (values[:, None] / expected_absmax - even).abs().argmin(dim=1)):
        return "these are the nearest of 16 evenly spaced values; NF4's values are lora_edu.quantization.nf4_code()"
    flipped = (values[:, None] / expected_absmax + code).abs().argmin(dim=1)
    if torch.equal(indices, flipped):
        return "the signs are flipped: find the code value nearest to +x / absmax"
    return "some numbers do not go to the nearest NF4 value of x / absmax"


def check_quantize_block(function) -> CheckResult:
    """Exercise 1 (build it): ``function(values)`` takes one block (a 1-D float tensor) and returns
    ``(indices, absmax)``: ``absmax = max |x|`` (a float or 0-d tensor) and ``indices`` (n,) integers in 0 … 15, the
    position in ``nf4_code()`` of the value nearest to ``x / absmax`` — what `lora_edu.quantization.quantize_4bit`
    stores for the block. Six blocks are tried (a short one, a negative peak, zeros, ...); an index passes if its
    code value is as near as the nearest within 1e-6. The package's and bitsandbytes' quantizers are forbidden."""
    name = "Exercise 1"
    if function is REVEAL:
        return revealed(name, "absmax = values.abs().max(); scaled = values / absmax; indices = "
                              "(scaled[:, None] - nf4_code()).abs().argmin(dim=1); return indices, absmax")
    if not callable(function):
        return failed(name, f"expected a function quantize_block(values), got {type(function).__name__}.")
    if is_stub(function):
        return not_answered(name)
    code = Q.nf4_code()
    for number, (description, values) in enumerate(_blocks(), start=1):
        case = f"case {number} ({description})"
        expected_indices, expected_absmax = _expected(values)
        got, forbidden, error = run_forbidding(function, _shortcuts(), values.clone())
        if forbidden:
            return failed(name, f"{case}: your function {forbidden}, which the task forbids: find the nearest code "
                                "values yourself (nf4_code() is allowed).")
        if error is not None:
            return failed(name, f"{case} raised {type(error).__name__}: {error}")
        if not isinstance(got, tuple) or len(got) != 2:
            return failed(name, f"{case}: expected a pair (indices, absmax), got {type(got).__name__}.")
        indices, absmax = got
        if not isinstance(indices, torch.Tensor) or indices.shape != values.shape:
            shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
            return failed(name, f"{case}: indices must be a tensor of shape {tuple(values.shape)} (one per number), "
                                f"got {shape}.")
        if indices.is_floating_point():
            return failed(name, f"{case}: indices must be integers (positions in nf4_code()), not the code values "
                                "themselves: use argmin, not min.")
        if int(indices.min()) < 0 or int(indices.max()) > 15:
            return failed(name, f"{case}: indices must lie in 0 … 15 (4 bits).")
        try:
            absmax = float(absmax)
        except (TypeError, ValueError, RuntimeError):
            return failed(name, f"{case}: absmax must be a number (a float or a 0-d tensor).")
        scaled = values / expected_absmax
        best = (scaled[:, None] - code).abs().min(dim=1).values
        mine = (scaled - code[indices.long()]).abs()
        if abs(absmax - expected_absmax) > 1e-6 * expected_absmax or bool((mine > best + 1e-6).any()):
            return failed(name, f"{case}: {_block_diagnosis(indices.long(), absmax, values, expected_absmax)}.")
    return passed(name, f"correct on all {len(BLOCK_CASES)} blocks: the same indices and absmax as "
                        "lora_edu.quantization.quantize_4bit, without calling it.")


# --- Exercise 2: double quantization's bits per parameter ---

@exercise("Exercise 2")
def check_double_quant_bits(name, answer, blocksize: int, blocksize2: int) -> CheckResult:
    """Exercise 2: bits per parameter of NF4 with double quantization: ``4 + 8 / blocksize + 32 / (blocksize ·
    blocksize2)``."""
    expected = Q.bits_per_parameter(blocksize, double_quant=True, blocksize2=blocksize2)
    result = check_value(name, answer, expected, rtol=1e-6, what="bits per parameter")
    return hint_for_mistake(result, answer, [
        (4 + 32 / blocksize, "that is without double quantization: the absmax values are stored in 8 bits, not 32."),
        (8 / blocksize + 32 / (blocksize * blocksize2), "that is the absmax overhead alone: add the 4 bits of the "
                                                        "index itself."),
        (4 + 8 / blocksize, "the second-level constants are missing: one 32-bit float per block of blocksize2 "
                            "absmax values."),
        (4 + 8 / blocksize + 32 / blocksize2, "the 32-bit constant is shared by blocksize2 absmax values, each of "
                                              "which covers blocksize parameters: divide by both."),
    ], rtol=1e-4, otherwise="per parameter: 4 bits of index, plus the absmax's 8 bits shared by a block, plus the "
                            "second level's 32 bits shared by blocksize · blocksize2 parameters.")


# --- Exercise 3: predict, then measure the bytes of the 4-bit tiny GPT ---

def measure_quantized_bytes(model: nn.Module, blocksize: int = 128, skip=()) -> int:
    """Bytes of every `Linear4bit` after ``quantize_linear_layers(copy, blocksize, skip=skip)`` on a copy of
    ``model`` (packed numbers and absmax; biases not counted); ``model`` is not changed."""
    quantized = Q.quantize_linear_layers(copy.deepcopy(model), blocksize=blocksize, skip=tuple(skip))
    return sum(m.nbytes for m in quantized.modules() if isinstance(m, Q.Linear4bit))


@exercise("Exercise 3")
def check_quantized_bytes(name, answer, model: nn.Module, blocksize: int = 128, skip=()) -> CheckResult:
    """Exercise 3: the bytes of ``model``'s linear layers in 4 bits, blocks of ``blocksize`` (the layers in
    ``skip`` left out), predicted from the layer shapes, then measured by quantizing a copy."""
    expected = measure_quantized_bytes(model, blocksize, skip)
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip}
    numbers = sum(m.weight.numel() for m in linear.values())
    whole_blocks_only = sum((m.weight.numel() + 1) // 2 + 4 * (m.weight.numel() // blocksize) for m in linear.values())
    result = check_value(name, answer, expected, what="bytes")
    mistakes = [
        (numbers // 2, "that is the 4-bit numbers alone: each block also stores its absmax, a float32."),
        (4 * numbers, "that is the float32 size; 4 bits are an eighth of it, and each block adds its absmax."),
        (8 * expected, "that is in bits; the answer is in bytes."),
        (measure_quantized_bytes(model, 64, skip), f"that is for blocks of 64; here each block holds {blocksize} numbers."),
    ]
    if whole_blocks_only != expected:
        mistakes.append((whole_blocks_only, "a layer whose size is not a multiple of the block size ends in a short "
                                            "block, and that block stores its own absmax too."))
    if "lm_head" not in skip and "lm_head" in linear:
        mistakes.append((measure_quantized_bytes(model, blocksize, tuple(skip) + ("lm_head",)),
                         "that leaves lm_head out; this time it is quantized too."))
    return hint_for_mistake(result, answer, mistakes, rtol=1e-6, atol=0.5, otherwise=(
        "list every linear layer's weight shape; each layer is cut into its own blocks, and each block stores "
        "its 4-bit numbers and one float32 scale."))


# --- Exercise 4: the LoRA+ ratio that matches a larger α ---

@exercise("Exercise 4")
def check_loraplus_ratio(name, answer, alpha: float, new_alpha: float) -> CheckResult:
    """Exercise 4: under Adam, LoRA with ``new_alpha`` trains like LoRA with ``alpha`` and B's learning rate
    multiplied by ``new_alpha / alpha`` (notebook 06): the LoRA+ ratio is ``new_alpha / alpha``."""
    expected = new_alpha / alpha
    result = check_value(name, answer, expected, rtol=1e-6, what="loraplus_lr_ratio")
    return hint_for_mistake(result, answer, [
        (alpha / new_alpha, "upside down: the larger α acts as a larger learning rate for B."),
        (expected ** 0.5, "that is the square root: under Adam the factor on α carries over to B's learning rate "
                          "whole."),
        (expected ** 2, "that is the square: under Adam the factor on α carries over to B's learning rate once."),
        (16.0, "16 is the ratio LoRA+'s authors suggest; here the ratio follows from the two α values."),
    ], rtol=1e-6)
