"""Five ways to adapt a pretrained model, applied to the same base with one function.

Explained in notebook 05_finetuning_strategies_compared. `apply_strategy(model, name, **config)`
changes ``model`` in place, freezes what the strategy does not train, and returns it:

- ``"full"``: every parameter trains (full fine-tuning).
- ``"dense_delta"``: beside each frozen target weight ``W0 (out, in)`` a trainable full-rank
  ``ΔW (out, in)``, initialised to zero: ``h = W0 x + ΔW x + b``. Mergeable (``W0 ← W0 + ΔW``).
  It is what is often called "regular fine-tuning" written as an update (``W0 + ΔW``): LoRA is its
  low-rank version.
- ``"adapters"``: a serial bottleneck adapter after each target sub-layer (Houlsby et al. 2019):
  ``h ← h + up(gelu(down(h)))``, ``down: d → m``, ``up: m → d``, ``up`` near zero so the adapter
  starts near the identity. It cannot be merged: the gelu *inside* the adapter makes
  ``h + up(gelu(down(h)))`` a nonlinear function of ``h``, which no change of a weight matrix can
  reproduce, so the adapter stays as extra depth.
- ``"lora"``: `lora_edu.add_lora` on the target linear layers: ``h = W0 x + (α/r) B A x``. Mergeable.
- ``"head_only"``: only the output layer trains (a linear probe); ``"bias_only"``: only biases train
  (BitFit, Ben Zaken et al. 2021). Cheap baselines.

Each model class names its default targets (``linear_targets``, ``adapter_targets``, ``head_name``,
see `lora_edu.models`); ``target_modules=`` overrides them with PEFT's rules (a list of names or dotted
suffixes, or a regular expression matched against full names).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate
from .lora import LoRALinear, LoraConfig, _check_target_modules, add_lora, replace_module, target_matches

STRATEGIES = ("full", "dense_delta", "adapters", "lora", "head_only", "bias_only")
MERGEABLE = ("dense_delta", "lora")
STRATEGY_OPTIONS = {
    "full": {},
    "dense_delta": {"target_modules": None},
    "adapters": {"target_modules": None, "bottleneck": 8, "init_scale": 1e-3},
    "lora": {"target_modules": None, "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0},
    "head_only": {"head": None},
    "bias_only": {},
}
STRATEGY_LABELS = {"full": "full fine-tuning", "dense_delta": "dense ΔW", "adapters": "serial adapters",
                   "lora": "LoRA", "head_only": "head only", "bias_only": "bias only"}


class DenseDeltaLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable full-rank update: ``h = base(x) + x ΔWᵀ``.

    ``delta_weight``: ``(out_features, in_features)``, zeros at the start (output unchanged).
    ``merge()``: ``W0 ← W0 + ΔW``, after which the forward pass is ``base(x)`` alone; ``unmerge()``
    subtracts it again. See notebook 05_finetuning_strategies_compared.
    """

    def __init__(self, base: nn.Linear):
        _validate.instance("base", base, nn.Linear, "a torch.nn.Linear")
        super().__init__()
        self.base = base.requires_grad_(False)
        self.delta_weight = nn.Parameter(torch.zeros_like(base.weight))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.merged else self.base(x) + F.linear(x, self.delta_weight)

    @torch.no_grad()
    def merge(self) -> "DenseDeltaLinear":
        if self.merged:
            raise ValueError("this DenseDeltaLinear is already merged; merging again would add ΔW twice")
        self.base.weight.add_(self.delta_weight)
        self.merged = True
        return self

    @torch.no_grad()
    def unmerge(self) -> "DenseDeltaLinear":
        if not self.merged:
            raise ValueError("this DenseDeltaLinear is not merged; call merge() first")
        self.base.weight.sub_(self.delta_weight)
        self.merged = False
        return self


def output_features(module: nn.Module) -> int:
    """The width of a sub-layer's output: ``out_features`` of a Linear, else of its last Linear."""
    if isinstance(module, nn.Linear):
        return module.out_features
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"cannot tell the output width of a {type(module).__name__} without nn.Linear layers")
    return linears[-1].out_features


