"""Named adapters on one model (notebook 07): adding a second and third adapter, which one is active and
trainable, set_adapter, delete_adapter, disable_adapter, merging a chosen adapter, mixed batches
(per_example_adapters), lora_state_dict per adapter, and bad input to all of them (each a clear error naming
the parameter and the allowed values, the model left exactly as it was). The cross-checks with PEFT itself
are in test_adapters_vs_peft.py.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lora_edu import (LoraConfig, LoRALinear, active_adapter, adapter_names, add_lora, delete_adapter,
                      disable_adapter, load_peft_adapter, lora_layers, lora_state_dict, merge_lora,
                      per_example_adapters, save_peft_adapter, set_adapter, unmerge_lora)
from lora_edu.lora import BASE
from test_lora_bad_input import assert_unchanged, snapshot
from toy_models import MLP, Nested

# Three adapters with different targets, ranks and scalings (all factors random: ΔW ≠ 0, and different).
CONFIGS = {
    "default": LoraConfig(target_modules=["q", "v"], r=2, lora_alpha=4, init_lora_weights=False),
    "b": LoraConfig(target_modules=["q", "head"], r=4, lora_alpha=8, use_rslora=True, init_lora_weights=False),
    "c": LoraConfig(target_modules=r"blocks\.1\.mlp\.[02]", r=3, lora_alpha=3, init_lora_weights=False),
}
LAYERS_OF = {
    "default": ["blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.v"],
    "b": ["blocks.0.q", "blocks.1.q", "head"],
    "c": ["blocks.1.mlp.0", "blocks.1.mlp.2"],
}


def three_adapters(seed=0, names=("default", "b", "c")):
    """A plain Nested model and a copy with the adapters ``names`` (added in that order), in eval mode."""
    torch.manual_seed(seed)
    plain = Nested().eval()
    model = copy.deepcopy(plain)
    for name in names:
        add_lora(model, CONFIGS[name], name)
    return plain, model.eval()


def inputs(batch=6, seed=1, *leading):
    return torch.randn(batch, *leading, 5, generator=torch.Generator().manual_seed(seed))


def trainable(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def factor_names(name: str) -> list[str]:
    return sorted(f"{m}.lora_{f}.{name}" for m in LAYERS_OF[name] for f in "AB")


def only(plain: nn.Module, model: nn.Module, name: str) -> nn.Module:
    """A reference: the plain model with just adapter ``name`` of ``model`` (as "default"), built anew."""
    ref = add_lora(copy.deepcopy(plain), CONFIGS[name])
    sd = {k.rsplit(".", 1)[0] + ".default": v for k, v in lora_state_dict(model, name).items()}
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected
    return ref.eval()


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Adding adapters; which is active and trainable
# ---------------------------------------------------------------------------------------------

def test_second_and_third_adapter_layers_shapes_and_settings():
    _, model = three_adapters()
    assert adapter_names(model) == ["default", "b", "c"]
    assert active_adapter(model) == "default"
    layers = lora_layers(model)
    assert sorted(layers) == sorted(set(sum(LAYERS_OF.values(), [])))
    for name, modules in LAYERS_OF.items():
        config = CONFIGS[name]
        for module in modules:
            layer = layers[module]
            assert layer.lora_A[name].shape == (config.r, layer.in_features)
            assert layer.lora_B[name].shape == (layer.out_features, config.r)
            assert layer.r[name] == config.r and layer.lora_alpha[name] == config.lora_alpha
            assert layer.scaling[name] == pytest.approx(config.scaling)
            assert layer.lora_config[name] == config
    assert list(layers["blocks.0.q"].lora_A) == ["default", "b"]  # in the order they were added
    assert layers["head"].scaling["b"] == pytest.approx(8 / 2)  # rsLoRA: alpha / sqrt(r)
    # every layer, also one that lacks it, has the model's active adapter
    assert all(layer.active_adapter == "default" for layer in layers.values())
    assert not any(layer.merged for layer in layers.values())
    # the adapters are different (random A and B) and non-zero
    assert not torch.equal(layers["blocks.0.q"].lora_B["default"][:, :2], layers["blocks.0.q"].lora_B["b"][:, :2])
    assert all(torch.count_nonzero(layer.delta_weight(n)) > 0 for layer in layers.values() for n in layer.lora_A)


def test_adapter_names_are_in_the_order_they_were_added():
    """Also when a later adapter's first layer comes before every layer of the earlier ones (here: embed),
    as PEFT's list(peft_model.peft_config)."""
    torch.manual_seed(0)
    model = add_lora(Nested(), CONFIGS["default"])
    add_lora(model, LoraConfig(target_modules=["embed"], r=2, lora_alpha=2), "early")
    add_lora(model, CONFIGS["b"], "b")
    assert adapter_names(model) == ["default", "early", "b"]
    assert active_adapter(model) == "default"


