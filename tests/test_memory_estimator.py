"""Notebook 10's memory estimator (lora_edu.counting.finetuning_memory_bytes), the Llama shapes with grouped-query
attention, and measure.saved_activation_bytes."""
import pytest
import torch

from lora_edu import counting as c
from lora_edu import measure
from lora_edu.quantization import bits_per_parameter


def test_llama_shapes_match_their_published_parameter_counts():
    # Llama 2's released models: 6,738,415,616 / 13,015,864,320 / 68,976,648,192 parameters (Hugging Face configs)
    assert c.count_model_params(c.LLAMA2_7B) == 6_738_415_616 == c.count_model_params(c.LLAMA_7B)
    assert c.count_model_params(c.LLAMA2_13B) == 13_015_864_320
    assert c.count_model_params(c.LLAMA2_70B) == 68_976_648_192
    assert 65.0e9 < c.count_model_params(c.LLAMA_65B) < 65.5e9


def test_grouped_query_attention_narrows_k_and_v_only():
    layers = c.linear_layer_shapes(c.LLAMA2_70B)
    assert layers["q"] == layers["o"] == (8192, 8192)
    assert layers["k"] == layers["v"] == (8192, 1024) and c.LLAMA2_70B.kv_dim == 1024
    assert c.linear_layer_shapes(c.LLAMA_7B)["k"] == (4096, 4096)       # shapes without head counts are unchanged
    assert c.lora_trainable_params(c.LLAMA2_70B, 8, ("k",)) == 80 * 8 * (8192 + 1024)


def test_lora_counts_match_litgpt_trainable_parameters():
    # litgpt's resource table: 4,194,304 (7B) and 6,553,600 (13B) trainable parameters, r = 8 on q and v
    assert c.lora_trainable_params(c.LLAMA2_7B, 8, ("q", "v")) == 4_194_304
    assert c.lora_trainable_params(c.LLAMA2_13B, 8, ("q", "v")) == 6_553_600


def test_finetuning_memory_parts():
    n = c.count_model_params(c.LLAMA2_7B)
    full = c.finetuning_memory_bytes(c.LLAMA2_7B, "full", seq_len=1)
    assert full["weights"] == 2 * n and full["gradients"] == 2 * n and full["optimizer"] == 12 * n
    assert full["total"] == sum(v for k, v in full.items() if k != "total")
    lora = c.finetuning_memory_bytes(c.LLAMA2_7B, "lora", r=8, targets=("q", "v"), seq_len=1)
    adapter = 4_194_304
    assert lora["weights"] == 2 * (n + adapter) and lora["gradients"] == 2 * adapter and lora["optimizer"] == 12 * adapter
    qlora = c.finetuning_memory_bytes(c.LLAMA2_7B, "qlora", r=8, targets=("q", "v"), seq_len=1)
    block_linear = 32 * sum(a * b for a, b in c.linear_layer_shapes(c.LLAMA2_7B).values())
    expected = round(block_linear * bits_per_parameter(64, True) / 8) + 2 * (n - block_linear) + 2 * adapter
    assert qlora["weights"] == expected and qlora["gradients"] == lora["gradients"]
    assert qlora["optimizer"] == 8 * adapter                           # QLoRA's bf16 adapters: no fp32 master copy
    assert qlora["total"] < lora["total"] < full["total"]


