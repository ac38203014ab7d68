"""4-bit blockwise quantization from scratch: QLoRA's NF4 code, int4 and FP4, absmax blocks, packing, and
double quantization's arithmetic.

Explained in notebook 10_lora_variants (QLoRA, Dettmers et al. 2023, arXiv 2305.14314). The storage format is
the one bitsandbytes uses (``bitsandbytes.functional.quantize_4bit`` with ``quant_type="nf4"``), so the tests
compare the two byte for byte:

- the weight is flattened and cut into blocks of ``blocksize`` numbers (64 by default; the last block may be
  shorter); each block is divided by its absolute maximum, its ``absmax`` (one float32 per block);
- each scaled number in [-1, 1] is replaced by the index of the nearest of 16 code values (4 bits);
- two indices share a byte, the first in the high four bits: ``byte = (q[0] << 4) | q[1]``;
- dequantization reads the two indices back, looks up their code values and multiplies by the block's absmax.

Memory per parameter: 4 bits for the index + 32 / blocksize bits for the absmax (0.5 bits at block 64). Double
quantization stores the absmax values themselves in 8 bits per block of 256 absmax values, with one float32
per such block: 8 / 64 + 32 / (64 · 256) ≈ 0.127 bits per parameter (QLoRA §3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate

__all__ = ["NF4_OFFSET", "nf4_code", "int4_code", "fp4_code", "Quantized4bit", "quantize_4bit",
           "dequantize_4bit", "quantization_error", "bits_per_parameter", "DoubleQuantizedAbsmax",
           "double_quantize_absmax", "dequantize_absmax", "Linear4bit", "quantize_linear_layers"]

# QLoRA's offset: the outermost quantile is taken at p = 0.9677083 rather than at 1 (whose normal quantile is
# infinite), about halfway between 1 - 1/(2·15) and 1 - 1/(2·16): 1 - (1/30 + 1/32)/2 = 0.96770833… The 16 values
# depend on such details at the 1e-7 level; with this literal and float32 p values, as in QLoRA's reference
# implementation, they equal bitsandbytes' NF4 table bit for bit.
NF4_OFFSET = 0.9677083


def nf4_code() -> torch.Tensor:
    """The 16 values of 4-bit NormalFloat (NF4), sorted, in [-1, 1], as float32, shape ``(16,)``.

    QLoRA §3: quantiles of the standard normal, so that each of the 16 bins holds about the same share of a
    normally distributed weight. To have an exact zero, the positive half gets 8 values and the negative half 7:
    ``Φ⁻¹(p)`` for 9 evenly spaced ``p`` from ``NF4_OFFSET`` down to 0.5 (dropping 0.5 itself), the negatives of
    ``Φ⁻¹(p)`` for 8 such ``p`` (again dropping 0.5), and 0; then everything is divided by the largest value, so
    the code spans [-1, 1]. Notebook 10_lora_variants.
    """
    def quantiles(count: int) -> torch.Tensor:
        p = torch.linspace(NF4_OFFSET, 0.5, count)[:-1]            # float32, as the reference implementation
        return torch.special.ndtri(p.double())                     # Φ⁻¹ in float64

    values = torch.cat([-quantiles(8), torch.zeros(1, dtype=torch.float64), quantiles(9)]).float().sort().values
    return values / values.max()


def int4_code() -> torch.Tensor:
    """Symmetric 4-bit integers scaled to [-1, 1]: ``k / 7`` for ``k = -7 … 7`` (15 values; the 16th, -8/7, is
    never used by absmax scaling, so it is dropped), float32, shape ``(15,)``. Evenly spaced. Notebook 10."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def fp4_code() -> torch.Tensor:
    """A 4-bit float (1 sign, 2 exponent, 1 mantissa bits; e2m1 as in the OCP microscaling formats) scaled to
    [-1, 1]: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} / 6, sorted, float32, shape ``(15,)`` (+0 and -0 merged). Dense near 0,
    sparse near ±1. Notebook 10. (bitsandbytes' own "fp4" uses a different bias and is not this code.)"""
    magnitudes = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]) / 6
    return torch.cat([-magnitudes.flip(0)[:-1], magnitudes])