def test_adding_an_adapter_keeps_the_others_and_the_output():
    plain, model = three_adapters(names=("default",))
    x = inputs()
    y = model(x)
    before = {k: v.clone() for k, v in lora_state_dict(model).items()}
    add_lora(model, CONFIGS["b"], "b")
    add_lora(model, CONFIGS["c"], "c")
    assert torch.equal(model(x), y)  # the new adapters arrive inactive
    for key, value in before.items():
        assert torch.equal(lora_state_dict(model, "default")[key], value)
    assert max_diff(y, plain(x)) > 1e-3


def test_first_adapter_is_trainable_later_ones_are_frozen():
    _, model = three_adapters(names=("default",))
    assert trainable(model) == factor_names("default")
    add_lora(model, CONFIGS["b"], "b")
    assert trainable(model) == factor_names("default")  # as PEFT's add_adapter: added frozen, inactive
    add_lora(model, CONFIGS["c"], "c")
    assert trainable(model) == factor_names("default")
    assert active_adapter(model) == "default"


def test_the_first_adapter_of_a_model_without_default_is_active():
    torch.manual_seed(0)
    model = add_lora(Nested(), CONFIGS["b"], "b")
    assert active_adapter(model) == "b" and adapter_names(model) == ["b"]
    assert trainable(model) == factor_names("b")


@pytest.mark.parametrize("name", ["default", "b", "c"])
def test_set_adapter_switches_output_and_trainable_factors(name):
    plain, model = three_adapters()
    x = inputs(seed=2)
    assert set_adapter(model, name) is model
    assert active_adapter(model) == name
    assert all(layer.active_adapter == name for layer in lora_layers(model).values())
    assert trainable(model) == factor_names(name)
    # layers without the adapter run their base alone: the output is that of the plain model plus this adapter
    with torch.no_grad():
        assert max_diff(model(x), only(plain, model, name)(x)) <= 1e-6
        assert max_diff(model(x), plain(x)) > 1e-3
    # gradients reach exactly the active adapter's factors
    model.train()
    model(x).pow(2).sum().backward()
    got = sorted(n for n, p in model.named_parameters() if p.grad is not None)
    assert got == factor_names(name)


def test_set_adapter_back_and_forth_is_exact():
    _, model = three_adapters()
    x = inputs()
    with torch.no_grad():
        y = {name: model(x) for name in ("default",)}
        for name in ("b", "c", "default", "c"):
            set_adapter(model, name)
            y.setdefault(name, model(x))
            assert torch.equal(model(x), y[name])
        assert len({tuple(v.flatten().tolist()) for v in y.values()}) == 3  # three different outputs


# ---------------------------------------------------------------------------------------------
# delete_adapter
# ---------------------------------------------------------------------------------------------

def test_delete_adapter_unwraps_layers_left_without_adapters():
    plain, model = three_adapters()
    x = inputs()
    with torch.no_grad():
        y_default = model(x)
    mlp0_base = model.blocks[1].mlp[0].base
    assert delete_adapter(model, "c") is model
    assert adapter_names(model) == ["default", "b"]
    # the layers only c had are plain nn.Linear again: the very same frozen base layer
    assert type(model.blocks[1].mlp[0]) is nn.Linear and model.blocks[1].mlp[0] is mlp0_base
    assert type(model.blocks[1].mlp[2]) is nn.Linear
    assert torch.equal(model.blocks[1].mlp[0].weight, plain.blocks[1].mlp[0].weight)
    assert not any(k.endswith(".c") for k in model.state_dict())
    delete_adapter(model, "b")
    assert type(model.head) is nn.Linear and list(model.blocks[0].q.lora_A) == ["default"]
    assert adapter_names(model) == ["default"]
    assert sorted(lora_layers(model)) == LAYERS_OF["default"]
    assert trainable(model) == factor_names("default")
    with torch.no_grad():
        assert torch.equal(model(x), y_default)
    assert not any(k.endswith((".b", ".c")) for k in model.state_dict())


