"""LoRA's variants that change how an adapter trains, not what it computes. Explained in notebook 10_lora_variants.

- LoRA+ (Hayou et al. 2024, arXiv 2402.12354): B gets a learning rate ``ratio`` times A's. Notebook 06 showed why
  this is a knob of its own: under Adam, scaling α by c trains exactly like scaling only B's learning rate by c.
- DoRA (Liu et al. 2024) and PiSSA (Meng et al. 2024): `LoraVariant` subclasses that `lora.variant_for` picks for
  ``LoraConfig(use_dora=True)`` and ``LoraConfig(init_lora_weights="pissa")``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate
from .lora import LoraVariant

__all__ = ["loraplus_parameter_groups", "create_loraplus_optimizer", "DoraVariant", "PissaVariant",
           "pissa_as_lora"]


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


# --- DoRA: a learned magnitude per output row times the normalised direction of W + ΔW ---

class DoraVariant(LoraVariant):
    """DoRA (Liu et al. 2024, arXiv 2402.09353): the adapted weight is split into a magnitude and a direction,

        W' = m · (W + s·B A) / ‖W + s·B A‖_row,    m (out_features,) trained, starting at ‖W‖_row,

    where ``‖·‖_row`` is the norm of each output row (PEFT's "column-wise" norm of the (in, out) transpose). As
    the DoRA paper suggests (§4.3), the norm is treated as a constant in the backward pass. The forward pass never
    builds W': with ``f = m / ‖W + s·BA‖_row`` and ``base = W x`` (no bias),

        h = base(x) + (f - 1) · W x + f · s · B A dropout(x),

    PEFT's arrangement (``use_dora=True``). Merging writes W' into the weight and remembers the norm, so unmerging
    can undo it: ``W = W' / f - s·B A``. Notebook 10_lora_variants.
    """

    def __init__(self):
        self.merged_scale: torch.Tensor | None = None  # f while merged

    def check(self, layer, name, config) -> None:
        if layer.merged_adapters:
            raise ValueError(f"cannot add DoRA adapter {name!r} to a merged layer: its magnitude starts at the "
                             "norm of the unmerged weight. unmerge() first")

    def init(self, layer, name, config) -> None:
        super().init(layer, name, config)
        with torch.no_grad():
            magnitude = self._row_norm(layer, name)
        layer.lora_magnitude_vector[name] = nn.Parameter(magnitude, requires_grad=layer.lora_A[name].requires_grad)

    def _row_norm(self, layer, name) -> torch.Tensor:
        """``‖W + s·B A‖`` per output row (out_features,), with B A detached."""
        lora_weight = (layer.lora_B[name] @ layer.lora_A[name]).detach()
        return torch.linalg.vector_norm(layer.base.weight + layer.scaling[name] * lora_weight, dim=1)

    def forward(self, layer, name, x, result):
        scale = layer.lora_magnitude_vector[name] / self._row_norm(layer, name).detach()   # f (out,)
        dropout = layer.lora_dropout[name]
        if isinstance(dropout, nn.Identity) or not layer.training:
            base = result if layer.base.bias is None else result - layer.base.bias
        else:
            x = dropout(x)
            base = F.linear(x, layer.base.weight)
        branch = F.linear(F.linear(x, layer.lora_A[name]), layer.lora_B[name])
        return result + (scale - 1) * base + scale * branch * layer.scaling[name]

    def delta_weight(self, layer, name) -> torch.Tensor:
        """``W' - W = (f - 1) W + f s B A`` (out, in), for the unmerged ``W``."""
        weight = layer.base.weight
        lora_delta = super().delta_weight(layer, name)
        scale = (layer.lora_magnitude_vector[name] / torch.linalg.vector_norm(weight + lora_delta, dim=1))[:, None]
        return (scale - 1) * weight + scale * lora_delta

    def merge(self, layer, name) -> None:
        weight, lora_delta = layer.base.weight, super().delta_weight(layer, name)
        scale = (layer.lora_magnitude_vector[name] / torch.linalg.vector_norm(weight + lora_delta, dim=1))[:, None]
        weight.copy_(scale * (weight + lora_delta))
        self.merged_scale = scale

    def unmerge(self, layer, name) -> None:
        weight = layer.base.weight
        weight.copy_(weight / self.merged_scale - super().delta_weight(layer, name))
        self.merged_scale = None


# --- PiSSA: start A and B on W's principal directions, freeze the residual ---

class PissaVariant(LoraVariant):
    """PiSSA (Meng et al. 2024, arXiv 2404.02948): ``W = U S Vᵀ``; with the top r triplets and ``s`` the
    scaling, ``B = U_r √(S_r / s)`` (out, r) and ``A = √(S_r / s) V_rᵀ`` (r, in), so ``s·B A = U_r S_r V_rᵀ``, the
    best rank-r part of W (notebook 02); the frozen weight becomes the residual ``W - s·B A``. The model starts
    exactly where it was, but the adapter trains W's principal directions instead of starting from zero.
    Same numbers as PEFT's ``init_lora_weights="pissa"`` (an exact SVD in float32). The base weight changes in
    place, so a PiSSA adapter must be the only adapter of its layer. Notebook 10_lora_variants.
    """

    def check(self, layer, name, config) -> None:
        limit = min(layer.in_features, layer.out_features)
        if config.r > limit:
            raise ValueError(f"r={config.r} is larger than min(out_features, in_features) = {limit}: PiSSA takes r "
                             f"singular directions of a {layer.out_features}×{layer.in_features} weight, which has "
                             f"at most {limit}")
        if not isinstance(layer.base, nn.Linear):
            raise ValueError(f"cannot add PiSSA adapter {name!r} to a {type(layer.base).__name__} base: PiSSA "
                             "rewrites the frozen weight, so it needs a plain nn.Linear")
        if layer.lora_A:
            raise ValueError(f"cannot add PiSSA adapter {name!r} to a layer that already has adapters "
                             f"{list(layer.lora_A)}: PiSSA replaces the frozen weight they are built on")
        if layer.merged_adapters:
            raise ValueError("cannot add a PiSSA adapter to a merged layer: unmerge() first")

    def init(self, layer, name, config) -> None:
        weight, s, r = layer.base.weight, layer.scaling[name], config.r
        u, singular, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
        root = torch.sqrt(singular[:r] / s)
        b, a = u[:, :r] @ torch.diag(root), torch.diag(root) @ vh[:r]
        with torch.no_grad():
            layer.lora_A[name].copy_(a)
            layer.lora_B[name].copy_(b)
            weight.copy_((weight.float() - (s * b) @ a).to(weight.dtype))


def pissa_as_lora(lora_A: torch.Tensor, lora_B: torch.Tensor, initial_A: torch.Tensor,
                  initial_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained PiSSA adapter as a plain LoRA adapter on the *original* weight, for saving and sharing.

    The fine-tuned weight is ``W_res + s·B A = W + s·(B A - B₀ A₀)``, a change of rank at most 2r from W, which is
    ``s·[B, -B₀] [A; A₀]``: returns ``A' = [A; A₀]`` (2r, in) and ``B' = [B, -B₀]`` (out, 2r). Keep the scaling s by
    doubling ``lora_alpha`` with the rank (α/r), or multiplying it by √2 (rsLoRA's α/√r); PEFT does the same when
    it saves with ``path_initial_model_for_weight_conversion``. Notebook 10_lora_variants.
    """
    for label, value in (("lora_A", lora_A), ("lora_B", lora_B), ("initial_A", initial_A), ("initial_B", initial_B)):
        _validate.instance(label, value, torch.Tensor, "a 2-D tensor")
    if lora_A.shape != initial_A.shape or lora_B.shape != initial_B.shape or lora_A.shape[0] != lora_B.shape[1]:
        raise ValueError(f"shapes must match: lora_A {tuple(lora_A.shape)} and initial_A {tuple(initial_A.shape)} "
                         f"(r, in), lora_B {tuple(lora_B.shape)} and initial_B {tuple(initial_B.shape)} (out, r)")
    return torch.cat([lora_A, initial_A], dim=0), torch.cat([lora_B, -initial_B], dim=1)