def test_precision_sets_the_bytes_per_trainable_parameter():
    n = c.count_model_params(c.LLAMA2_7B)
    per_trainable = {}
    for precision in c.FINETUNING_PRECISIONS:
        parts = c.finetuning_memory_bytes(c.LLAMA2_7B, "full", seq_len=1, precision=precision)
        per_trainable[precision] = (parts["weights"] + parts["gradients"] + parts["optimizer"]) / n
    assert per_trainable == {"mixed": 16, "bf16": 12, "bf16-true": 8}
    default = c.finetuning_memory_bytes(c.LLAMA_65B, "qlora", r=64, targets="all", seq_len=1)
    assert default == c.finetuning_memory_bytes(c.LLAMA_65B, "qlora", r=64, targets="all", seq_len=1, precision="bf16")
    mixed = c.finetuning_memory_bytes(c.LLAMA_65B, "qlora", r=64, targets="all", seq_len=1, precision="mixed")
    adapter = c.lora_trainable_params(c.LLAMA_65B, 64, "all")
    assert mixed["total"] - default["total"] == 4 * adapter            # the fp32 master copy
    assert c.finetuning_memory_bytes(c.LLAMA2_7B, "lora", seq_len=1) == c.finetuning_memory_bytes(
        c.LLAMA2_7B, "lora", seq_len=1, precision="mixed")


def test_activations_grow_with_tokens_and_shrink_with_checkpointing():
    one = c.finetuning_memory_bytes(c.LLAMA2_13B, "lora", seq_len=512)["activations"]
    two = c.finetuning_memory_bytes(c.LLAMA2_13B, "lora", seq_len=512, batch=2)["activations"]
    assert two == 2 * one
    kept = c.finetuning_memory_bytes(c.LLAMA2_13B, "lora", seq_len=512, checkpointing=True)["activations"]
    assert kept < one / 5
    per_token_block = 6 * 5120 + 2 * 5120 + 3 * 13824 + 8 * 2          # norms, q k v out, SwiGLU, r per target
    assert one == 2 * 512 * 40 * per_token_block + 6 * 512 * 32000


def test_published_figures_are_consistent_with_the_estimate():
    full = c.finetuning_memory_bytes(c.LLAMA_65B, "full", seq_len=512, checkpointing=True)["total"]
    # QLoRA §1: >780 GB -> <48 GB; artidoro/qlora scripts/finetune_guanaco_65b.sh: r = 64 on every linear layer,
    # batch 4, 16 + 512 tokens, gradient checkpointing, bf16 LoRA layers, paged_adamw_32bit
    qlora = c.finetuning_memory_bytes(c.LLAMA_65B, "qlora", r=64, targets="all", batch=4, seq_len=528,
                                      checkpointing=True)
    assert full > 780e9 and qlora["total"] < 48e9


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(method="dora"), ValueError, ["method", "full", "lora", "qlora"]),
    (dict(method="lora", r=0), ValueError, ["r"]),
    (dict(method="lora", batch=0), ValueError, ["batch"]),
    (dict(method="lora", seq_len=1.5), TypeError, ["seq_len"]),
    (dict(method="lora", checkpointing="yes"), TypeError, ["checkpointing"]),
    (dict(method="lora", targets=("q", "x")), ValueError, ["targets", "x"]),
    (dict(method="lora", precision="fp8"), ValueError, ["precision", "mixed", "bf16", "bf16-true"]),
])
def test_bad_input_is_refused_by_name(kwargs, error, words):
    with pytest.raises(error) as raised:
        c.finetuning_memory_bytes(c.LLAMA2_7B, **kwargs)
    assert all(w in str(raised.value) for w in words), raised.value
    with pytest.raises(TypeError, match="shape"):
        c.finetuning_memory_bytes("7B", "lora")


def test_saved_activation_bytes_counts_each_storage_once_and_no_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    # first Linear keeps x (5x8), ReLU keeps its output (5x16, also the second Linear's input), square keeps 5x4
    assert measure.saved_activation_bytes(model, lambda out: out.square().sum(), x) == 4 * (5 * 8 + 5 * 16 + 5 * 4)
    model.requires_grad_(False)
    model[2].requires_grad_(True)                                    # only the last layer trains: x is not needed
    assert measure.saved_activation_bytes(model, lambda out: out.square().sum(), x) == 4 * (5 * 16 + 5 * 4)
    with pytest.raises(TypeError, match="model"):
        measure.saved_activation_bytes("model", lambda out: out, x)