def test_delete_then_add_again_under_the_same_name():
    _, model = three_adapters()
    delete_adapter(model, "b")
    add_lora(model, CONFIGS["b"], "b")
    assert sorted(adapter_names(model)) == ["b", "c", "default"] and active_adapter(model) == "default"
    assert sorted(m for m, l in lora_layers(model).items() if "b" in l.lora_A) == LAYERS_OF["b"]


# ---------------------------------------------------------------------------------------------
# disable_adapter
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "b"])
def test_disable_adapter_runs_the_base_and_restores(name):
    plain, model = three_adapters()
    set_adapter(model, name)
    x = inputs()
    with torch.no_grad():
        y = model(x)
        with disable_adapter(model) as inside:
            assert inside is model
            assert torch.equal(model(x), plain(x))
            assert active_adapter(model) == name
        assert torch.equal(model(x), y)
    assert trainable(model) == factor_names(name)


def test_disable_adapter_is_restored_after_an_exception():
    plain, model = three_adapters()
    x = inputs()
    before = snapshot(model)
    with torch.no_grad():
        y = model(x)
        with pytest.raises(RuntimeError, match="inside"):
            with disable_adapter(model):
                assert torch.equal(model(x), plain(x))
                raise RuntimeError("inside the with")
        assert torch.equal(model(x), y)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------
# merge_lora of a chosen adapter
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "b", "c"])
def test_merge_a_chosen_adapter_and_unmerge(name):
    plain, model = three_adapters()
    set_adapter(model, name)
    x = inputs()
    with torch.no_grad():
        y = model(x)
        weights = {n: l.base.weight.clone() for n, l in lora_layers(model).items()}
        deltas = {n: l.delta_weight(name) for n, l in lora_layers(model).items() if name in l.lora_A}
        assert merge_lora(model, name) is model
        for module, layer in lora_layers(model).items():
            assert layer.merged_adapters == ([name] if module in LAYERS_OF[name] else [])
            expected = weights[module] + deltas[module] if module in deltas else weights[module]
            torch.testing.assert_close(layer.base.weight, expected, rtol=0, atol=1e-6)
        assert max_diff(model(x), y) <= 1e-5
        assert unmerge_lora(model) is model
        assert not any(layer.merged for layer in lora_layers(model).values())
        for module, layer in lora_layers(model).items():
            assert max_diff(layer.base.weight, weights[module]) <= 1e-6
        assert max_diff(model(x), y) <= 1e-6


def test_merge_lora_default_is_the_active_adapter():
    _, model = three_adapters()
    set_adapter(model, "b")
    merge_lora(model)
    assert sorted(m for m, l in lora_layers(model).items() if l.merged_adapters == ["b"]) == LAYERS_OF["b"]
    unmerge_lora(model)


def test_merge_leaves_the_other_adapters_factors_alone():
    _, model = three_adapters()
    set_adapter(model, "b")
    before = {n: {k: v.clone() for k, v in lora_state_dict(model, n).items()} for n in adapter_names(model)}
    merge_lora(model, "b")
    unmerge_lora(model)
    for n, sd in before.items():
        for k, v in sd.items():
            assert torch.equal(lora_state_dict(model, n)[k], v), k


# ---------------------------------------------------------------------------------------------
# Mixed batches: per_example_adapters
# ---------------------------------------------------------------------------------------------

def alone(model: nn.Module, x_i: torch.Tensor, name: str) -> torch.Tensor:
    """One example run by itself with adapter ``name`` active ("__base__": adapters disabled)."""
    previous = active_adapter(model)
    if name == BASE:
        with disable_adapter(model):
            out = model(x_i)
    else:
        set_adapter(model, name)
        out = model(x_i)
        set_adapter(model, previous)
    return out


NAME_LISTS = {
    "all-three-and-base": ["default", "b", BASE, "c", "b", "default"],
    "repeated": ["b", "b", "b", "c", "c", "b"],
    "some-adapters": ["c", BASE, "c", BASE, "c", "c"],
    "only-base": [BASE] * 6,
    "one-adapter": ["default"] * 6,
}


@pytest.mark.parametrize("names", list(NAME_LISTS.values()), ids=list(NAME_LISTS))
@pytest.mark.parametrize("leading", [(), (4,)], ids=["2d", "with-sequence"])
def test_per_example_adapters_equal_each_example_alone(names, leading):
    plain, model = three_adapters()
    x = inputs(6, 3, *leading)
    with torch.no_grad():
        y_active = model(x)
        with per_example_adapters(model, names) as inside:
            assert inside is model
            y = model(x)
        assert y.shape == y_active.shape
        y_plain = plain(x)
        for i, name in enumerate(names):
            assert max_diff(y[i], alone(model, x[i:i + 1], name)[0]) <= 1e-6, (i, name)
            if name == BASE:
                assert torch.equal(y[i], y_plain[i]), i  # "__base__" is the base model, to the bit
        # afterwards the model is back to its active adapter
        assert active_adapter(model) == "default"
        assert torch.equal(model(x), y_active)


