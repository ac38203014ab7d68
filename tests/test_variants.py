"""LoRA's variants (lora_edu.variants, notebook 10) against PEFT: LoRA+'s optimizer parameter groups."""
import re
import warnings

import peft
from peft.optimizers import create_loraplus_optimizer as peft_loraplus_optimizer
import pytest
import torch
from torch import nn

import lora_edu
from lora_edu.variants import create_loraplus_optimizer, loraplus_parameter_groups


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
