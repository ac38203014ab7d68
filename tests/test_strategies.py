"""Tests of lora_edu.strategies: what each strategy trains, its output at init, merging, bad input."""
import copy

import pytest
import torch

from lora_edu import models, strategies
from lora_edu.lora import LoRALinear
from lora_edu.measure import count_trainable


def small_gpt():
    torch.manual_seed(0)
    return models.TinyGPT(models.GPTConfig(d_model=16, n_heads=2, n_layers=2, mlp_hidden=32, context=8)).eval()


def ids():
    return torch.randint(0, 97, (3, 8), generator=torch.Generator().manual_seed(1))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", strategies.STRATEGIES)
def test_every_strategy_starts_at_or_near_the_base_output(name):
    model = small_gpt()
    before = model(ids())
    strategies.apply_strategy(model, name)
    after = model(ids())
    tolerance = 2e-2 if name == "adapters" else 1e-6  # adapters start near, not at, the identity
    assert torch.allclose(before, after, atol=tolerance)
    assert strategies.strategy_of(model) == name


def test_adapters_with_zero_init_scale_start_exactly_at_the_identity():
    model = small_gpt()
    before = model(ids())
    strategies.apply_strategy(model, "adapters", init_scale=0.0)
    assert torch.equal(model(ids()), before)


def test_trainable_counts_follow_the_formulas():
    d, h, layers = 16, 32, 2
    linears = layers * (4 * d * d + 2 * d * h)
    counts = {}
    for name, config in [("full", {}), ("dense_delta", {}), ("lora", {"r": 2}), ("adapters", {"bottleneck": 4}),
                         ("head_only", {}), ("bias_only", {})]:
        counts[name] = count_trainable(strategies.apply_strategy(small_gpt(), name, **config)).trainable
    total = models.count_parameters(small_gpt())
    assert counts["full"] == total
    assert counts["dense_delta"] == linears
    assert counts["lora"] == layers * (4 * 2 * (d + d) + 2 * 2 * (d + h))
    assert counts["adapters"] == layers * 2 * (2 * d * 4 + 4 + d)
    assert counts["head_only"] == d * 97 + 97
    assert counts["bias_only"] == sum(p.numel() for n, p in small_gpt().named_parameters() if n.endswith("bias"))


def test_only_the_strategy_parameters_get_gradients():
    for name, expected in [("dense_delta", "delta_weight"), ("adapters", ("down.", "up.")),
                           ("lora", ("lora_A", "lora_B")), ("head_only", "lm_head.")]:
        model = strategies.apply_strategy(small_gpt(), name)
        model(ids()).sum().backward()
        with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
        assert with_grad and all(any(e in n for e in ([expected] if isinstance(expected, str) else expected))
                                 for n in with_grad), (name, with_grad)


def test_adapters_follow_attention_and_mlp_sublayers():
    model = strategies.apply_strategy(small_gpt(), "adapters", bottleneck=3)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, strategies.SerialAdapter)]
    assert wrapped == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert model.blocks[0].attn.down.weight.shape == (3, 16)


@pytest.mark.parametrize("name", ["lora", "dense_delta"])
def test_merge_and_unload_gives_the_base_architecture_and_same_outputs(name):
    model = strategies.apply_strategy(small_gpt(), name)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    before = model(ids())
    assert not getattr(model, "finetuning_merged", False)
    strategies.merge_and_unload(model)
    assert strategies.strategy_of(model) == name and model.finetuning_merged is True  # the name stays plain
    assert not any(isinstance(m, (LoRALinear, strategies.DenseDeltaLinear)) for m in model.modules())
    assert set(model.state_dict()) == set(small_gpt().state_dict())
    assert torch.allclose(model(ids()), before, atol=1e-5)
    assert not torch.allclose(model(ids()), small_gpt()(ids()), atol=1e-3)
    with pytest.raises(ValueError, match="already been merged"):
        strategies.merge_and_unload(model)


def test_merge_refuses_adapters_and_plain_models():
    adapted = strategies.apply_strategy(small_gpt(), "adapters")
    with pytest.raises(ValueError, match="'adapters' cannot be merged; mergeable strategies: dense_delta, lora"):
        strategies.merge_and_unload(adapted)
    with pytest.raises(ValueError, match="no fine-tuning strategy"):
        strategies.merge_and_unload(small_gpt())
    with pytest.raises(ValueError, match="cannot be merged"):
        strategies.merge_and_unload(strategies.apply_strategy(small_gpt(), "full"))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        strategies.merge_and_unload(None)


def test_dense_delta_merge_unmerge_round_trip():
    layer = strategies.DenseDeltaLinear(torch.nn.Linear(4, 3))
    w0 = layer.base.weight.clone()
    with torch.no_grad():
        layer.delta_weight.fill_(0.5)
    x = torch.randn(2, 4)
    unmerged = layer(x)
    layer.merge()
    assert torch.allclose(layer(x), unmerged, atol=1e-6)
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert torch.allclose(layer.base.weight, w0, atol=1e-6)
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear"):
        strategies.DenseDeltaLinear(torch.nn.Conv1d(1, 1, 1))


