"""LoRA's variants that change how an adapter trains, not what it computes. Explained in notebook 10_lora_variants.

- LoRA+ (Hayou et al. 2024, arXiv 2402.12354): B gets a learning rate ``ratio`` times A's. Notebook 06 showed why
  this is a knob of its own: under Adam, scaling α by c trains exactly like scaling only B's learning rate by c.
"""
from __future__ import annotations

import torch
from torch import nn

from . import _validate

__all__ = ["loraplus_parameter_groups", "create_loraplus_optimizer"]


def _norm_layer_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters held by LayerNorm layers (no weight decay for them, as in transformers)."""
    return {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}


def loraplus_parameter_groups(model: nn.Module, lr: float, loraplus_lr_ratio: float,
                              weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups for LoRA+: the trainable parameters of ``model`` split as PEFT's
    ``create_loraplus_optimizer`` splits them, for any ``torch.optim`` optimizer.

    - group A, learning rate ``lr``, ``weight_decay``: ``lora_A`` and every other trainable matrix;
    - group B, learning rate ``lr · loraplus_lr_ratio``, ``weight_decay``: ``lora_B``, and (PEFT's rule) every
      trainable 1-D parameter that is neither a bias nor inside a LayerNorm;
    - group B without decay, learning rate ``lr · loraplus_lr_ratio``, weight decay 0: the trainable biases and
      LayerNorm parameters.

    Groups come in that order, each with ``"names"`` listing its parameters; empty groups are left out (PEFT also
    has a group for LoRA on embedding layers, which lora_edu does not adapt). Hayou et al. suggest a ratio of
    about 16; PEFT's examples use 16. Notebook 10_lora_variants.
    """
    _validate.module("model", model)
    lr = _validate.positive("lr", lr)
    ratio = _validate.positive("loraplus_lr_ratio", loraplus_lr_ratio,
                               hint="(B's learning rate over A's; LoRA+ uses about 16, 1 is plain LoRA)")
    weight_decay = _validate.real("weight_decay", weight_decay, minimum=0.0)
    in_norm = _norm_layer_parameters(model)
    groups = {"A": [], "B": [], "B_no_decay": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if "lora_B" in name or parameter.ndim == 1:
            decays = "bias" not in name and id(parameter) not in in_norm
            groups["B" if decays else "B_no_decay"].append((name, parameter))
        else:
            groups["A"].append((name, parameter))
    if not groups["A"] and not groups["B"]:
        raise ValueError("model has no trainable parameters: add LoRA adapters first (lora_edu.add_lora)")
    settings = {"A": (lr, weight_decay), "B": (lr * ratio, weight_decay), "B_no_decay": (lr * ratio, 0.0)}
    return [{"params": [p for _, p in members], "names": [n for n, _ in members], "lr": settings[key][0],
             "weight_decay": settings[key][1]} for key, members in groups.items() if members]


def create_loraplus_optimizer(model: nn.Module, optimizer_cls=torch.optim.AdamW, *, lr: float,
                              loraplus_lr_ratio: float, weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
    """``optimizer_cls`` over `loraplus_parameter_groups` (PEFT's signature: ``lr``, ``loraplus_lr_ratio``; other
    keyword arguments go to the optimizer). Notebook 10_lora_variants."""
    groups = loraplus_parameter_groups(model, lr, loraplus_lr_ratio, weight_decay)
    for group in groups:
        del group["names"]
    return optimizer_cls(groups, lr=lr, **kwargs)
