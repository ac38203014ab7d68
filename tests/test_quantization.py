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
    # kernel that on AVX512 CPUs misreads the absmax when the rows do not hold whole blocks (the last dimension a
    # multiple of 16 but not of the block size; bitsandbytes 0.50.2): where the public result differs from ours,
    # it differs from bitsandbytes' own reference too, and the shape is one of those.
    restored = Q.dequantize_4bit(ours)
    reference = reference_ops._dequantize_4bit_compute(packed.reshape(-1), state.absmax, state.code, blocksize,
                                                       state.shape, dtype)
    assert restored.dtype == dtype and restored.shape == weight.shape
    assert torch.equal(restored, reference)
    public = functional.dequantize_4bit(packed, state).reshape(weight.shape)  # its CPU kernel: 1-D comes back (1, n)
    if not torch.equal(public, restored):
        assert not torch.equal(public, reference) and shape[-1] % 16 == 0 and shape[-1] % blocksize != 0, shape


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


@pytest.mark.parametrize("in_features, out_features, bias", [(64, 32, True), (128, 64, False), (100, 30, True),
                                                             (256, 96, True), (48, 40, True)])
def test_linear4bit_equals_bitsandbytes_linear4bit(bnb, in_features, out_features, bias):
    import bitsandbytes
    torch.manual_seed(in_features)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    ours = Q.Linear4bit(linear)
    theirs = bitsandbytes.nn.Linear4bit(in_features, out_features, bias=bias, compute_dtype=torch.float32,
                                        compress_statistics=False, quant_type="nf4")
    theirs.weight = bitsandbytes.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                               compress_statistics=False, blocksize=64)
    if bias:
        theirs.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    theirs = theirs.to("cpu")                                   # quantizes the weight
    assert torch.equal(ours.packed.reshape(-1), theirs.weight.data.reshape(-1))
    assert ours.nbytes == theirs.weight.data.numel() + 4 * theirs.weight.quant_state.absmax.numel()
    x = torch.randn(5, in_features, requires_grad=True)       # with gradients: bitsandbytes' float32 CPU path
    y_ours, y_theirs = ours(x), theirs(x)
    (grad_ours,) = torch.autograd.grad(y_ours.square().sum(), x)
    (grad_theirs,) = torch.autograd.grad(y_theirs.square().sum(), x)
    if in_features % 16 == 0 and in_features % 64:             # the AVX512 dequantization bug (see above):
        _, reference_ops = bnb                                   # ours equals bitsandbytes' own reference path
        state = theirs.weight.quant_state
        reference = reference_ops._dequantize_4bit_compute(theirs.weight.data.reshape(-1), state.absmax, state.code,
                                                           64, state.shape, torch.float32)
        assert torch.equal(y_ours, torch.nn.functional.linear(x, reference, linear.bias if bias else None))
        return
    assert torch.equal(y_ours, y_theirs) and torch.equal(grad_ours, grad_theirs)
    assert not any(p.requires_grad for p in ours.parameters())


def test_linear4bit_is_close_to_the_original_and_refuses_bad_input():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    layer = Q.Linear4bit(linear, compute_dtype=torch.bfloat16)
    x = torch.randn(3, 256)
    y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (3, 64)
    assert (y - linear(x)).abs().max() < 0.1 * linear(x).abs().max()
    assert layer.nbytes == 256 * 64 // 2 + 4 * 256 * 64 // 64
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        Q.Linear4bit(torch.nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="compute_dtype must be"):
        Q.Linear4bit(linear, compute_dtype=torch.int8)


def test_double_quantization_of_absmax():
    weight = random_weight((1024, 1024), torch.float32, seed=5)
    absmax = Q.quantize_4bit(weight).absmax
    double = Q.double_quantize_absmax(absmax)
    restored = Q.dequantize_absmax(double)
    assert restored.shape == absmax.shape and double.codes.dtype == torch.int8
    spread = (absmax - absmax.mean()).abs().max()
    assert (restored - absmax).abs().max() <= spread / 254 * 1.001          # half a step of 127 levels
    assert 0 < (restored - absmax).abs().max()
    bits = 8 * double.nbytes / weight.numel()
    assert bits == pytest.approx(8 / 64 + 32 / (64 * 256), abs=1e-4)        # ≈ 0.127 bits per parameter
    with pytest.raises(ValueError, match="absmax must be"):
        Q.double_quantize_absmax(torch.tensor([1.0, -1.0]))
    with pytest.raises(TypeError, match="quantized must be"):
        Q.dequantize_absmax(absmax)


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