def _code(code) -> torch.Tensor:
    code = _validate.instance("code", code, torch.Tensor, "a 1-D float tensor of sorted values in [-1, 1]")
    if code.dim() != 1 or not 2 <= code.numel() <= 16 or not code.is_floating_point():
        raise ValueError(f"code must be a 1-D float tensor of 2 to 16 values (4 bits), got shape "
                         f"{tuple(code.shape)} and dtype {code.dtype}")
    code = code.detach().float().cpu()
    if not bool((code[1:] > code[:-1]).all()) or code.abs().max() > 1:
        raise ValueError("code must be sorted strictly increasing and lie in [-1, 1]")
    return code


@dataclass(frozen=True)
class Quantized4bit:
    """A weight stored in 4 bits: ``packed`` (uint8, shape ``(ceil(n / 2), 1)``: two indices per byte, the
    first in the high bits), ``absmax`` (float32, one per block), and what dequantization needs back."""

    packed: torch.Tensor
    absmax: torch.Tensor
    code: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int

    @property
    def nbytes(self) -> int:
        """Bytes stored: the packed indices and the absmax values (the 16-value code is shared by all)."""
        return self.packed.numel() * self.packed.element_size() + self.absmax.numel() * self.absmax.element_size()


def quantize_4bit(weight: torch.Tensor, blocksize: int = 64, code: torch.Tensor | None = None) -> Quantized4bit:
    """Blockwise absmax quantization of ``weight`` (any shape, ``n`` numbers) to the nearest of ``code``'s values
    (NF4 by default). Returns a `Quantized4bit`; `dequantize_4bit` inverts it up to the rounding.

    Per block ``b`` of ``blocksize`` numbers: ``absmax_b = max |w|``, ``q_i = argmin_j |w_i / absmax_b - code_j|``.
    The nearest value is found against the midpoints between neighbouring code values (a tie goes to the lower
    one), after multiplying by ``1 / absmax_b`` (what bitsandbytes does for whole blocks; a short last block is
    divided). An all-zero block gets ``absmax`` 1e-38 instead of 0. Notebook 10_lora_variants.
    """
    weight = _validate.instance("weight", weight, torch.Tensor, "a floating-point tensor")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor (float32, float16 or bfloat16), got dtype "
                        f"{weight.dtype}: integers are already quantized")
    if weight.numel() == 0:
        raise ValueError("weight must hold at least one number, got an empty tensor")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be finite: it holds NaN or infinity")
    blocksize = _validate.integer("blocksize", blocksize, minimum=2)
    code = nf4_code() if code is None else _code(code)

    flat = weight.detach().reshape(-1).float().cpu()
    n = flat.numel()
    whole = n - n % blocksize
    blocks = flat[:whole].reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1).reshape(-1)
    if whole < n:
        last = flat[whole:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last[None]])
        scaled = torch.cat([scaled, (flat[whole:] / last).clamp(-1, 1)])
    absmax = absmax.clamp(min=1e-38)

    if n % 2:                                                      # an odd count: pad with a zero to fill the byte
        scaled = torch.cat([scaled, torch.zeros(1)])
    midpoints = (code[1:] + code[:-1]) / 2
    indices = torch.searchsorted(midpoints, scaled).to(torch.uint8)
    packed = (indices[0::2] << 4) | indices[1::2]
    return Quantized4bit(packed[:, None], absmax, code, weight.shape, weight.dtype, blocksize)


def dequantize_4bit(quantized: Quantized4bit) -> torch.Tensor:
    """The weight back from its 4-bit form: ``w_i ≈ code[q_i] · absmax_b`` for ``i`` in block ``b``, in the
    original shape and dtype. Notebook 10_lora_variants."""
    quantized = _validate.instance("quantized", quantized, Quantized4bit, "a Quantized4bit from quantize_4bit")
    return _dequantize(quantized.packed, quantized.absmax, quantized.code, quantized.shape, quantized.blocksize
                       ).to(quantized.dtype)