def test_per_example_adapters_with_a_tuple_and_after_an_exception():
    _, model = three_adapters()
    x = inputs()
    before = snapshot(model)
    with torch.no_grad():
        y = model(x)
        with pytest.raises(RuntimeError, match="inside"):
            with per_example_adapters(model, ("b",) * 6):
                model(x)
                raise RuntimeError("inside the with")
        assert torch.equal(model(x), y)
    assert_unchanged(model, before)


def test_per_example_adapters_on_a_model_where_an_adapter_has_been_deleted():
    plain, model = three_adapters()
    delete_adapter(model, "b")
    x = inputs()
    names = ["c", "default", BASE, "c", "default", BASE]
    with torch.no_grad(), per_example_adapters(model, names):
        y = model(x)
    with torch.no_grad():
        for i, name in enumerate(names):
            assert max_diff(y[i], alone(model, x[i:i + 1], name)[0]) <= 1e-6


# ---------------------------------------------------------------------------------------------
# lora_state_dict per adapter
# ---------------------------------------------------------------------------------------------

def test_lora_state_dict_per_adapter():
    _, model = three_adapters()
    for name in adapter_names(model):
        sd = lora_state_dict(model, name)
        assert sorted(sd) == factor_names(name)
        for key, value in sd.items():
            module, factor, adapter = key.rsplit(".", 2)
            assert adapter == name
            assert torch.equal(value, getattr(model.get_submodule(module), factor)[name])
            assert not value.requires_grad
    assert sorted(lora_state_dict(model)) == factor_names("default")  # default: the active adapter
    set_adapter(model, "c")
    assert sorted(lora_state_dict(model)) == factor_names("c")


def test_lora_state_dict_of_each_adapter_loads_into_a_fresh_model():
    plain, model = three_adapters(seed=0)
    torch.manual_seed(5)
    other = copy.deepcopy(plain)  # the same base model with other factors
    for name in adapter_names(model):
        add_lora(other, CONFIGS[name], name)
    x = inputs()
    with torch.no_grad():
        assert not torch.equal(other(x), model(x))
    x = inputs()
    for name in adapter_names(model):
        other.load_state_dict({k: v.clone() for k, v in lora_state_dict(model, name).items()}, strict=False)
    with torch.no_grad():
        for name in adapter_names(model):
            set_adapter(model, name)
            set_adapter(other, name)
            assert torch.equal(other(x), model(x)), name


# ---------------------------------------------------------------------------------------------
# Saving and loading several adapters (PEFT's layout: default in the folder, the others in sub-folders)
# ---------------------------------------------------------------------------------------------

def test_save_and_load_three_adapters(tmp_path):
    plain, model = three_adapters()
    save_peft_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                          "b", "c"]
    loaded = load_peft_adapter(copy.deepcopy(plain), tmp_path)
    load_peft_adapter(loaded, tmp_path / "b", "b")
    load_peft_adapter(loaded, tmp_path / "c", "c")
    assert adapter_names(loaded) == ["default", "b", "c"] and active_adapter(loaded) == "default"
    assert trainable(loaded) == factor_names("default")
    x = inputs()
    with torch.no_grad():
        for name in adapter_names(model):
            assert lora_state_dict(loaded, name).keys() == lora_state_dict(model, name).keys()
            for key, value in lora_state_dict(model, name).items():
                assert torch.equal(lora_state_dict(loaded, name)[key], value), key
            set_adapter(model, name)
            set_adapter(loaded, name)
            assert torch.equal(loaded(x), model(x))


