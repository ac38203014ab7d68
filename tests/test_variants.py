"""LoRA's variants (lora_edu.variants, notebook 10) against PEFT: LoRA+'s optimizer parameter groups, DoRA's
forward, gradients and merge, PiSSA's factors, residual and conversion to plain LoRA; bad input for each."""
import copy
import re
import warnings

import peft
from peft.optimizers import create_loraplus_optimizer as peft_loraplus_optimizer
import pytest
import torch
from torch import nn

import lora_edu
from lora_edu import lora_layers, merge_lora, unmerge_lora
from lora_edu.variants import create_loraplus_optimizer, loraplus_parameter_groups, pissa_as_lora


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))


def ours_and_peft(train_norm: bool, bias: str):
    ours = lora_edu.add_lora(small_model(), lora_edu.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "3"]))
    if train_norm:
        ours[1].requires_grad_(True)
    if bias == "all":
        for name, p in ours.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "3"], bias=bias,
                             modules_to_save=["1"] if train_norm else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(small_model(), config)
    return ours, theirs


def plain_name(name: str) -> str:
    """A parameter's name with PEFT's wrappers taken out: base_model.model.0.lora_A.default.weight → 0.lora_A."""
    name = name.removeprefix("base_model.model.")
    name = re.sub(r"\.modules_to_save\.default", "", name)
    name = re.sub(r"\.base_layer", ".base", name)
    return re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1.default", name)


@pytest.mark.parametrize("train_norm, bias", [(False, "none"), (True, "none"), (True, "all"), (False, "all")])
@pytest.mark.parametrize("ratio", [16.0, 0.5])
def test_loraplus_groups_equal_peft(train_norm, bias, ratio):
    ours, theirs = ours_and_peft(train_norm, bias)
    groups = loraplus_parameter_groups(ours, lr=1e-3, loraplus_lr_ratio=ratio, weight_decay=0.1)
    optimizer = peft_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=ratio,
                                                          loraplus_weight_decay=0.1)
    names_of = {id(p): plain_name(n) for n, p in theirs.named_parameters()}
    peft_groups = [(sorted(names_of[id(p)] for p in g["params"]), g["lr"], g["weight_decay"])
                   for g in optimizer.param_groups if g["params"]]
    ours_groups = [(sorted(g["names"]), g["lr"], g["weight_decay"]) for g in groups]
    assert ours_groups == peft_groups
    assert {p for g in groups for p in g["names"]} == {n for n, p in ours.named_parameters() if p.requires_grad}


def test_loraplus_optimizer_trains_b_faster():
    ours = lora_edu.add_lora(small_model(), lora_edu.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "3"]))
    optimizer = create_loraplus_optimizer(ours, torch.optim.SGD, lr=0.1, loraplus_lr_ratio=16.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 1.6]
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])


@pytest.mark.parametrize("ratio, error", [(0.0, ValueError), (-16, ValueError), (float("nan"), ValueError),
                                          ("16", TypeError)])
def test_loraplus_ratio_must_be_positive(ratio, error):
    model = lora_edu.add_lora(small_model(), lora_edu.LoraConfig(r=2, target_modules=["0"]))
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(error, match="loraplus_lr_ratio"):
        loraplus_parameter_groups(model, lr=1e-3, loraplus_lr_ratio=ratio)
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}


def test_loraplus_refuses_a_model_without_adapters():
    with pytest.raises(ValueError, match="no trainable parameters"):
        loraplus_parameter_groups(small_model().requires_grad_(False), lr=1e-3, loraplus_lr_ratio=16)
    with pytest.raises(ValueError, match="lr"):
        loraplus_parameter_groups(small_model(), lr=0, loraplus_lr_ratio=16)


# --- DoRA and PiSSA against PEFT ---

WIDTHS = [(12, 20, 6), (65, 33, 17), (16, 8, 24)]  # in, hidden, out: odd sizes, narrow and wide layers


def twin_models(config_kwargs, seed=0, widths=WIDTHS[0]):
    """The same small model with adapters from lora_edu and from PEFT, with equal A, B (and DoRA magnitude)."""
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(widths[0], widths[1]), nn.ReLU(), nn.Linear(widths[1], widths[2], bias=False))
    plain = copy.deepcopy(base)
    ours = lora_edu.add_lora(copy.deepcopy(base), lora_edu.LoraConfig(target_modules=["0", "2"], **config_kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=["0", "2"], **config_kwargs))
    return plain, ours, theirs