def _dequantize(packed, absmax, code, shape, blocksize) -> torch.Tensor:
    """float32 ``code[q_i] · absmax_b`` on the device of ``packed``."""
    packed = packed.reshape(-1)
    indices = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    n = torch.Size(shape).numel()
    values = code.to(packed.device)[indices[:n]]
    values = F.pad(values, (0, -n % blocksize)).reshape(-1, blocksize)   # one row per block (the last padded)
    return (values * absmax[:, None]).reshape(-1)[:n].reshape(shape)


def quantization_error(weight: torch.Tensor, blocksize: int = 64, code: torch.Tensor | None = None) -> float:
    """Relative Frobenius error ``‖W - deq(quant(W))‖_F / ‖W‖_F`` of 4-bit quantization with ``code`` (NF4 by
    default). Notebook 10_lora_variants compares NF4, int4 and FP4 on the course's own weights."""
    restored = dequantize_4bit(quantize_4bit(weight, blocksize, code)).float()
    weight = weight.detach().float().cpu()
    return float(torch.linalg.vector_norm(weight - restored) / torch.linalg.vector_norm(weight))


def bits_per_parameter(blocksize: int = 64, double_quant: bool = False, blocksize2: int = 256) -> float:
    """Storage bits per parameter of 4-bit blockwise quantization (QLoRA §3):

    - plain: ``4 + 32 / blocksize`` (a float32 absmax per block): 4.5 at block 64;
    - double quantization: the absmax values are themselves quantized to 8 bits in blocks of ``blocksize2``,
      each with one float32 constant: ``4 + 8 / blocksize + 32 / (blocksize · blocksize2)`` ≈ 4.127 at 64 and 256.

    Notebook 10_lora_variants.
    """
    blocksize = _validate.integer("blocksize", blocksize, minimum=1)
    double_quant = _validate.boolean("double_quant", double_quant)
    blocksize2 = _validate.integer("blocksize2", blocksize2, minimum=1)
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * blocksize2)


@dataclass(frozen=True)
class DoubleQuantizedAbsmax:
    """The absmax values of a 4-bit weight, themselves in 8 bits: ``codes`` (int8, one per absmax), ``scales``
    (float32, one per block of ``blocksize`` absmax values) and ``offset`` (their float32 mean)."""

    codes: torch.Tensor
    scales: torch.Tensor
    offset: torch.Tensor
    blocksize: int

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scales.numel() + 4


def double_quantize_absmax(absmax: torch.Tensor, blocksize: int = 256) -> DoubleQuantizedAbsmax:
    """QLoRA's double quantization (§3), in its simplest form: the absmax values (all positive, close to each
    other) minus their mean, in blocks of ``blocksize``, each block scaled by its own absolute maximum ``c`` and
    rounded to 8-bit integers: ``code = round(127 · (absmax - mean) / c)``. Storage per absmax: 8 bits plus
    32 / blocksize; per weight parameter at 4-bit block 64: ``8/64 + 32/(64·256)`` ≈ 0.127 bits instead of 0.5.

    bitsandbytes (``compress_statistics=True``) subtracts the mean and uses blocks of 256 too, but rounds to its
    8-bit *dynamic* code (a float-like grid) rather than to evenly spaced integers: same bits, other bytes.
    Notebook 10_lora_variants.
    """
    absmax = _validate.instance("absmax", absmax, torch.Tensor, "a 1-D float tensor of positive block maxima")
    if absmax.dim() != 1 or not absmax.is_floating_point() or absmax.numel() == 0 or bool((absmax <= 0).any()):
        raise ValueError("absmax must be a non-empty 1-D float tensor of positive values (the absmax of "
                         "quantize_4bit)")
    blocksize = _validate.integer("blocksize", blocksize, minimum=1)
    offset = absmax.float().mean()
    centred = absmax.float() - offset
    blocks = centred.split(blocksize)
    scales = torch.stack([b.abs().max() for b in blocks]).clamp(min=1e-38)
    codes = torch.cat([torch.round(127 * b / c) for b, c in zip(blocks, scales)]).to(torch.int8)
    return DoubleQuantizedAbsmax(codes, scales, offset, blocksize)


