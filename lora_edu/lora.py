"""The LoRA layer, injecting it into a model by module name, and merging it into the frozen weight.

Explained in notebook 04_lora_from_scratch. The names follow Hugging Face PEFT (`lora_A`, `lora_B`,
`scaling`, `target_modules`, `merge`, `unmerge`), and the numbers are the same as PEFT's (the tests in
``tests/test_lora_vs_peft.py`` prove it), so what a learner builds here carries straight over.

For a frozen linear layer ``W0`` of shape ``(out_features, in_features)`` LoRA learns

    h = W0 x + scaling * B (A dropout(x)),   A: (r, in_features),  B: (out_features, r),

with ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA). ``B`` starts at zero, so at the start
``ΔW = scaling * B A = 0`` and the model computes exactly what it computed before.

Every function checks its input before it changes anything: a bad call raises ``TypeError`` or
``ValueError`` naming the parameter and the allowed values, and leaves the model exactly as it was.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "lora_state_dict", "lora_layers",
           "find_target_modules"]


# ----------------------------------------------------------------------------------------------
# Checking the hyperparameters (shared by LoRALinear, add_lora and the PEFT loader)
# ----------------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_lora_hyperparameters(r, alpha, dropout=0.0, use_rslora=False) -> None:
    """Raise TypeError/ValueError (naming the parameter and the allowed values) unless
    ``r`` is a positive int, ``alpha`` a positive finite number, ``dropout`` in [0, 1) and
    ``use_rslora`` a bool. See notebook 04_lora_from_scratch."""
    if not _is_int(r):
        raise TypeError(f"r must be a positive int (the rank, e.g. 1, 4 or 8), got {type(r).__name__} {r!r}")
    if r < 1:
        raise ValueError(f"r must be a positive int (the rank, e.g. 1, 4 or 8), got {r}")
    if not _is_real(alpha):
        raise TypeError(f"alpha must be a positive finite number (e.g. 8 or 16.0), "
                        f"got {type(alpha).__name__} {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number (e.g. 8 or 16.0), got {alpha}")
    if not _is_real(dropout):
        raise TypeError(f"dropout must be a number in [0, 1) (0 turns it off), "
                        f"got {type(dropout).__name__} {dropout!r}")
    if not (0.0 <= dropout < 1.0):  # also False for NaN
        raise ValueError(f"dropout must be a number in [0, 1) (0 turns it off), got {dropout}")
    if not isinstance(use_rslora, bool):
        raise TypeError(f"use_rslora must be True or False, got {type(use_rslora).__name__} {use_rslora!r}")


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``h = base(x) + scaling · B A dropout(x)``.

    Shapes: ``x`` is ``(..., in_features)``, ``h`` is ``(..., out_features)``;
    ``lora_A`` is ``(r, in_features)``, ``lora_B`` is ``(out_features, r)`` (PEFT's layout: A maps the
    input down to r numbers, B maps them up again). ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with
    ``use_rslora=True`` (rank-stabilised LoRA).

    Initialisation as PEFT's default (``init_lora_weights=True``): ``lora_A`` Kaiming-uniform with
    ``a = sqrt(5)`` (the bound is ``1 / sqrt(in_features)``, as for a fresh ``nn.Linear``), ``lora_B``
    zeros, so ``ΔW = scaling · B A = 0`` and the output equals ``base(x)`` at the start. ``lora_A`` is
    drawn from torch's CPU generator and then moved to the base weight's device and dtype, so a seed
    gives the same numbers on every device. ``init_weights=False`` leaves both factors at zero (used when
    loading saved factors; it draws no random numbers).

    Dropout (``nn.Dropout(dropout)``, or ``nn.Identity`` when 0) acts on the LoRA branch's input only;
    the frozen path always sees the clean ``x``.

    ``merge()`` adds ``ΔW`` into ``base.weight`` (in the weight's dtype), after which the forward pass is
    ``base(x)`` alone — no extra latency; ``unmerge()`` subtracts it again. Merging a merged layer or
    unmerging an unmerged one raises ``ValueError`` (it never applies ``ΔW`` twice). Do not train while
    merged: ``unmerge`` subtracts the *current* ``ΔW``. See notebook 04_lora_from_scratch.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, *, init_weights: bool = True):
        if isinstance(base, LoRALinear):
            raise ValueError("base already is a LoRALinear: LoRA cannot be added twice to a layer; "
                             "pass the plain nn.Linear (layer.base) or merge the existing adapter first")
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        check_lora_hyperparameters(r, alpha, dropout, use_rslora)
        if not isinstance(init_weights, bool):
            raise TypeError(f"init_weights must be True or False, got {type(init_weights).__name__}")
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.r = int(r)
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.dropout_p = float(dropout)
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        weight = base.weight
        lora_A = torch.zeros(self.r, base.in_features, dtype=torch.float32)
        if init_weights:
            nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))  # CPU generator: same numbers on any device
        self.lora_A = nn.Parameter(lora_A.to(device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r, device=weight.device,
                                               dtype=weight.dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = scaling · B A``, shape ``(out_features, in_features)``, in the base weight's dtype.

        Computed in at least float32 (half-precision factors are promoted, then the result is cast back)."""
        weight = self.base.weight
        compute = torch.promote_types(weight.dtype, torch.float32)
        delta = (self.lora_B.to(compute) @ self.lora_A.to(compute)) * self.scaling
        return delta.to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + scaling · (dropout(x) Aᵀ) Bᵀ``,
        or ``base(x)`` alone while merged."""
        result = self.base(x)
        if self.merged:
            return result
        # Same order of operations as PEFT (B(A(dropout(x))) * scaling), so the results agree to the bit.
        return result + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> "LoRALinear":
        """``W0 ← W0 + ΔW``; afterwards the forward pass is the plain linear layer. Raises ValueError if
        already merged."""
        if self.merged:
            raise ValueError("this LoRALinear is already merged (merged=True); merging again would add ΔW "
                             "a second time. Call unmerge() first, or leave it merged")
        self.base.weight.add_(self.delta_weight())
        self.merged = True
        return self

    @torch.no_grad()
    def unmerge(self) -> "LoRALinear":
        """``W0 ← W0 - ΔW``, restoring the frozen weight (up to rounding). Raises ValueError if not merged."""
        if not self.merged:
            raise ValueError("this LoRALinear is not merged (merged=False); unmerging would subtract ΔW "
                             "from the frozen weight. Call merge() first")
        self.base.weight.sub_(self.delta_weight())
        self.merged = False
        return self

    def extra_repr(self) -> str:
        rule = "alpha/sqrt(r)" if self.use_rslora else "alpha/r"
        return (f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g} ({rule}), "
                f"dropout={self.dropout_p}, merged={self.merged}")


# ----------------------------------------------------------------------------------------------
# Injecting LoRA into a model by module name (PEFT's target_modules rules)
# ----------------------------------------------------------------------------------------------

def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_target_modules(target_modules) -> None:
    if isinstance(target_modules, str):
        if not target_modules:
            raise ValueError("target_modules must not be empty: give a list of module names "
                             "(e.g. ['q', 'v']) or a regular expression matched against full names")
        try:
            re.compile(target_modules)
        except re.error as exc:
            raise ValueError(f"target_modules={target_modules!r} is not a valid regular expression: {exc}") from None
        return
    if not isinstance(target_modules, (list, tuple, set, frozenset)):
        raise TypeError("target_modules must be a list of module names or a regular expression (str), "
                        f"got {type(target_modules).__name__}")
    if len(target_modules) == 0:
        raise ValueError("target_modules must not be empty: give a list of module names "
                         "(e.g. ['q', 'v']) or a regular expression matched against full names")
    for item in target_modules:
        if not isinstance(item, str) or not item:
            raise TypeError("every entry of target_modules must be a non-empty str (a module name or a "
                            f"dotted suffix of one), got {item!r}")


def target_matches(name: str, target_modules) -> bool:
    """PEFT's rule: a str is a full regular-expression match on the full module name; a list matches a
    name equal to an entry or ending in ``"." + entry``. See notebook 04_lora_from_scratch."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def _lora_owned_names(model: nn.Module) -> dict[str, str]:
    """Map every module name at or inside a LoRALinear to that LoRALinear's name."""
    owners = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            for sub_name, _ in module.named_modules(prefix=name):
                owners[sub_name] = name
    return owners


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in ``model`` by its full module name, in module order."""
    _check_model(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def find_target_modules(model: nn.Module, target_modules) -> list[str]:
    """The full names of the modules that ``target_modules`` selects (PEFT's matching rules), checked:
    raises ValueError when nothing matches (listing the linear layers that exist) or a match already
    carries LoRA, and TypeError when a match is not an ``nn.Linear``. Changes nothing.
    See notebook 04_lora_from_scratch."""
    _check_model(model)
    _check_target_modules(target_modules)
    owners = _lora_owned_names(model)
    matched, already, not_linear = [], [], []
    for name, module in model.named_modules():
        if name == "" or not target_matches(name, target_modules):
            continue
        if name in owners:
            already.append(f"{name!r} (inside LoRA layer {owners[name]!r})" if owners[name] != name else repr(name))
        elif not isinstance(module, nn.Linear):
            not_linear.append(f"{name!r} ({type(module).__name__})")
        elif isinstance(model.get_submodule(name.rpartition(".")[0]), nn.MultiheadAttention):
            # MultiheadAttention reads out_proj.weight directly instead of calling out_proj(x):
            # a wrapped out_proj would be bypassed (or break), so refuse it here.
            not_linear.append(f"{name!r} (the output projection inside nn.MultiheadAttention, which reads its "
                              "weight directly)")
        else:
            matched.append(name)
    if already:
        raise ValueError(f"LoRA cannot be added twice to a layer: target_modules={target_modules!r} matches "
                         f"{', '.join(already)}, which already has LoRA. Merge or remove it first, or target "
                         "other layers")
    if not_linear:
        raise TypeError(f"target_modules={target_modules!r} matches {', '.join(not_linear)}: LoRALinear wraps "
                        f"only torch.nn.Linear layers. Linear layers in this model: {_linear_names(model)}")
    if not matched:
        if isinstance(model, nn.Linear):
            hint = " (the model itself is an nn.Linear: wrap it directly with LoRALinear(model, r, alpha))"
        else:
            hint = ""
        raise ValueError(f"target_modules={target_modules!r} matches no module of this model{hint}. "
                         f"Linear layers in this model: {_linear_names(model)}; all modules: "
                         f"{_all_names(model)}")
    return matched


def _linear_names(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear)]
    return ", ".join(names) if names else "(none)"


def _all_names(model: nn.Module, limit: int = 40) -> str:
    names = [n for n, _ in model.named_modules() if n]
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return shown or "(none: the model has no submodules)"


def _replace_with_lora(model: nn.Module, names: Iterable[str], r: int, alpha: float, dropout: float,
                       use_rslora: bool, init_weights: bool = True) -> dict[str, LoRALinear]:
    """Replace each (already checked) ``nn.Linear`` named in ``names`` by a LoRALinear; freeze the rest."""
    added = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoRALinear(getattr(parent, child), r, alpha, dropout, use_rslora, init_weights=init_weights)
        setattr(parent, child, layer)
        added[name] = layer
    lora_params = {id(p) for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)}
    for param in model.parameters():
        param.requires_grad_(id(param) in lora_params)
    return added


def add_lora(model: nn.Module, target_modules, r: int, alpha: float, dropout: float = 0.0,
             use_rslora: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` that ``target_modules`` selects by a ``LoRALinear``, in place, and
    freeze every parameter that is not a LoRA factor. Returns the same ``model``.

    ``target_modules`` follows PEFT: a list of names, each matching a module whose full name equals it
    or ends in ``"." + name`` (``["q"]`` selects ``blocks.0.attn.q`` and ``blocks.1.attn.q``); a str is
    a regular expression that must match the full name (``r"blocks\\.0\\..*"``). Each selected layer
    ``(out, in)`` gains ``lora_A (r, in)`` and ``lora_B (out, r)``: ``r (in + out)`` trainable numbers.

    Everything is checked before anything changes; a bad call raises TypeError/ValueError and leaves the
    model exactly as it was. See notebook 04_lora_from_scratch.
    """
    _check_model(model)
    check_lora_hyperparameters(r, alpha, dropout, use_rslora)
    names = find_target_modules(model, target_modules)
    _replace_with_lora(model, names, r, alpha, dropout, use_rslora)
    return model


def _require_lora_layers(model: nn.Module, action: str) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model has no LoRA layers to {action}: add them first with "
                         "add_lora(model, target_modules, r, alpha) or load_peft_adapter(model, directory)")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer: ``W0 ← W0 + scaling · B A`` for each; the model then runs at the speed of
    the plain model. Raises ValueError (changing nothing) if the model has no LoRA layers or any is
    already merged. Returns the model. See notebook 04_lora_from_scratch."""
    _check_model(model)
    layers = _require_lora_layers(model, "merge")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged} are already merged; merging again would add ΔW a second "
                         "time. Call unmerge_lora(model) first")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo `merge_lora`: ``W0 ← W0 - scaling · B A`` for each LoRA layer. Raises ValueError (changing
    nothing) if the model has no LoRA layers or any is not merged. Returns the model.
    See notebook 04_lora_from_scratch."""
    _check_model(model)
    layers = _require_lora_layers(model, "unmerge")
    unmerged = [name for name, layer in layers.items() if not layer.merged]
    if unmerged:
        raise ValueError(f"LoRA layers {unmerged} are not merged; unmerging would subtract ΔW from the "
                         "frozen weights. Call merge_lora(model) first")
    for layer in layers.values():
        layer.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA factors, keyed as in ``model.state_dict()``: ``"<module>.lora_A"`` ``(r, in)`` and
    ``"<module>.lora_B"`` ``(out, r)``. Load them back with ``model.load_state_dict(sd, strict=False)``.
    Raises ValueError if the model has no LoRA layers. See notebook 04_lora_from_scratch."""
    _check_model(model)
    layers = _require_lora_layers(model, "save")
    state = {}
    for name, layer in layers.items():
        state[f"{name}.lora_A"] = layer.lora_A.detach()
        state[f"{name}.lora_B"] = layer.lora_B.detach()
    return state