class SerialAdapter(nn.Module):
    """A frozen sub-layer followed by a bottleneck adapter: ``h = f(x);  h + up(gelu(down(h)))``.

    ``down``: ``Linear(d, m)`` (PyTorch's default init), ``up``: ``Linear(m, d)`` with weights drawn
    from ``N(0, init_scale²)`` and zero bias, so the adapter starts near the identity (Houlsby et al.
    2019). Adds ``2·d·m + m + d`` trainable numbers and two matrix products per token, in series:
    the extra latency cannot be merged away. See notebook 05_finetuning_strategies_compared.
    """

    def __init__(self, sublayer: nn.Module, bottleneck: int, init_scale: float = 1e-3):
        _validate.module("sublayer", sublayer)
        super().__init__()
        features = output_features(sublayer)
        self.sublayer = sublayer.requires_grad_(False)
        device, dtype = next(sublayer.parameters()).device, next(sublayer.parameters()).dtype
        self.down = nn.Linear(features, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, features, device=device, dtype=dtype)
        nn.init.normal_(self.up.weight, 0.0, init_scale)
        nn.init.zeros_(self.up.bias)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        h = self.sublayer(*args, **kwargs)
        return h + self.up(F.gelu(self.down(h)))


_WRAPPERS = (LoRALinear, DenseDeltaLinear, SerialAdapter)


def _resolve_targets(model: nn.Module, targets, default_attribute: str, kind: type | None) -> list[str]:
    """Full names of the modules ``targets`` selects (``kind``: the type they must have, if any)."""
    if targets is None:
        targets = getattr(model, default_attribute, None)
        if targets is None:
            raise ValueError(f"target_modules must be given: {type(model).__name__} has no default "
                             f"{default_attribute!r} attribute")
    targets = _check_target_modules(targets)
    names = [n for n, _ in model.named_modules() if n and target_matches(n, targets)]
    if not names:
        existing = [n for n, m in model.named_modules() if n and (kind is None or isinstance(m, kind))]
        raise ValueError(f"target_modules={targets!r} matches no module of this model; modules that exist: "
                         f"{', '.join(existing)}")
    if kind is not None:
        wrong = [f"{n} ({type(model.get_submodule(n)).__name__})" for n in names
                 if not isinstance(model.get_submodule(n), kind)]
        if wrong:
            raise TypeError(f"target_modules={targets!r} matches {', '.join(wrong)}, which is not a {kind.__name__}")
    nested = [n for n in names if any(n.startswith(o + ".") for o in names)]
    if nested:
        raise ValueError(f"target_modules={targets!r} selects modules inside other targets: {', '.join(nested)}")
    return names


def _check_config(name: str, config: dict) -> dict:
    allowed = STRATEGY_OPTIONS[name]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        shown = ", ".join(allowed) if allowed else "none"
        raise TypeError(f"strategy {name!r} takes no option(s) {', '.join(unknown)}; allowed options: {shown}")
    merged = {**allowed, **config}
    if name == "adapters":
        _validate.integer("bottleneck", merged["bottleneck"], 1, hint="(the adapter's width m)")
        _validate.real("init_scale", merged["init_scale"], 0)
    if name == "lora":
        merged["config"] = LoraConfig(r=merged["r"], lora_alpha=merged["lora_alpha"],
                                      lora_dropout=merged["lora_dropout"])
    return merged


def strategy_of(model: nn.Module) -> str | None:
    """The name of the strategy applied to ``model`` by `apply_strategy`, or None. After `merge_and_unload`
    the name stays and ``model.finetuning_merged`` is True."""
    return getattr(model, "finetuning_strategy", None)