def dequantize_absmax(quantized: DoubleQuantizedAbsmax) -> torch.Tensor:
    """The absmax values back: ``mean + c · code / 127`` per block (float32, the length of the original)."""
    quantized = _validate.instance("quantized", quantized, DoubleQuantizedAbsmax,
                                   "a DoubleQuantizedAbsmax from double_quantize_absmax")
    scale_of = quantized.scales[torch.arange(quantized.codes.numel()) // quantized.blocksize]
    return quantized.offset + scale_of * quantized.codes.float() / 127


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight is kept in 4 bits, QLoRA's base layer: ``y = x Ŵᵀ + b`` with
    ``Ŵ = dequantize_4bit(quantize_4bit(W))`` rebuilt for every call in ``compute_dtype`` (the 4-bit numbers
    are for storage; the matrix product runs in 16 or 32 bits). ``x`` (..., in_features) → (..., out_features).

    Built from an ``nn.Linear``; its ``bias`` is kept as it is (frozen). Nothing of it trains, so LoRA's
    ``lora_A`` and ``lora_B`` are the only trainable weights. bitsandbytes' ``Linear4bit`` stores the same bytes
    (``compress_statistics=False``). Notebook 10_lora_variants.
    """

    def __init__(self, linear: nn.Linear, blocksize: int = 64, code: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.float32):
        _validate.instance("linear", linear, nn.Linear, "a torch.nn.Linear to quantize")
        if compute_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"compute_dtype must be torch.float32, torch.bfloat16 or torch.float16, got "
                             f"{compute_dtype}")
        quantized = quantize_4bit(linear.weight, blocksize, code)
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.blocksize, self.compute_dtype = quantized.blocksize, compute_dtype
        self.register_buffer("packed", quantized.packed.to(linear.weight.device))
        self.register_buffer("absmax", quantized.absmax.to(linear.weight.device))
        self.register_buffer("code", quantized.code.to(linear.weight.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized_weight(self) -> torch.Tensor:
        """``Ŵ`` (out_features, in_features) in ``compute_dtype``."""
        shape = (self.out_features, self.in_features)
        return _dequantize(self.packed, self.absmax, self.code, shape, self.blocksize).to(self.compute_dtype)

    @property
    def weight(self) -> torch.Tensor:
        """``Ŵ``, rebuilt on every access (read-only: writing into it changes nothing stored). LoRA reads it for
        its factors' dtype and device, and DoRA for the norm of ``Ŵ + ΔW`` (QDoRA)."""
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias).to(x.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the weight takes: the packed 4-bit numbers and one float32 absmax per block."""
        return self.packed.numel() + 4 * self.absmax.numel()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={self.blocksize}, compute_dtype={self.compute_dtype}")


def quantize_linear_layers(model: nn.Module, blocksize: int = 64, compute_dtype: torch.dtype = torch.float32,
                           skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a frozen `Linear4bit`, except those whose full name
    is in ``skip`` (QLoRA keeps the output head in 16 bits, for instance). Returns ``model``, all frozen: add LoRA
    to it next (``lora_edu.add_lora`` wraps `Linear4bit` layers as it wraps ``nn.Linear`` ones). Notebook 10."""
    _validate.module("model", model)
    if isinstance(model, nn.Linear):
        raise TypeError("model is itself an nn.Linear: quantize it directly with Linear4bit(model)")
    skip = _validate.sequence("skip", skip, what="module names") if skip else ()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip]
    unknown = sorted(set(skip) - {n for n, _ in model.named_modules()})
    if unknown:
        raise ValueError(f"skip names modules this model does not have: {unknown}")
    if not names:
        raise ValueError("model has no nn.Linear layers to quantize (outside skip)")
    quantized = {n: Linear4bit(model.get_submodule(n), blocksize, None, compute_dtype) for n in names}
    for name, layer in quantized.items():                       # every layer built before any is replaced
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    return model.requires_grad_(False)
