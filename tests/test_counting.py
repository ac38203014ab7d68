"""Unit tests for lora_edu.counting (notebook 03)."""
import pytest

from lora_edu import counting as c


def test_single_matrix_counts():
    assert c.full_params(10, 10) == 100
    assert c.lora_params(10, 10, 2) == 40
    assert c.full_params(2500, 2500) == 6_250_000
    assert c.lora_params(2500, 2500, 8) == 40_000
    assert c.savings_ratio(2500, 2500, 8) == 156.25
    assert c.lora_params(4096, 11008, 16) == 16 * (4096 + 11008)


def test_break_even_rank():
    assert c.break_even_rank(10, 10) == 5.0
    assert c.break_even_rank(768, 3072) == pytest.approx(614.4)
    r = c.break_even_rank(300, 200)
    assert c.lora_params(300, 200, int(r)) == c.full_params(300, 200)  # r* = 120 exactly: a tie


@pytest.mark.parametrize("args, error, words", [
    ((0, 10, 2), ValueError, "d must be an int >= 1, got 0"),
    ((10, -3, 2), ValueError, "k must be an int >= 1"),
    ((10, 10, 0), ValueError, r"r must be an int >= 1 and <= 10 \(min\(d, k\) for a 10×10 matrix\)"),
    ((10, 10, 11), ValueError, "got 11"),
    (("10", 10, 2), TypeError, "d must be an int >= 1"),
    ((10, 10.0, 2), TypeError, "k must be an int >= 1"),
    ((10, 10, 2.5), TypeError, "r must be an int"),
    ((10, 10, None), TypeError, "r must be an int"),
    ((True, 10, 1), TypeError, "d must be an int >= 1"),
])
def test_bad_sizes_name_the_parameter(args, error, words):
    with pytest.raises(error, match=words):
        c.lora_params(*args)
    if args[2] == 2:  # the error is in d or k: the other counters reject it too
        with pytest.raises(error, match=words):
            c.full_params(*args[:2])
        with pytest.raises(error, match=words):
            c.break_even_rank(*args[:2])


def test_published_model_totals():
    assert c.count_model_params(c.GPT2_SMALL) == 124_439_808  # the released GPT-2 small weights
    assert c.count_model_params(c.LLAMA_7B) == 6_738_415_616  # the released LLaMA-7B weights
    assert 174e9 < c.count_model_params(c.GPT3_175B) < 176e9


def test_lora_trainable_params_on_models():
    assert c.lora_trainable_params(c.LLAMA_7B, 8) == 4_194_304
    assert c.lora_trainable_params(c.LLAMA_7B, 8, "all") == 19_988_480
    assert c.lora_trainable_params(c.GPT3_175B, 4) == 18_874_368
    assert c.lora_trainable_params(c.GPT2_SMALL, 8, ("q", "k", "v")) == 12 * 3 * 8 * 1536
    assert set(c.linear_layer_shapes(c.GPT2_SMALL)) == {"q", "k", "v", "o", "up", "down"}
    assert c.linear_layer_shapes(c.LLAMA_7B)["gate"] == (4096, 11008)


@pytest.mark.parametrize("targets, words", [(("q", "x"), r"targets \['x'\] are not layers"), ((), "non-empty"),
                                            ("q", "non-empty"),
                                            (("q", "q"), r"targets must name each layer once, but \['q'\]")])
def test_bad_targets(targets, words):
    with pytest.raises(ValueError, match=words):
        c.lora_trainable_params(c.LLAMA_7B, 8, targets)


def test_bad_shape_and_rank_for_model():
    with pytest.raises(TypeError, match="shape must be a TransformerShape"):
        c.count_model_params("llama")
    with pytest.raises(ValueError, match=r"r must be an int >= 1 and <= 768"):
        c.lora_trainable_params(c.GPT2_SMALL, 769)