def test_save_one_named_adapter(tmp_path):
    plain, model = three_adapters()
    save_peft_adapter(model, tmp_path, "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # only b, in its sub-folder
    loaded = load_peft_adapter(copy.deepcopy(plain), tmp_path / "b", "b")
    assert adapter_names(loaded) == ["b"] and active_adapter(loaded) == "b"
    x = inputs()
    set_adapter(model, "b")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the parameter and the allowed values; the model is left as it was
# ---------------------------------------------------------------------------------------------

def merged_c():
    """Adapter c merged (the active adapter is still default)."""
    _, model = three_adapters()
    return merge_lora(model, "c")


def in_training():
    _, model = three_adapters()
    return model.train()


def no_lora():
    torch.manual_seed(0)
    return Nested().eval()


def mixed(names, batch=6):
    """Run a mixed batch with ``names`` (the error may come on entering or in the forward pass)."""
    def call(model):
        with torch.no_grad(), per_example_adapters(model, names):
            model(inputs(batch))
    return call


def nested_mixed(model):
    with per_example_adapters(model, ["b"] * 6):
        mixed(["c"] * 6)(model)


KNOWN = r"\['default', 'b', 'c'\]"

ADAPTER_CASES = [
    # id, make the model, the bad call, error, message must contain
    ("add-existing-name", None, lambda m: add_lora(m, CONFIGS["c"], "b"), ValueError,
     r"adapter_name='b' exists already \(adapters: \['b', 'c', 'default'\]\)"),
    ("add-existing-default", None, lambda m: add_lora(m, CONFIGS["c"]), ValueError,
     r"adapter_name='default' exists already"),
    ("add-name-int", None, lambda m: add_lora(m, CONFIGS["c"], 3), TypeError,
     r"adapter_name must be a non-empty str, got int 3"),
    ("add-name-none", None, lambda m: add_lora(m, CONFIGS["c"], None), TypeError,
     r"adapter_name must be a non-empty str, got NoneType"),
    ("add-name-empty", None, lambda m: add_lora(m, CONFIGS["c"], ""), TypeError,
     r"adapter_name must be a non-empty str"),
    ("add-name-base", None, lambda m: add_lora(m, CONFIGS["c"], BASE), ValueError,
     r"adapter_name='__base__' is reserved"),
    ("add-name-with-dot", None, lambda m: add_lora(m, CONFIGS["c"], "x.y"), ValueError,
     r"adapter_name='x.y' must not contain '.'"),
    ("add-while-merged", merged_c, lambda m: add_lora(m, CONFIGS["c"], "d"), ValueError,
     r"merged adapters: unmerge_lora\(model\)"),
    ("add-targets-match-nothing", None, lambda m: add_lora(m, LoraConfig(target_modules=["fc1"]), "d"),
     ValueError, r"target_modules=\['fc1'\] matches no module.*Linear layers in this model: embed"),
    ("set-unknown", None, lambda m: set_adapter(m, "nope"), ValueError,
     rf"adapter_name='nope' is not an adapter of this model; adapters: {KNOWN}"),
    ("set-base", None, lambda m: set_adapter(m, BASE), ValueError, r"'__base__' is not an adapter"),
    ("set-not-str", None, lambda m: set_adapter(m, 0), TypeError,
     rf"adapter_name must be a str, one of {KNOWN}, got int 0"),
    ("set-none", None, lambda m: set_adapter(m, None), TypeError, r"adapter_name must be a str"),
    ("set-while-merged", merged_c, lambda m: set_adapter(m, "b"), ValueError,
     r"merged adapters: unmerge_lora\(model\) before switching"),
    ("set-no-lora", no_lora, lambda m: set_adapter(m, "default"), ValueError, r"no LoRA layers"),
    ("merge-unknown", None, lambda m: merge_lora(m, "nope"), ValueError,
     rf"adapter_name='nope' is not an adapter of this model; adapters: {KNOWN}"),
    ("merge-not-str", None, lambda m: merge_lora(m, ["b"]), TypeError, r"adapter_name must be a str"),
    ("merge-base", None, lambda m: merge_lora(m, BASE), ValueError, r"'__base__' is not an adapter"),
    ("merge-twice", merged_c, lambda m: merge_lora(m, "c"), ValueError,
     r"\['blocks.1.mlp.0', 'blocks.1.mlp.2'\] are already merged"),
    ("delete-unknown", None, lambda m: delete_adapter(m, "nope"), ValueError,
     rf"adapter_name='nope' is not an adapter of this model; adapters: {KNOWN}"),
    ("delete-not-str", None, lambda m: delete_adapter(m, 1.5), TypeError, r"adapter_name must be a str"),
    ("delete-base", None, lambda m: delete_adapter(m, BASE), ValueError, r"'__base__' is not an adapter"),
    ("delete-active", None, lambda m: delete_adapter(m, "default"), ValueError,
     r"adapter_name='default' is the active adapter: set_adapter\(model, other\) first"),
    ("delete-merged", merged_c, lambda m: delete_adapter(m, "c"), ValueError,
     r"adapter 'c' is merged into the weights: unmerge_lora\(model\) first"),
    ("delete-no-lora", no_lora, lambda m: delete_adapter(m, "default"), ValueError, r"no LoRA layers"),
    ("state-dict-unknown", None, lambda m: lora_state_dict(m, "nope"), ValueError,
     r"adapter_name='nope' is not an adapter"),
    ("state-dict-not-str", None, lambda m: lora_state_dict(m, 3), TypeError, r"adapter_name must be a str"),
    ("disable-while-merged", merged_c, lambda m: disable_adapter(m).__enter__(), ValueError,
     r"merged adapters.*unmerge_lora\(model\)"),
    ("mixed-too-few-names", None, mixed(["default", "b", "c"]), ValueError,
     r"got 3 adapter names but the batch has 6 examples"),
    ("mixed-too-many-names", None, mixed(["b"] * 7), ValueError, r"got 7 adapter names but the batch has 6"),
    ("mixed-unknown-name", None, mixed(["default", "b", "nope", "c", "b", "default"]), ValueError,
     r"names holds \['nope'\], which are not adapters of this model; allowed values: "
     r"\['default', 'b', 'c', '__base__'\]"),
    ("mixed-all-unknown", None, mixed(["x"] * 6), ValueError, r"names holds \['x'\]"),
    ("mixed-not-str-names", None, mixed([0, 1, 2, 0, 1, 2]), ValueError, r"names holds \[0, 1, 2\]"),
    ("mixed-none-name", None, mixed(["b", None, "b", "b", "b", "b"]), ValueError, r"names holds \[None\]"),
    ("mixed-names-a-str", None, mixed("bbbbbb"), TypeError, r"names must be a non-empty list of adapter names"),
    ("mixed-names-empty", None, mixed([]), ValueError, r"names must be a non-empty list"),
    ("mixed-names-none", None, mixed(None), TypeError, r"names must be a non-empty list"),
    ("mixed-while-training", in_training, mixed(["b"] * 6), ValueError, r"for inference: call model.eval\(\)"),
    ("mixed-while-merged", merged_c, mixed(["b"] * 6), ValueError,
     r"merged adapters: unmerge_lora\(model\) before a mixed batch"),
    ("mixed-nested", None, lambda m: nested_mixed(m), ValueError, r"do not nest it"),
    ("mixed-no-lora", no_lora, mixed([BASE] * 6), ValueError, r"no LoRA layers"),
]


@pytest.mark.parametrize("make, call, error, message", [c[1:] for c in ADAPTER_CASES],
                         ids=[c[0] for c in ADAPTER_CASES])
def test_adapter_functions_reject_bad_input_and_change_nothing(make, call, error, message):
    model = make() if make is not None else three_adapters()[1]
    before = snapshot(model)
    with pytest.raises(error, match=message):
        call(model)
    assert_unchanged(model, before)


def test_mixed_batch_while_one_layer_is_in_training_mode():
    _, model = three_adapters()
    model.head.train()  # a LoRA layer in training mode (its dropout would act) inside an eval model
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        mixed(["b"] * 6)(model)
    assert_unchanged(model, before)


def test_mixed_batch_with_a_wrong_length_does_not_fall_back_to_the_base_model():
    """PEFT once returned the base model's output for names it did not know (peft PR #2090): here every
    mismatch raises, and a good call afterwards works."""
    plain, model = three_adapters()
    x = inputs()
    for names in (["b"] * 5, ["nope"] * 6, ["B"] * 6, ["default "] * 6):
        with pytest.raises(ValueError):
            with torch.no_grad(), per_example_adapters(model, names):
                model(x)
    with torch.no_grad(), per_example_adapters(model, ["b"] * 6):
        y = model(x)
    set_adapter(model, "b")
    with torch.no_grad():
        assert max_diff(y, model(x)) <= 1e-6


# Loading a second adapter that does not fit the model

@pytest.fixture
def other_adapters(tmp_path):
    """Adapters saved from other models: for MLP layers, and for a Nested model of another width."""
    torch.manual_seed(3)
    mlp = add_lora(MLP(), LoraConfig(target_modules=["fc1", "fc2"], r=2, lora_alpha=2, init_lora_weights=False))
    save_peft_adapter(mlp, tmp_path / "mlp")
    wide = add_lora(Nested(d=12), LoraConfig(target_modules=["q", "head"], r=2, lora_alpha=2,
                                             init_lora_weights=False))
    save_peft_adapter(wide, tmp_path / "wide")
    _, model = three_adapters()
    save_peft_adapter(model, tmp_path / "same")
    return tmp_path


LOAD_SECOND_CASES = [
    # id, folder, adapter name, error, message must contain
    ("targets-not-in-model", "mlp", "d", ValueError,
     r"for modules this model does not have: \['fc1', 'fc2'\].*Linear layers in this model: embed"),
    ("shapes-do-not-fit", "wide", "d", ValueError, r"lora_A of module 'blocks.0.q' has shape \(2, 12\).*needs \(2, 8\)"),
    ("name-exists", "same/b", "b", ValueError, r"adapter_name='b' exists already"),
    ("default-name-exists", "same", "default", ValueError, r"adapter_name='default' exists already"),
    ("name-base", "same/b", BASE, ValueError, r"adapter_name='__base__' is reserved"),
    ("name-not-str", "same/b", 7, TypeError, r"adapter_name must be a non-empty str"),
    ("sub-folder-not-given", "same/nope", "d", FileNotFoundError, r"does not exist or is not a folder"),
]


@pytest.mark.parametrize("folder, name, error, message", [c[1:] for c in LOAD_SECOND_CASES],
                         ids=[c[0] for c in LOAD_SECOND_CASES])
def test_loading_a_second_adapter_that_does_not_fit(other_adapters, folder, name, error, message):
    _, model = three_adapters()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        load_peft_adapter(model, other_adapters / folder, name)
    assert_unchanged(model, before)


def test_loading_the_parent_folder_names_the_sub_folders(tmp_path):
    _, model = three_adapters()
    save_peft_adapter(model, tmp_path, "b")  # only tmp_path/b exists
    target = no_lora()
    before = snapshot(target)
    with pytest.raises(FileNotFoundError, match=r"adapter_config.json is missing.*sub-folders here: \['b'\]"):
        load_peft_adapter(target, tmp_path, "b")
    assert_unchanged(target, before)


def test_loading_a_second_adapter_while_merged(tmp_path):
    _, model = three_adapters()
    save_peft_adapter(model, tmp_path, "b")
    delete_adapter(model, "b")
    merge_lora(model, "c")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"merged adapters: unmerge_lora\(model\) before loading"):
        load_peft_adapter(model, tmp_path / "b", "b")
    assert_unchanged(model, before)