def bnb_quantized(model):
    """``model`` with every nn.Linear replaced by bitsandbytes' NF4 Linear4bit (no double quantization)."""
    import bitsandbytes
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear):
            layer = bitsandbytes.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                               compute_dtype=torch.float32, compress_statistics=False,
                                               quant_type="nf4")
            layer.weight = bitsandbytes.nn.Params4bit(module.weight.data.clone(), requires_grad=False,
                                                      quant_type="nf4", compress_statistics=False, blocksize=64)
            if module.bias is not None:
                layer.bias = torch.nn.Parameter(module.bias.data.clone(), requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer.to("cpu"))
    return model


@pytest.mark.parametrize("widths, r", [((64, 40, 24), 4), ((128, 100, 30), 8), ((100, 7, 50), 1)], ids=str)
def test_qlora_forward_and_gradients_equal_peft_on_bitsandbytes(bnb, widths, r):
    import copy
    import warnings

    import peft

    import lora_edu
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(widths[0], widths[1]), torch.nn.ReLU(),
                               torch.nn.Linear(widths[1], widths[2]))
    config = dict(r=r, lora_alpha=2 * r, target_modules=["0", "2"])
    ours = lora_edu.add_lora(Q.quantize_linear_layers(copy.deepcopy(base)), lora_edu.LoraConfig(**config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(bnb_quantized(copy.deepcopy(base)), peft.LoraConfig(**config))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, layer in lora_edu.lora_layers(ours).items():
            assert isinstance(layer.base, Q.Linear4bit)
            twin = theirs.base_model.model.get_submodule(name)
            layer.lora_B["default"].copy_(torch.randn(layer.lora_B["default"].shape, generator=generator))
            twin.lora_A["default"].weight.copy_(layer.lora_A["default"])
            twin.lora_B["default"].weight.copy_(layer.lora_B["default"])
    x = torch.randn(6, widths[0], generator=generator, requires_grad=True)  # with gradients: bitsandbytes' fp32 path
    y_ours, y_theirs = ours(x), theirs(x)
    assert torch.equal(y_ours, y_theirs)
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    for name, layer in lora_edu.lora_layers(ours).items():
        twin = theirs.base_model.model.get_submodule(name)
        assert torch.equal(layer.lora_A["default"].grad, twin.lora_A["default"].weight.grad), name
        assert torch.equal(layer.lora_B["default"].grad, twin.lora_B["default"].weight.grad), name
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        f"{m}.lora_{f}.default" for m in ("0", "2") for f in "AB"}


def test_lora_on_a_4bit_base_refuses_to_merge_and_pissa():
    import lora_edu
    torch.manual_seed(0)
    model = Q.quantize_linear_layers(torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 2)), skip=["1"])
    assert isinstance(model[0], Q.Linear4bit) and isinstance(model[1], torch.nn.Linear)
    packed = model[0].packed.clone()
    with pytest.raises(ValueError, match="PiSSA.*Linear4bit"):
        lora_edu.add_lora(model, lora_edu.LoraConfig(r=2, init_lora_weights="pissa", target_modules=["0"]))
    lora_edu.add_lora(model, lora_edu.LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match="4-bit"):
        lora_edu.merge_lora(model)
    assert torch.equal(model[0].base.packed, packed) and not model[0].merged
    with pytest.raises(ValueError, match="skip names modules this model does not have"):
        Q.quantize_linear_layers(torch.nn.Sequential(torch.nn.Linear(4, 4)), skip=["head"])
    with pytest.raises(TypeError, match="Linear4bit\\(model\\)"):
        Q.quantize_linear_layers(torch.nn.Linear(4, 4))


def test_merge_lora_refuses_a_4bit_layer_before_merging_any():
    import lora_edu
    torch.manual_seed(0)
    model = Q.quantize_linear_layers(torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 2)), skip=["0"])
    lora_edu.add_lora(model, lora_edu.LoraConfig(r=2, target_modules=["0", "1"], init_lora_weights=False))
    weight = model[0].base.weight.clone()
    with pytest.raises(ValueError, match=r"\['1'\] have 4-bit bases.*nothing was merged"):
        lora_edu.merge_lora(model)
    assert torch.equal(model[0].base.weight, weight) and not model[0].merged
