"""Many adapters on one model: switching, switching off, deleting, and a batch that mixes them.

Explained in notebook 07_many_tasks_one_model. The adapters themselves live in the layers (`lora_edu.lora`:
``add_lora(model, config, adapter_name)`` adds one, ``merge_lora(model, adapter_name)`` merges one); the
functions here act on all of a model's LoRA layers at once, with PEFT's names and semantics (``set_adapter``,
``disable_adapter``, ``delete_adapter``, and ``model(x, adapter_names=...)`` as `per_example_adapters`).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import _validate
from .lora import (BASE, _require_adapter, _set_trainable, active_adapter, adapter_names, lora_layers,
                   refuse_if_merged, replace_module)

__all__ = ["set_adapter", "delete_adapter", "disable_adapter", "per_example_adapters", "BASE"]


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make ``adapter_name`` the active adapter of every LoRA layer: the forward pass uses it and only its
    factors are trainable (the others are frozen, as in PEFT's ``set_adapter``). Layers without it run
    their base alone. Refused while an adapter is merged. See notebook 07_many_tasks_one_model."""
    layers = _require_adapter(model, adapter_name, "switch")
    refuse_if_merged(model, "before switching the active adapter")
    for layer in layers.values():
        layer.active_adapter = adapter_name
    _set_trainable(model, freeze_the_rest=False)
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove ``adapter_name`` from every layer; a layer left with no adapter becomes its plain ``nn.Linear``
    again. The active adapter and a merged one cannot be deleted (ValueError: `set_adapter` to another, or
    `unmerge_lora`, first). See notebook 07_many_tasks_one_model."""
    layers = _require_adapter(model, adapter_name, "delete")
    if active_adapter(model) == adapter_name:
        raise ValueError(f"adapter_name={adapter_name!r} is the active adapter: set_adapter(model, other) first "
                         f"(adapters: {adapter_names(model)})")
    if any(adapter_name in layer.merged_adapters for layer in layers.values()):
        raise ValueError(f"adapter {adapter_name!r} is merged into the weights: unmerge_lora(model) first")
    for name, layer in layers.items():
        if adapter_name in layer.lora_A:
            layer.remove_adapter(adapter_name)
            if not layer.lora_A:
                replace_module(model, name, layer.base)
    return model


@contextlib.contextmanager
def disable_adapter(model: nn.Module):
    """``with disable_adapter(model):`` the model runs its frozen base alone (PEFT's ``disable_adapter``).
    Refused while an adapter is merged (its ΔW is inside the weights). See notebook 07_many_tasks_one_model."""
    layers = lora_layers(model)
    refuse_if_merged(model, "first: their ΔW is inside the base weights")
    for layer in layers.values():
        layer.disable_adapters = True
    try:
        yield model
    finally:
        for layer in layers.values():
            layer.disable_adapters = False


@contextlib.contextmanager
def per_example_adapters(model: nn.Module, names):
    """``with per_example_adapters(model, names): model(x)`` runs example ``i`` of the batch through adapter
    ``names[i]`` (``"__base__"``: the base model alone), as PEFT's ``model(x, adapter_names=names)``.

    Each layer computes ``base(x) + s_k B_k A_k x`` for all examples in two batched products (``torch.bmm``
    over the factors gathered per example once, on entry; ranks padded with zeros): one pass, not a loop over
    adapters (the idea of Punica's SGMV and S-LoRA). Evaluation only: refused while the model is training or an
    adapter is merged; an unknown name or a batch of another length raises ValueError.
    See notebook 07_many_tasks_one_model.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers: add adapters first with add_lora(model, config)")
    names = list(_validate.sequence("names", names, what="adapter names, one per example"))
    known = adapter_names(model)
    unknown = sorted({n for n in names if n != BASE and n not in known}, key=str)
    if unknown:
        raise ValueError(f"names holds {unknown}, which are not adapters of this model; allowed values: "
                         f"{known + [BASE]}")
    if model.training or any(layer.training for layer in layers.values()):
        raise ValueError("per_example_adapters is for inference: call model.eval() first (dropout and "
                         "training would mix the examples' adapters)")
    refuse_if_merged(model, "before a mixed batch")
    variants = sorted({n for layer in layers.values() for n, c in layer.lora_config.items()
                       if n in names and (c.use_dora or c.init_lora_weights == "pissa")})
    if variants:
        raise ValueError(f"per_example_adapters runs plain LoRA branches; adapters {variants} are DoRA or PiSSA "
                         "adapters (DoRA rescales the base output, PiSSA replaced the base weight)")
    if any(layer._per_example is not None for layer in layers.values()):
        raise ValueError("per_example_adapters is already active on this model; do not nest it")
    slots = list(dict.fromkeys(names))  # the distinct names of this batch
    indices = torch.tensor([slots.index(n) for n in names])
    with torch.no_grad():
        for layer in layers.values():
            weight = layer.base.weight
            r_max = max(layer.r.values())
            a = torch.zeros(len(slots), r_max, layer.in_features, device=weight.device, dtype=weight.dtype)
            b = torch.zeros(len(slots), layer.out_features, r_max, device=weight.device, dtype=weight.dtype)
            s = torch.zeros(len(slots), device=weight.device, dtype=weight.dtype)
            for k, name in enumerate(slots):
                if name in layer.lora_A:  # "__base__", or an adapter this layer lacks: zeros
                    r = layer.r[name]
                    a[k, :r], b[k, :, :r], s[k] = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
            index = indices.to(weight.device)
            layer._per_example = (a[index], b[index], s[index].view(-1, 1, 1))
    try:
        yield model
    finally:
        for layer in layers.values():
            layer._per_example = None