def test_save_of_an_unknown_adapter_writes_nothing(tmp_path):
    _, model = three_adapters()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"adapter_name='nope' is not an adapter of this model; adapters: {KNOWN}"):
        save_peft_adapter(model, tmp_path / "out", "nope")
    assert not (tmp_path / "out").exists()
    assert_unchanged(model, before)


def test_save_of_several_adapters_writes_nothing_when_one_cannot_be_saved(tmp_path):
    """Adapter b has r=2 on fc1 but r=4 on fc2 (built by hand), which PEFT's config cannot hold: the refusal
    must come before any file is written, also those of the good adapter 'default'."""
    model = MLP()
    model.fc1 = LoRALinear(model.fc1, LoraConfig(r=2, lora_alpha=2))
    model.fc1.add_adapter("b", LoraConfig(r=2, lora_alpha=2))
    model.fc2 = LoRALinear(model.fc2, LoraConfig(r=2, lora_alpha=2))
    model.fc2.add_adapter("b", LoraConfig(r=4, lora_alpha=2))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"same r, alpha, dropout and use_rslora.*adapter 'b'"):
        save_peft_adapter(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert_unchanged(model, before)


# The layer's own adapter methods

def test_layer_add_adapter_rejects_bad_names_and_configs():
    layer = LoRALinear(nn.Linear(4, 3), LoraConfig(r=2, lora_alpha=2))
    before = snapshot(layer)
    for name, error, message in (("default", ValueError, "exists already"), (BASE, ValueError, "reserved"),
                                 (3, TypeError, "non-empty str"), ("a.b", ValueError, "must not contain")):
        with pytest.raises(error, match=message):
            layer.add_adapter(name, LoraConfig())
        assert_unchanged(layer, before)
    for config in ({"r": 2}, None, 4):
        with pytest.raises(TypeError, match="config must be a lora_edu.LoraConfig"):
            layer.add_adapter("x", config)
        assert_unchanged(layer, before)


@pytest.mark.parametrize("name", [3, "", BASE, "a.b"], ids=["int", "empty", "base", "dot"])
def test_lora_linear_rejects_bad_adapter_names(name):
    base = nn.Linear(4, 3)
    before = snapshot(base)
    with pytest.raises((TypeError, ValueError), match="adapter_name"):
        LoRALinear(base, LoraConfig(), name)
    assert_unchanged(base, before)


# LoraConfig: each bad field is refused with its name

CONFIG_CASES = [
    # id, fields, error, message must contain
    ("r-zero", dict(r=0), ValueError, r"r must be an int >= 1"),
    ("r-negative", dict(r=-1), ValueError, r"r must be an int >= 1.*got -1"),
    ("r-float", dict(r=2.0), TypeError, r"r must be an int >= 1.*got float 2.0"),
    ("r-bool", dict(r=True), TypeError, r"r must be an int >= 1.*got bool True"),
    ("r-str", dict(r="4"), TypeError, r"r must be an int >= 1.*got str '4'"),
    ("alpha-zero", dict(lora_alpha=0), ValueError, r"lora_alpha must be a finite number > 0"),
    ("alpha-nan", dict(lora_alpha=math.nan), ValueError, r"lora_alpha must be a finite number > 0.*got nan"),
    ("alpha-inf", dict(lora_alpha=math.inf), ValueError, r"lora_alpha must be a finite number > 0.*got inf"),
    ("alpha-str", dict(lora_alpha="16"), TypeError, r"lora_alpha must be a finite number > 0.*got str '16'"),
    ("alpha-tensor", dict(lora_alpha=torch.tensor(16.0)), TypeError, r"lora_alpha must be a finite number"),
    ("dropout-one", dict(lora_dropout=1.0), ValueError, r"lora_dropout must be a finite number >= 0 and < 1"),
    ("dropout-negative", dict(lora_dropout=-0.1), ValueError, r"lora_dropout must be .*got -0.1"),
    ("dropout-nan", dict(lora_dropout=math.nan), ValueError, r"lora_dropout must be .*got nan"),
    ("dropout-tensor", dict(lora_dropout=torch.tensor(0.1)), TypeError, r"lora_dropout must be"),
    ("rslora-yes", dict(use_rslora="yes"), TypeError, r"use_rslora must be True or False, got str 'yes'"),
    ("rslora-one", dict(use_rslora=1), TypeError, r"use_rslora must be True or False, got int 1"),
    ("init-olora", dict(init_lora_weights="olora"), ValueError,
     r"init_lora_weights='olora' is not allowed; allowed values: True .*'gaussian'.*False.*'pissa'"),
    ("dora-str", dict(use_dora="yes"), TypeError, r"use_dora must be"),
    ("dora-and-pissa", dict(use_dora=True, init_lora_weights="pissa"), ValueError, r"choose one"),
    ("init-one", dict(init_lora_weights=1), ValueError, r"init_lora_weights=1 is not allowed; allowed values"),
    ("init-none", dict(init_lora_weights=None), ValueError, r"init_lora_weights=None is not allowed"),
    ("targets-empty-str", dict(target_modules=""), ValueError, r"target_modules must not be empty"),
    ("targets-empty-list", dict(target_modules=[]), ValueError, r"target_modules must not be empty"),
    ("targets-empty-entry", dict(target_modules=[""]), TypeError,
     r"every entry of target_modules must be a non-empty str.*got ''"),
    ("targets-int-entry", dict(target_modules=[3]), TypeError, r"every entry of target_modules .*got 3"),
    ("targets-int", dict(target_modules=5), TypeError,
     r"target_modules must be a list of module names or a regular expression \(str\), got int"),
    ("targets-bad-regex", dict(target_modules="("), ValueError,
     r"target_modules='\(' is not a valid regular expression"),
]


@pytest.mark.parametrize("fields, error, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_lora_config_rejects_bad_fields(fields, error, message):
    with pytest.raises(error, match=message):
        LoraConfig(**fields)


def test_lora_config_is_frozen_and_replace_checks_again():
    import dataclasses

    config = LoraConfig(target_modules=("q", "v"), r=4, lora_alpha=8)
    assert config.target_modules == ["q", "v"] and config.scaling == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.r = 0
    with pytest.raises(ValueError, match=r"r must be an int >= 1"):
        dataclasses.replace(config, r=0)
    assert dataclasses.replace(config, r=16).scaling == 0.5
    with pytest.raises(TypeError):
        LoraConfig(4, 8)  # keyword-only, as PEFT's fields are used by name


def test_model_without_lora_has_no_adapters():
    model = no_lora()
    assert adapter_names(model) == [] and active_adapter(model) is None