def test_trainable_state_dict_is_what_must_be_stored():
    model = strategies.apply_strategy(small_gpt(), "lora", r=2)
    stored = strategies.trainable_state_dict(model)
    assert stored and all(k.endswith(("lora_A.default", "lora_B.default")) for k in stored)
    full = strategies.apply_strategy(small_gpt(), "full")
    assert set(strategies.trainable_state_dict(full)) == set(full.state_dict())


def test_digits_mlp_defaults():
    model = strategies.apply_strategy(models.DigitsMLP(), "lora", r=4, lora_alpha=8)
    assert count_trainable(model).trainable == 4 * (64 + 256) + 4 * (256 + 256)
    model = strategies.apply_strategy(models.DigitsMLP(), "adapters", bottleneck=8)
    assert count_trainable(model).trainable == 2 * (2 * 256 * 8 + 8 + 256)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: strategies.apply_strategy(m, "prefix_tuning"), ValueError,
     "name='prefix_tuning' is not allowed; allowed values: 'full', 'dense_delta', 'adapters', 'lora'"),
    (lambda m: strategies.apply_strategy(m, "lora", rank=4), TypeError, "no option.*rank.*allowed options: target_modules, r"),
    (lambda m: strategies.apply_strategy(m, "full", r=4), TypeError, "allowed options: none"),
    (lambda m: strategies.apply_strategy(m, "lora", r=0), ValueError, "r must be an int >= 1"),
    (lambda m: strategies.apply_strategy(m, "lora", lora_alpha=-1.0), ValueError, "lora_alpha must be a finite number > 0"),
    (lambda m: strategies.apply_strategy(m, "dense_delta", target_modules=["nope"]), ValueError,
     "matches no module of this model; modules that exist: .*q_proj"),
    (lambda m: strategies.apply_strategy(m, "dense_delta", target_modules=["attn"]), TypeError, "not a Linear"),
    (lambda m: strategies.apply_strategy(m, "lora", target_modules=["q_prj"]), ValueError,
     r"^target_modules=\['q_prj'\] matches no module of this model; modules that exist: .*q_proj"),
    (lambda m: strategies.apply_strategy(m, "lora", target_modules="q_proj("), ValueError,
     "target_modules='q_proj\\(' is not a valid regular expression"),
    (lambda m: strategies.apply_strategy(m, "dense_delta", target_modules=[]), ValueError, "must not be empty"),
    (lambda m: strategies.apply_strategy(m, "adapters", bottleneck=0), ValueError, r"bottleneck must be an int >= 1 \(the adapter's width m\), got 0"),
    (lambda m: strategies.apply_strategy(m, "adapters", init_scale=float("nan")), ValueError, "init_scale must be a finite number >= 0, got nan"),
    (lambda m: strategies.apply_strategy(m, "adapters", target_modules=["ln1"]), TypeError, "output width"),
    (lambda m: strategies.apply_strategy(m, "adapters", target_modules=["blocks.0", "blocks.0.attn"]), ValueError,
     "inside other targets"),
    (lambda m: strategies.apply_strategy(m, "head_only", head="classifier"), ValueError,
     "head='classifier' is not a module of this model"),
    (lambda m: strategies.apply_strategy("model", "lora"), TypeError, "model must be a torch.nn.Module"),
])
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, message):
    model = small_gpt()
    before = state(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(error, match=message):
        call(model)
    assert state(model).keys() == before.keys()
    assert all(torch.equal(state(model)[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert strategies.strategy_of(model) is None


def test_a_second_strategy_is_refused():
    model = strategies.apply_strategy(small_gpt(), "lora")
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="already has a fine-tuning strategy"):
        strategies.apply_strategy(model, "adapters")
    assert model.state_dict().keys() == snapshot.keys()


def test_model_without_defaults_needs_targets():
    plain = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="target_modules must be given"):
        strategies.apply_strategy(plain, "lora")
    with pytest.raises(ValueError, match="target_modules must be given"):
        strategies.apply_strategy(plain, "adapters")
    strategies.apply_strategy(plain, "dense_delta", target_modules=["0"])
    assert count_trainable(plain).trainable == 9


def test_bias_only_needs_biases():
    model = torch.nn.Linear(3, 3, bias=False)
    with pytest.raises(ValueError, match="no bias parameters"):
        strategies.apply_strategy(model, "bias_only")


def test_lora_strategy_with_explicit_targets_adds_lora_only_there():
    model = strategies.apply_strategy(small_gpt(), "lora", target_modules=["q_proj", "v_proj"], r=2)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped and all(n.endswith(("q_proj", "v_proj")) for n in wrapped)


def test_adapter_merge_error_names_the_gelu_inside_the_adapter():
    model = strategies.apply_strategy(small_gpt(), "adapters")
    with pytest.raises(ValueError, match="gelu inside each adapter"):
        strategies.merge_and_unload(model)
