"""lora_edu's LoRA on a `transformers` model (notebook 08): on the tiny LlamaForCausalLM, `add_lora` and PEFT's
`get_peft_model` give the same logits and the same gradients of every A and B (bit-identical on the CPU, within
1e-6 elsewhere), and adapters saved by either load in the other. GPT-2-style Conv1D layers are refused with a
clear error (lora_edu's decision; PEFT needs fan_in_fan_out=True for them)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from lora_edu import LoraConfig, add_lora, hf_model, load_peft_adapter, save_peft_adapter
from lora_edu.lora import lora_layers

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
hf_model.quiet_transformers()

TARGETS = [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           r"model\.layers\.[02]\.mlp\.(up|down)_proj"]
IDS = ["q-v", "every-projection", "regex"]
OFF_CPU_TOL = 1e-6


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical on the CPU; within OFF_CPU_TOL (relative to the size of ``b``) on other devices."""
    if a.device.type == "cpu":
        return torch.equal(a, b)
    return (a - b).abs().max().item() <= OFF_CPU_TOL * max(1.0, b.abs().max().item())


def make_pair(targets, r=4, alpha=8, device="cpu"):
    """The tiny Llama adapted by lora_edu and by PEFT with the same non-zero A and B (as after training)."""
    plain = hf_model.make_tiny_llama(seed=0).to(device).eval()
    ours = add_lora(copy.deepcopy(plain), LoraConfig(target_modules=targets, r=r, lora_alpha=alpha))
    theirs = peft.get_peft_model(copy.deepcopy(plain), peft.LoraConfig(target_modules=targets, r=r,
                                                                        lora_alpha=alpha, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            twin = theirs.base_model.model.get_submodule(name)
            layer.lora_B["default"].copy_(torch.randn(layer.lora_B["default"].shape, generator=g) * 0.3)
            twin.lora_A["default"].weight.copy_(layer.lora_A["default"])
            twin.lora_B["default"].weight.copy_(layer.lora_B["default"])
    return plain, ours, theirs


def tokens(device="cpu"):
    return torch.randint(0, hf_model.TINY_LLAMA_CONFIG["vocab_size"], (3, 40),
                         generator=torch.Generator().manual_seed(2)).to(device)


@pytest.mark.parametrize("targets", TARGETS, ids=IDS)
def test_same_layers_and_trainable_counts(targets):
    _, ours, theirs = make_pair(targets)
    peft_layers = sorted(n for n, m in theirs.base_model.model.named_modules()
                         if isinstance(m, peft.tuners.lora.Linear))
    assert sorted(lora_layers(ours)) == peft_layers
    trainable, total = theirs.get_nb_trainable_parameters()
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in ours.parameters()) == total


@pytest.mark.parametrize("targets", TARGETS, ids=IDS)
def test_same_logits_and_gradients(targets):
    plain, ours, theirs = make_pair(targets)
    x = tokens()
    ours_logits, theirs_logits = ours(input_ids=x).logits, theirs(input_ids=x).logits
    assert (ours_logits - plain(input_ids=x).logits).abs().max() > 1e-3  # the adapters do change the logits
    assert same(ours_logits, theirs_logits)
    weights = torch.randn(ours_logits.shape, generator=torch.Generator().manual_seed(3))
    (ours_logits * weights).sum().backward()
    (theirs_logits * weights).sum().backward()
    for name, layer in lora_layers(ours).items():
        twin = theirs.base_model.model.get_submodule(name)
        assert same(layer.lora_A["default"].grad, twin.lora_A["default"].weight.grad), name
        assert same(layer.lora_B["default"].grad, twin.lora_B["default"].weight.grad), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_logits_on_the_gpu():
    _, ours, theirs = make_pair(TARGETS[1], device="cuda")
    with torch.no_grad():
        assert same(ours(input_ids=tokens("cuda")).logits, theirs(input_ids=tokens("cuda")).logits)


def test_adapter_saved_by_lora_edu_loads_in_peft(tmp_path):
    plain, ours, _ = make_pair(TARGETS[1])
    save_peft_adapter(ours, tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(plain), tmp_path)
    with torch.no_grad():
        assert same(loaded(input_ids=tokens()).logits, ours(input_ids=tokens()).logits)


def test_adapter_saved_by_peft_loads_in_lora_edu(tmp_path):
    plain, _, theirs = make_pair(TARGETS[0])
    theirs.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    ours = load_peft_adapter(copy.deepcopy(plain), tmp_path)
    with torch.no_grad():
        assert same(ours(input_ids=tokens()).logits, theirs(input_ids=tokens()).logits)


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_conv1d_is_refused_with_a_clear_error_and_the_model_is_left_alone():
    model = tiny_gpt2()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match=r"'transformer.h.0.attn.c_attn' \(Conv1D\).*stores its weight transposed"
                                        r".*fan_in_fan_out=True"):
        add_lora(model, LoraConfig(target_modules=["c_attn"], r=2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not lora_layers(model)


def test_conv1d_weight_is_transposed_and_peft_needs_fan_in_fan_out(tmp_path):
    model = tiny_gpt2()
    conv = model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 16)
    assert tuple(conv.weight.shape) == (16, 48)  # (in, out): the transpose of nn.Linear's (out, in)
    assert torch.allclose(conv(x), x @ conv.weight + conv.bias)
    config = peft.LoraConfig(target_modules=["c_attn"], r=2, fan_in_fan_out=True, init_lora_weights=False)
    adapted = peft.get_peft_model(copy.deepcopy(model), config)
    layer = adapted.base_model.model.transformer.h[0].attn.c_attn
    delta = layer.get_delta_weight("default")
    assert tuple(delta.shape) == (16, 48)  # PEFT transposes ΔW to the Conv1D's orientation
    adapted.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="fan_in_fan_out=True, which lora_edu does not implement"):
        load_peft_adapter(copy.deepcopy(model), tmp_path)