def copy_factors(ours, theirs=None, seed=1):
    """Give ours (and PEFT's twin, if given) the same random non-zero factors, so DoRA's direction changes, and
    magnitudes; without a twin this stands in for training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            twin = None if theirs is None else theirs.base_model.model.get_submodule(name)
            for store in ("lora_A", "lora_B", "lora_magnitude_vector"):
                if "default" not in getattr(layer, store):
                    continue
                mine = getattr(layer, store)["default"]
                if store == "lora_magnitude_vector":
                    value = mine * (1 + 0.2 * torch.rand(mine.shape, generator=generator))
                else:
                    value = mine + torch.randn(mine.shape, generator=generator) * 0.3
                mine.copy_(value)
                if twin is not None:
                    getattr(twin, store)["default"].weight.copy_(value)


def dora_pair(widths=WIDTHS[0], r=3, **kwargs):
    plain, ours, theirs = twin_models(dict(r=r, lora_alpha=2 * r, use_dora=True, **kwargs), widths=widths)
    for name, layer in lora_layers(ours).items():       # the magnitude starts at ‖W‖ per row, in both
        twin = theirs.base_model.model.get_submodule(name)
        assert torch.allclose(layer.lora_magnitude_vector["default"], twin.lora_magnitude_vector["default"].weight,
                              rtol=1e-6, atol=0)
    copy_factors(ours, theirs)
    return plain, ours, theirs


@pytest.mark.parametrize("widths, r", [(WIDTHS[0], 3), (WIDTHS[1], 5), (WIDTHS[2], 8)], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dora_forward_and_gradients_equal_peft(mode, widths, r):
    _, ours, theirs = dora_pair(widths, r)
    ours.train(mode == "train")
    theirs.train(mode == "train")
    x = torch.randn(7, widths[0], generator=torch.Generator().manual_seed(2))
    y_ours, y_theirs = ours(x), theirs(x)
    assert (y_ours - y_theirs).abs().max() <= 1e-6
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    for name, layer in lora_layers(ours).items():
        twin = theirs.base_model.model.get_submodule(name)
        pairs = [(layer.lora_A["default"], twin.lora_A["default"].weight),
                 (layer.lora_B["default"], twin.lora_B["default"].weight),
                 (layer.lora_magnitude_vector["default"], twin.lora_magnitude_vector["default"].weight)]
        for mine, peft_parameter in pairs:
            assert mine.grad is not None and (mine.grad - peft_parameter.grad).abs().max() <= 1e-5 * (
                1 + peft_parameter.grad.abs().max()), name
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        f"{m}.{store}.default" for m in ("0", "2") for store in ("lora_A", "lora_B", "lora_magnitude_vector")}


@pytest.mark.parametrize("widths, r", [(WIDTHS[0], 3), (WIDTHS[1], 5), (WIDTHS[2], 8)], ids=str)
def test_dora_merge_and_unmerge_equal_peft(widths, r):
    plain, ours, theirs = dora_pair(widths, r)
    ours.eval()
    theirs.eval()
    x = torch.randn(5, widths[0], generator=torch.Generator().manual_seed(3))
    y_unmerged = theirs(x)
    merge_lora(ours)
    with torch.no_grad():
        theirs.merge_adapter()
        assert (ours(x) - theirs(x)).abs().max() <= 1e-5
        assert (ours(x) - y_unmerged).abs().max() <= 1e-5
        for name in ("0", "2"):
            assert (ours.get_submodule(name).base.weight
                    - theirs.base_model.model.get_submodule(name).base_layer.weight).abs().max() <= 1e-6
    unmerge_lora(ours)
    for name in ("0", "2"):
        assert (ours.get_submodule(name).base.weight - plain.get_submodule(name).weight).abs().max() <= 1e-6


def test_dora_refuses_a_merged_layer_and_leaves_it_untouched():
    _, ours, _ = twin_models(dict(r=2, lora_alpha=4))
    merge_lora(ours)
    layer = ours.get_submodule("0")
    before = layer.base.weight.clone()
    with pytest.raises(ValueError, match="merged layer"):
        layer.add_adapter("dora", lora_edu.LoraConfig(r=2, use_dora=True))
    assert list(layer.lora_A) == ["default"] and torch.equal(layer.base.weight, before)
    assert "dora" not in layer.lora_magnitude_vector


@pytest.mark.parametrize("widths, r", [(WIDTHS[0], 4), (WIDTHS[1], 7), (WIDTHS[2], 8), (WIDTHS[1], 1)], ids=str)
def test_pissa_factors_and_residual_equal_peft(widths, r):
    plain, ours, theirs = twin_models(dict(r=r, lora_alpha=2 * r, init_lora_weights="pissa"), widths=widths)
    x = torch.randn(6, widths[0], generator=torch.Generator().manual_seed(4))
    differences = []
    for name, layer in lora_layers(ours).items():
        twin = theirs.base_model.model.get_submodule(name)
        for mine, theirs_tensor in ((layer.lora_A["default"], twin.lora_A["default"].weight),
                                    (layer.lora_B["default"], twin.lora_B["default"].weight),
                                    (layer.base.weight, twin.base_layer.weight)):
            differences.append((mine - theirs_tensor).abs().max().item())
        # s·B A is the best rank-r part of W (notebook 02): its residual has W's other singular values
        residual = torch.linalg.svdvals(layer.base.weight)
        original = torch.linalg.svdvals(plain.get_submodule(name).weight)
        assert torch.allclose(residual[:len(original) - r], original[r:], atol=1e-5)
    assert max(differences) == 0.0, differences             # the same float32 SVD: equal to the bit
    with torch.no_grad():
        assert (ours(x) - plain(x)).abs().max() <= 1e-5       # the model starts where it was


def test_pissa_as_lora_reproduces_the_trained_model_on_the_original_weight():
    plain, ours, _ = twin_models(dict(r=3, lora_alpha=3, init_lora_weights="pissa"))
    initial = {n: (l.lora_A["default"].detach().clone(), l.lora_B["default"].detach().clone())
               for n, l in lora_layers(ours).items()}
    copy_factors(ours)                                       # stands in for training
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(5))
    as_lora = lora_edu.add_lora(copy.deepcopy(plain), lora_edu.LoraConfig(r=6, lora_alpha=6, target_modules=["0", "2"]))
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            a, b = pissa_as_lora(layer.lora_A["default"], layer.lora_B["default"], *initial[name])
            assert a.shape == (6, layer.in_features) and b.shape == (layer.out_features, 6)
            as_lora.get_submodule(name).lora_A["default"].copy_(a)
            as_lora.get_submodule(name).lora_B["default"].copy_(b)
        assert (as_lora(x) - ours(x)).abs().max() <= 1e-5


def test_pissa_bad_input_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 5))
    before = model[0].weight.clone()
    with pytest.raises(ValueError, match=r"r=6 is larger than min\(out_features, in_features\) = 5"):
        lora_edu.add_lora(model, lora_edu.LoraConfig(r=6, init_lora_weights="pissa", target_modules=["0"]))
    assert isinstance(model[0], nn.Linear) and torch.equal(model[0].weight, before)
    lora_edu.add_lora(model, lora_edu.LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match="already has adapters"):
        model[0].add_adapter("pissa", lora_edu.LoraConfig(r=2, init_lora_weights="pissa"))
    assert list(model[0].lora_A) == ["default"] and torch.equal(model[0].base.weight, before)


@pytest.mark.parametrize("kwargs, words", [(dict(use_dora=True), "DoRA adapter"),
                                           (dict(init_lora_weights="pissa"), "PiSSA adapter")])
def test_variants_are_not_saved_or_mixed_as_plain_lora(tmp_path, kwargs, words):
    _, ours, _ = twin_models(dict(r=2, lora_alpha=4, **kwargs))
    with pytest.raises(ValueError, match=words):
        lora_edu.save_peft_adapter(ours, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    with pytest.raises(ValueError, match="DoRA or PiSSA"):
        with lora_edu.per_example_adapters(ours.eval(), ["default", "__base__"]):
            pass
    state = lora_edu.lora_state_dict(ours)
    assert ("0.lora_magnitude_vector.default" in state) == ("use_dora" in kwargs)