def apply_strategy(model: nn.Module, name: str, **config) -> nn.Module:
    """Prepare ``model`` for fine-tuning with strategy ``name``, in place; returns the same model.

    ``name``: one of `STRATEGIES`; ``config``: the strategy's options (`STRATEGY_OPTIONS`, e.g.
    ``r=4, lora_alpha=8`` for LoRA, ``bottleneck=8`` for adapters, ``target_modules=[...]``). Trainable
    numbers added per target ``W0 (out, in)``: dense ΔW ``out·in``; LoRA ``r·(in + out)``; an adapter
    on a width-``d`` output ``2·d·m + m + d``. Everything is checked first: a bad name, option or
    target raises ValueError/TypeError and leaves the model unchanged; so does a second strategy on
    the same model. See notebook 05_finetuning_strategies_compared.
    """
    _validate.module("model", model)
    _validate.choice("name", name, STRATEGIES)
    if strategy_of(model) is not None or any(isinstance(m, _WRAPPERS) for m in model.modules()):
        raise ValueError(f"model already has a fine-tuning strategy ({strategy_of(model) or 'wrapped layers'}); "
                         "apply a strategy to a fresh copy of the base model")
    options = _check_config(name, config)

    if name == "full":
        model.requires_grad_(True)
    elif name == "dense_delta":
        names = _resolve_targets(model, options["target_modules"], "linear_targets", nn.Linear)
        model.requires_grad_(False)
        for target in names:
            replace_module(model, target, DenseDeltaLinear(model.get_submodule(target)))
    elif name == "adapters":
        names = _resolve_targets(model, options["target_modules"], "adapter_targets", None)
        for target in names:  # check every output width before changing anything
            output_features(model.get_submodule(target))
        model.requires_grad_(False)
        for target in names:
            replace_module(model, target, SerialAdapter(model.get_submodule(target), int(options["bottleneck"]),
                                                  float(options["init_scale"])))
    elif name == "lora":
        # Resolve here so a typo is reported as target_modules=... (this function's parameter), not as
        # add_lora's target_modules=...; add_lora then gets exactly the layers found.
        names = _resolve_targets(model, options["target_modules"], "linear_targets", nn.Linear)
        add_lora(model, dataclasses.replace(options["config"], target_modules=names))
    elif name == "head_only":
        head = options["head"] or getattr(model, "head_name", None)
        if not isinstance(head, str) or not isinstance(dict(model.named_modules()).get(head), nn.Module):
            raise ValueError(f"head={head!r} is not a module of this model; modules that exist: "
                             f"{', '.join(n for n, _ in model.named_modules() if n)}")
        model.requires_grad_(False)
        model.get_submodule(head).requires_grad_(True)
    elif name == "bias_only":
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        if not biases:
            raise ValueError("model has no bias parameters, so 'bias_only' would train nothing")
        model.requires_grad_(False)
        for p in biases:
            p.requires_grad_(True)
    model.finetuning_strategy = name
    return model


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What must be stored per task: the trainable tensors, keyed as in ``model.state_dict()``.

    Full fine-tuning: the whole model; LoRA: ``lora_A``/``lora_B``; dense ΔW: ``delta_weight``s; adapters:
    ``down``/``up``; head only: the head. Load it back with ``model.load_state_dict(sd, strict=False)``.
    """
    _validate.module("model", model)
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold a LoRA or dense-ΔW update into the frozen weights and put the plain ``nn.Linear`` layers back.

    Afterwards the model has exactly the base model's architecture (PEFT's ``merge_and_unload``), so it
    runs at the base model's speed. In place; returns the model, with ``model.finetuning_merged = True``
    (`strategy_of` still gives the strategy's name). Raises ValueError for serial adapters
    (not mergeable), a model without a strategy, or one already merged. See notebook
    05_finetuning_strategies_compared.
    """
    _validate.module("model", model)
    name = strategy_of(model)
    if name is None:
        raise ValueError("model has no fine-tuning strategy to merge; apply_strategy(model, ...) first")
    if getattr(model, "finetuning_merged", False):
        raise ValueError("model has already been merged and unloaded")
    if name not in MERGEABLE:
        raise ValueError(f"strategy {name!r} cannot be merged; mergeable strategies: {', '.join(MERGEABLE)}"
                         + (" (the gelu inside each adapter makes it a nonlinear function of its input, which "
                            "no change of a weight matrix can reproduce: it stays as extra depth)"
                            if name == "adapters" else " (it adds no modules: the model already is plain)"))
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, DenseDeltaLinear))}
    for layer_name, layer in wrappers.items():
        if not layer.merged:
            layer.merge()
        replace_module(model, layer_name, layer.base)
    model.finetuning_merged = True
    return model


__all__ = ["STRATEGIES", "STRATEGY_OPTIONS", "STRATEGY_LABELS", "MERGEABLE", "DenseDeltaLinear",
           "SerialAdapter", "apply_strategy", "merge_and_unload", "trainable_state_dict", "strategy_of"]