def test_training_memory():
    full = c.training_memory_bytes(1000, 1000, "fp32")
    assert full["total"] == 16_000 and full["optimizer"] == 8000
    mixed = c.training_memory_bytes(1000, 1000, "bf16-mixed")
    assert mixed["total"] == 16_000 and mixed["weights"] == 2000 and mixed["master_weights"] == 4000
    lora = c.training_memory_bytes(1000, 10, "bf16-mixed")
    assert lora["total"] == 2000 + 10 * 14
    with pytest.raises(ValueError, match="precision='int8' is not allowed; allowed values: 'fp32', 'bf16-mixed'"):
        c.training_memory_bytes(10, 10, "int8")
    with pytest.raises(ValueError, match=r"trainable_params \(11\) must not exceed total_params \(10\)"):
        c.training_memory_bytes(10, 11)
    with pytest.raises(TypeError, match="total_params must be an int >= 1, got float"):
        c.training_memory_bytes(1e9, 10)


def test_checkpoint_and_formatting():
    assert c.checkpoint_bytes(4_194_304, "bf16") == 8_388_608
    assert c.checkpoint_bytes(10, "fp32") == 40
    with pytest.raises(ValueError, match="dtype='float8' is not allowed; allowed values: 'fp32', 'bf16', 'fp16'"):
        c.checkpoint_bytes(10, "float8")
    with pytest.raises(TypeError, match="params must be an int >= 1, got str"):
        c.checkpoint_bytes("10")
    assert c.format_count(4_194_304) == "4.19M"
    assert c.format_count(6_738_415_616) == "6.74B"
    assert c.format_count(40) == "40"
    assert c.format_bytes(8_388_608) == "8.4 MB"
    assert c.format_bytes(26_953_662_464) == "27.0 GB"
    assert c.format_bytes(512) == "512 B"
    with pytest.raises(ValueError, match=r"n must be a finite number >= 0 \(a number of bytes\), got -1"):
        c.format_bytes(-1)
    with pytest.raises(TypeError, match="n must be a finite number >= 0, got str"):
        c.format_count("12")


@pytest.mark.parametrize("n, count, size", [
    (999, "999", "999 B"), (1000, "1k", "1.0 kB"), (999_999, "1M", "1.0 MB"), (999_960, "1M", "1.0 MB"),
    (999_949, "1M", "999.9 kB"), (999.6, "1k", "999.6 B"), (999_999_999_999, "1T", "1.0 TB"),
    (2.5e15, "2,500T", "2,500.0 TB"),
])
def test_formatting_rolls_over_to_the_next_unit(n, count, size):
    assert (c.format_count(n), c.format_bytes(n)) == (count, size)


def test_activation_bytes_follow_the_published_formula():
    # Korthikanti et al. 2022, Eq. 1: s·b·h·(34 + 5as/h) per layer; GPT-3 175B at s = 2048, b = 1
    per_layer = 2048 * 1 * 12288 * (34 + 5 * 96 * 2048 / 12288)
    assert c.activation_bytes(c.GPT3_175B, n_heads=96, batch=1, seq_len=2048) == 96 * per_layer
    one = c.activation_bytes(c.LLAMA_7B, n_heads=32, batch=1, seq_len=512)
    assert c.activation_bytes(c.LLAMA_7B, n_heads=32, batch=4, seq_len=512) == 4 * one    # linear in the batch
    assert c.activation_bytes(c.LLAMA_7B, n_heads=32, batch=1, seq_len=1024) > 2 * one    # faster than linear in s


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_heads=0, batch=1, seq_len=8), "n_heads"), (dict(n_heads=32, batch=0, seq_len=8), "batch"),
    (dict(n_heads=32, batch=1, seq_len=2.5), "seq_len"),
])
def test_activation_bytes_bad_input(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        c.activation_bytes(c.LLAMA_7B, **kwargs)
    with pytest.raises(TypeError, match="shape"):
        c.activation_bytes("llama", 32, 1, 8)
