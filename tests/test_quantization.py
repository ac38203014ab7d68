"""4-bit quantization from scratch (lora_edu.quantization, notebook 10) against bitsandbytes: the NF4 code, the
packed bytes and absmax of `quantize_4bit`, and `dequantize_4bit`, on random shapes (sizes not divisible by the
block included), dtypes and block sizes; then properties that hold without bitsandbytes, and bad input."""
import logging
import math

import pytest
import torch

from lora_edu import quantization as Q

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
SHAPES = [(1,), (7,), (64,), (100,), (3, 1, 5), (33, 65), (5, 96), (256, 48), (128, 128), (2, 4097)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BLOCKS = [64, 128, 256]


@pytest.fixture(scope="module")
def bnb():
    functional = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is not installed here")
    from bitsandbytes.backends.default import ops as reference_ops
    # bitsandbytes wraps its pure-PyTorch path in torch.compile (about 25 s to compile on a CPU): same results
    # without it, so the tests run it eagerly.
    with torch._dynamo.config.patch(disable=True):
        yield functional, reference_ops


def random_weight(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def test_nf4_code_is_bitsandbytes_table_bit_for_bit(bnb):
    functional, _ = bnb
    assert torch.equal(Q.nf4_code(), functional.get_4bit_type("nf4", device="cpu"))


@pytest.mark.parametrize("blocksize", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_equals_bitsandbytes_byte_for_byte(bnb, shape, dtype, blocksize):
    functional, reference_ops = bnb
    weight = random_weight(shape, dtype, seed=sum(shape) + blocksize)
    packed, state = functional.quantize_4bit(weight, blocksize=blocksize, quant_type="nf4")
    ours = Q.quantize_4bit(weight, blocksize=blocksize)
    assert ours.packed.dtype == torch.uint8 and ours.packed.shape == packed.shape
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.absmax, state.absmax)
    assert len(ours.absmax) == math.ceil(weight.numel() / blocksize)

    # Dequantization: equal to bitsandbytes' own pure-PyTorch path exactly. Its public CPU function takes a native
    # kernel that on AVX512 CPUs misreads the absmax when the rows do not hold whole blocks (the last dimension
    # even but not a multiple of the block size; bitsandbytes 0.50.2): where the public result differs from ours,
    # it differs from bitsandbytes' own reference too, and the shape is one of those.
    restored = Q.dequantize_4bit(ours)
    reference = reference_ops._dequantize_4bit_compute(packed.reshape(-1), state.absmax, state.code, blocksize,
                                                       state.shape, dtype)
    assert restored.dtype == dtype and restored.shape == weight.shape
    assert torch.equal(restored, reference)
    public = functional.dequantize_4bit(packed, state).reshape(weight.shape)  # its CPU kernel: 1-D comes back (1, n)
    if not torch.equal(public, restored):
        assert not torch.equal(public, reference) and shape[-1] % 2 == 0 and shape[-1] % blocksize != 0, shape


@pytest.mark.parametrize("blocksize", [2, 64, 100])
@pytest.mark.parametrize("shape", [(5,), (64, 3), (17, 19)], ids=str)
def test_each_number_goes_to_its_nearest_code_value(shape, blocksize):
    weight = random_weight(shape, torch.float32, seed=3)
    before = weight.clone()
    quantized = Q.quantize_4bit(weight, blocksize=blocksize)
    assert torch.equal(weight, before), "quantize_4bit must not change its input"
    code, flat = Q.nf4_code(), weight.reshape(-1)
    absmax = quantized.absmax[torch.arange(flat.numel()) // blocksize]
    restored = Q.dequantize_4bit(quantized).reshape(-1)
    distance_to_nearest = (flat[:, None] / absmax[:, None] - code).abs().min(dim=1).values
    assert torch.allclose((flat / absmax - restored / absmax).abs(), distance_to_nearest, atol=1e-6)
    assert torch.equal(quantized.absmax, torch.stack([b.abs().max() for b in flat.split(blocksize)]))


def test_nf4_code_shape_zero_and_normal_quantiles():
    code = Q.nf4_code()
    assert code.shape == (16,) and code.dtype == torch.float32
    assert code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1
    assert (code < 0).sum() == 7 and (code > 0).sum() == 8 and bool((code[1:] > code[:-1]).all())
    # quantiles of N(0, 1): values are denser near 0 than near ±1
    gaps = code[1:] - code[:-1]
    assert gaps[7] < gaps[0] and gaps[8] < gaps[-1]


def test_nf4_beats_int4_and_fp4_on_normal_weights():
    weight = random_weight((256, 256), torch.float32, seed=11)
    errors = {name: Q.quantization_error(weight, 64, code)
              for name, code in [("nf4", Q.nf4_code()), ("int4", Q.int4_code()), ("fp4", Q.fp4_code())]}
    assert errors["nf4"] < errors["int4"] and errors["nf4"] < errors["fp4"], errors
    assert 0.02 < errors["nf4"] < 0.2, errors


def test_other_codes():
    assert torch.equal(Q.int4_code() * 7, torch.arange(-7.0, 8.0))
    fp4 = Q.fp4_code()
    assert fp4.shape == (15,) and torch.equal(fp4, -fp4.flip(0)) and fp4[-1] == 1 and (fp4 == 0).sum() == 1


def test_bits_per_parameter_and_bytes():
    assert Q.bits_per_parameter(64) == 4.5
    assert Q.bits_per_parameter(64, double_quant=True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert 0.126 < Q.bits_per_parameter(64, double_quant=True) - 4 < 0.128          # QLoRA §3: 0.127
    weight = torch.zeros(1024, 4096)
    assert Q.quantize_4bit(weight).nbytes * 8 == Q.bits_per_parameter(64) * weight.numel()


def test_all_zero_block_round_trips_to_zero():
    weight = torch.cat([torch.zeros(64), torch.ones(64)])
    assert torch.equal(Q.dequantize_4bit(Q.quantize_4bit(weight)), weight)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(weight=torch.arange(8)), TypeError, ["weight", "floating-point"]),
    (dict(weight=[0.1, 0.2]), TypeError, ["weight", "tensor"]),
    (dict(weight=torch.zeros(0)), ValueError, ["weight", "empty"]),
    (dict(weight=torch.tensor([1.0, float("nan")])), ValueError, ["weight", "finite"]),
    (dict(weight=torch.ones(8), blocksize=1), ValueError, ["blocksize", ">= 2"]),
    (dict(weight=torch.ones(8), blocksize=64.0), TypeError, ["blocksize", "int"]),
    (dict(weight=torch.ones(8), code=torch.linspace(-1, 1, 17)), ValueError, ["code", "16"]),
    (dict(weight=torch.ones(8), code=torch.tensor([1.0, -1.0])), ValueError, ["code", "sorted"]),
    (dict(weight=torch.ones(8), code=torch.tensor([-2.0, 2.0])), ValueError, ["code", "[-1, 1]"]),
    (dict(weight=torch.ones(8), code=torch.tensor([-1, 0, 1])), ValueError, ["code", "float"]),
])
def test_bad_input_is_refused_by_name(kwargs, error, words):
    with pytest.raises(error) as raised:
        Q.quantize_4bit(**kwargs)
    assert all(w in str(raised.value) for w in words), raised.value


def test_bad_input_of_the_other_functions():
    with pytest.raises(TypeError, match="quantized must be a Quantized4bit"):
        Q.dequantize_4bit(torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="double_quant"):
        Q.bits_per_parameter(64, double_quant="yes")
    with pytest.raises(ValueError, match="blocksize"):
        Q.bits_per_parameter(0)
