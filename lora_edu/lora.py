"""The LoRA layer, its configuration, named adapters on one model, and merging them into the frozen weight.

Explained in notebook 04_lora_from_scratch (one adapter) and notebook 07_many_tasks_one_model (several). The
names are PEFT's (`LoraConfig`, `lora_A`, `lora_B`, `scaling`, `target_modules`, `set_adapter`,
`disable_adapter`, `delete_adapter`, `merge`, `unmerge`) and so are the numbers (``tests/test_*vs_peft.py``).
For a frozen ``W0`` (out_features, in_features) an adapter learns

    h = W0 x + scaling * B (A dropout(x)),   A: (r, in_features),  B: (out_features, r),

with ``scaling = lora_alpha / r`` (rsLoRA: ``lora_alpha / sqrt(r)``). ``B`` starts at zero, so ``ΔW = scaling B A
= 0`` and the model starts exactly where it was. A layer holds adapters by name (``layer.lora_A["default"]``),
one of them active; how an adapter starts, what its branch adds and what it merges are the methods of a
`LoraVariant` (plain LoRA here; DoRA and PiSSA in ``lora_edu.variants``, notebook 10). The frozen layer may be
an ``nn.Linear`` or a 4-bit ``lora_edu.quantization.Linear4bit`` (QLoRA, notebook 10). A bad call raises TypeError/ValueError naming the
parameter and the allowed values, before anything changes.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate
from .quantization import Linear4bit

__all__ = ["LoraConfig", "LoraVariant", "LoRALinear", "lora_scaling", "init_lora_A_", "add_lora",
           "find_target_modules", "lora_layers", "adapter_names", "active_adapter", "merge_lora", "unmerge_lora",
           "lora_state_dict", "BASE"]

LINEAR_LAYERS = (nn.Linear, Linear4bit)  # what LoRA wraps: a plain linear layer or a frozen 4-bit one (QLoRA)
BASE = "__base__"  # in per_example_adapters: this example runs the base model alone (PEFT's name)
_ADDED = itertools.count()  # stamps every adapter a layer gets, in the order they are added


# --- The configuration: PEFT's field names, checked once ---

@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """The settings of one adapter, with PEFT's field names and defaults (``peft.LoraConfig``): ``r`` (A is
    (r, in), B is (out, r)), ``lora_alpha``, ``lora_dropout`` (on the branch's input, in [0, 1)), ``use_rslora``
    (``lora_alpha / sqrt(r)``, notebook 06), ``target_modules`` (for `add_lora`: a list of names, matching a
    module whose full name equals an entry or ends in ``"." + entry``, or a regular expression for the full
    name) and ``init_lora_weights``: ``True`` (A Kaiming-uniform, B zero), ``"gaussian"`` (A normal with std
    1/r, B zero), ``False`` (both random, as a fresh ``nn.Linear``: ΔW ≠ 0, for tests) or ``"pissa"`` (A and B
    from W's top-r singular triplets, W replaced by the residual: notebook 10). ``use_dora``: DoRA's
    magnitude and direction (notebook 10).

    Frozen: ``dataclasses.replace(config, r=16)`` makes a changed copy, checked again.
    See notebook 04_lora_from_scratch.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    use_dora: bool = False

    def __post_init__(self):
        _validate.integer("r", self.r, 1, hint="(the rank, e.g. 1, 4 or 8)")
        _validate.positive("lora_alpha", self.lora_alpha, hint="(e.g. 8 or 16.0)", tensors=False)
        _validate.real("lora_dropout", self.lora_dropout, 0, 1, open_max=True, hint="(0 turns it off)",
                       tensors=False)
        _validate.boolean("use_rslora", self.use_rslora)
        if not (isinstance(self.init_lora_weights, bool) or self.init_lora_weights in ("gaussian", "pissa")):
            raise ValueError(f"init_lora_weights={self.init_lora_weights!r} is not allowed; allowed values: "
                             "True (A random, B zero), 'gaussian' (A normal, B zero), False (both random), "
                             "'pissa' (A and B from W's top singular directions)")
        _validate.boolean("use_dora", self.use_dora)
        if self.use_dora and self.init_lora_weights == "pissa":
            raise ValueError("use_dora=True with init_lora_weights='pissa' is not implemented here: choose one")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", _check_target_modules(self.target_modules))

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.lora_alpha, self.use_rslora)

    @classmethod
    def from_peft(cls, peft_config) -> "LoraConfig":
        """The same settings from a ``peft.LoraConfig`` (or its dict), field for field; a PEFT feature this
        package does not implement (DoRA, bias training, rank_pattern, ...) raises ValueError."""
        from .peft_io import refuse_unsupported_peft_settings

        values = peft_config if isinstance(peft_config, dict) else vars(peft_config)
        refuse_unsupported_peft_settings(values)
        fields = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        if isinstance(fields.get("target_modules"), (set, frozenset)):
            fields["target_modules"] = sorted(fields["target_modules"])
        return cls(**fields)


def _check_target_modules(target_modules):
    message = ("target_modules must not be empty: give a list of module names (e.g. ['q', 'v']) or a "
               "regular expression matched against full names")
    if isinstance(target_modules, str):
        if not target_modules:
            raise ValueError(message)
        try:
            re.compile(target_modules)
        except re.error as exc:
            raise ValueError(f"target_modules={target_modules!r} is not a valid regular expression: {exc}") from None
        return target_modules
    if not isinstance(target_modules, (list, tuple, set, frozenset)):
        raise TypeError("target_modules must be a list of module names or a regular expression (str), "
                        f"got {type(target_modules).__name__}")
    if len(target_modules) == 0:
        raise ValueError(message)
    for item in target_modules:
        if not isinstance(item, str) or not item:
            raise TypeError("every entry of target_modules must be a non-empty str (a module name or a "
                            f"dotted suffix of one), got {item!r}")
    return list(target_modules) if isinstance(target_modules, (list, tuple)) else sorted(target_modules)


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """The factor LoRA multiplies ``B A x`` by: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA.
    The one place the package computes it. See notebooks 04_lora_from_scratch and 06_rank_and_alpha_explorer."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def init_lora_A_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PEFT's default start for ``A`` (r, in), in place: Kaiming-uniform with ``a = √5``, i.e. uniform on
    ``[-1/√in, 1/√in]``, like a fresh ``nn.Linear``'s weight. Draws from ``generator`` (a CPU generator) or
    from torch's global CPU generator. The one place the package draws ``A``. See notebook 04_lora_from_scratch."""
    return nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)


# --- The variant seam: how an adapter starts, what its branch adds, what it merges ---

class LoraVariant:
    """Plain LoRA. A variant (DoRA, PiSSA: notebook 10, ``lora_edu.variants``) subclasses this and overrides
    what differs; `LoRALinear` calls these methods and nothing else about the math: ``check`` (before anything
    changes), ``init``, ``forward``, ``delta_weight``, and ``merge``/``unmerge`` (which add and subtract
    ``delta_weight`` here)."""

    def check(self, layer: "LoRALinear", name: str, config: LoraConfig) -> None:
        """Raise if this variant cannot be added to ``layer`` as it is (nothing is changed yet)."""

    def init(self, layer: "LoRALinear", name: str, config: LoraConfig) -> None:
        """Fill ``layer.lora_A[name]`` (r, in) and ``layer.lora_B[name]`` (out, r). Random numbers come from
        torch's CPU generator and are then moved, so a seed gives the same factors on every device."""
        a = torch.zeros(config.r, layer.in_features)
        b = torch.zeros(layer.out_features, config.r)
        if config.init_lora_weights is True:
            init_lora_A_(a)
        elif config.init_lora_weights == "gaussian":
            nn.init.normal_(a, std=1 / config.r)
        else:  # False: both random, as nn.Linear starts them (ΔW ≠ 0)
            init_lora_A_(a)
            init_lora_A_(b)
        with torch.no_grad():
            layer.lora_A[name].copy_(a)
            layer.lora_B[name].copy_(b)

    def forward(self, layer: "LoRALinear", name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result + scaling · B (A dropout(x))``; ``result`` is ``base(x)``. PEFT's order of operations, so
        the numbers agree to the bit."""
        branch = F.linear(F.linear(layer.lora_dropout[name](x), layer.lora_A[name]), layer.lora_B[name])
        return result + branch * layer.scaling[name]

    def delta_weight(self, layer: "LoRALinear", name: str) -> torch.Tensor:
        """``ΔW = scaling · B A`` (out, in), what merging adds to the frozen weight."""
        weight = layer.base.weight
        compute = torch.promote_types(weight.dtype, torch.float32)  # half-precision factors: multiply in fp32
        b, a = layer.lora_B[name].to(compute), layer.lora_A[name].to(compute)
        return ((b @ a) * layer.scaling[name]).to(weight.dtype)

    def merge(self, layer: "LoRALinear", name: str) -> None:
        """``W0 ← W0 + ΔW``, in place."""
        layer.base.weight.add_(self.delta_weight(layer, name))

    def unmerge(self, layer: "LoRALinear", name: str) -> None:
        """``W0 ← W0 - ΔW``, in place (the current ΔW: do not train while merged)."""
        layer.base.weight.sub_(self.delta_weight(layer, name))


def variant_for(config: LoraConfig) -> LoraVariant:
    """The variant a config asks for: DoRA (``use_dora``), PiSSA (``init_lora_weights="pissa"``) or plain LoRA.
    A fresh object per adapter (a variant may keep state, such as DoRA's norms while merged)."""
    from . import variants  # noqa: PLC0415  (variants builds on this module)

    if config.use_dora:
        return variants.DoraVariant()
    if config.init_lora_weights == "pissa":
        return variants.PissaVariant()
    return LoraVariant()


# --- The layer ---

class AdapterFactors(nn.ParameterDict):
    """One factor per adapter name (``lora_A`` or ``lora_B``), printed as shapes, the same on every device."""

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: {tuple(p.shape)}" for name, p in self.items())


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus named low-rank adapters: ``h = base(x) + scaling · B A dropout(x)`` for
    the active adapter. ``x`` (..., in_features) → ``h`` (..., out_features).

    Per adapter ``name``: ``lora_A[name]`` (r, in_features) maps the input down to r numbers, ``lora_B[name]``
    (out_features, r) maps them up (PEFT keeps each in an ``nn.Linear``: ``lora_A[name].weight``);
    ``scaling[name]``, ``r[name]``, ``lora_alpha[name]``, ``lora_dropout[name]`` as in PEFT. The first adapter
    comes with the layer and is ``active_adapter``; `add_adapter` adds more. ``merge()`` adds the active
    adapter's ΔW into ``base.weight`` (its branch is then skipped: no extra latency); ``unmerge()`` subtracts
    every merged ΔW again. Do not train while merged: unmerge subtracts the *current* ΔW.
    See notebook 04_lora_from_scratch.
    """

    def __init__(self, base: nn.Linear, config: LoraConfig | None = None, adapter_name: str = "default", *,
                 draw: bool = True):
        if isinstance(base, LoRALinear):
            raise ValueError("base already is a LoRALinear: add another adapter with layer.add_adapter(name, "
                             "config), or pass the plain nn.Linear (layer.base)")
        _validate.instance("base", base, LINEAR_LAYERS, "a torch.nn.Linear (or a lora_edu.quantization.Linear4bit)")
        config = LoraConfig() if config is None else config
        _validate.instance("config", config, LoraConfig, "a lora_edu.LoraConfig")
        _check_new_name(adapter_name, [])
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A, self.lora_B = AdapterFactors(), AdapterFactors()
        self.lora_magnitude_vector = AdapterFactors()  # DoRA's m per adapter (out_features,), PEFT's name
        self.lora_dropout = nn.ModuleDict()
        self.r, self.lora_alpha, self.scaling = {}, {}, {}
        self.lora_config: dict[str, LoraConfig] = {}
        self.lora_variant: dict[str, LoraVariant] = {}
        self.added_order: dict[str, int] = {}  # a running count, so adapter_names() lists them as added
        self.active_adapter: str | None = adapter_name
        self.merged_adapters: list[str] = []
        self.disable_adapters = False
        self._per_example = None  # inside per_example_adapters: (A, B, scaling) per example
        self.add_adapter(adapter_name, config, draw=draw)

    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)
    merged = property(lambda self: bool(self.merged_adapters), doc="True while any adapter is merged.")

    def add_adapter(self, name: str, config: LoraConfig, *, draw: bool = True) -> None:
        """Add adapter ``name`` with ``config`` (frozen; `set_adapter` makes it active and trainable).
        ``draw=False`` leaves both factors at zero and draws no random numbers (used when loading them)."""
        _check_new_name(name, list(self.lora_A))
        _validate.instance("config", config, LoraConfig, "a lora_edu.LoraConfig")
        variant = variant_for(config)
        variant.check(self, name, config)
        weight, trainable = self.base.weight, name == self.active_adapter
        make = lambda *shape: nn.Parameter(torch.zeros(*shape, device=weight.device, dtype=weight.dtype),
                                           requires_grad=trainable)
        self.lora_A[name], self.lora_B[name] = make(config.r, self.in_features), make(self.out_features, config.r)
        self.lora_dropout[name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.r[name], self.lora_alpha[name], self.scaling[name] = config.r, config.lora_alpha, config.scaling
        self.lora_config[name], self.lora_variant[name] = config, variant
        self.added_order[name] = next(_ADDED)
        if draw:
            self.lora_variant[name].init(self, name, config)

    def remove_adapter(self, name: str) -> None:
        for store in (self.lora_A, self.lora_B, self.lora_dropout, self.r, self.lora_alpha, self.scaling,
                      self.lora_config, self.lora_variant, self.added_order):
            del store[name]
        if name in self.lora_magnitude_vector:
            del self.lora_magnitude_vector[name]

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """What adapter ``name`` trains here: ``lora_A``, ``lora_B`` (and DoRA's magnitude vector)."""
        found = [self.lora_A[name], self.lora_B[name]]
        return found + ([self.lora_magnitude_vector[name]] if name in self.lora_magnitude_vector else [])

    def delta_weight(self, adapter_name: str | None = None) -> torch.Tensor:
        """``ΔW`` (out, in) of an adapter (default: the active one), in the base weight's dtype."""
        name = self.active_adapter if adapter_name is None else adapter_name
        return self.lora_variant[name].delta_weight(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x)`` plus the active adapter's branch, unless
        adapters are disabled, the active one is merged (then it is inside ``base``) or this layer lacks it."""
        result = self.base(x)
        if self._per_example is not None:
            return result + self._per_example_branch(x)
        name = self.active_adapter
        if self.disable_adapters or name not in self.lora_A or name in self.merged_adapters:
            return result
        return self.lora_variant[name].forward(self, name, x, result)

    def _per_example_branch(self, x: torch.Tensor) -> torch.Tensor:
        """Each example's own adapter in two gathered products: ``x`` (batch, ..., in) → (batch, ..., out),
        with ``a`` (batch, r_max, in), ``b`` (batch, out, r_max) and ``s`` (batch, 1, 1) example i's ``A``, ``B``
        and scaling (applied last, as PEFT does, so a GPT's logits agree with PEFT's to the bit)."""
        a, b, s = self._per_example
        if x.shape[0] != a.shape[0]:
            raise ValueError(f"per_example_adapters got {a.shape[0]} adapter names but the batch has "
                             f"{x.shape[0]} examples; give one name per example")
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])                          # (batch, tokens, in)
        up = torch.bmm(torch.bmm(x3, a.transpose(1, 2)), b.transpose(1, 2))  # (batch, tokens, out)
        return (up * s).reshape(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def merge(self, adapter_name: str | None = None) -> "LoRALinear":
        """``W0 ← W0 + ΔW`` of an adapter (default: the active one). ValueError if it is merged already."""
        name = self.active_adapter if adapter_name is None else adapter_name
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} of this LoRALinear is already merged; merging again would add "
                             "ΔW a second time. Call unmerge() first, or leave it merged")
        if isinstance(self.base, Linear4bit):
            raise ValueError("this LoRALinear's base is a 4-bit Linear4bit: ΔW cannot be added to 4-bit numbers "
                             "without rounding it away. Merge into a 16/32-bit copy: nn.Linear with weight "
                             "base.dequantized_weight(), then merge there")
        self.lora_variant[name].merge(self, name)
        self.merged_adapters.append(name)
        return self

    @torch.no_grad()
    def unmerge(self) -> "LoRALinear":
        """``W0 ← W0 - ΔW`` for every merged adapter (last merged first). ValueError if none is merged."""
        if not self.merged_adapters:
            raise ValueError("this LoRALinear is not merged (merged=False); unmerging would subtract ΔW "
                             "from the frozen weight. Call merge() first")
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self.lora_variant[name].unmerge(self, name)
        return self

    def extra_repr(self) -> str:
        adapters = "; ".join(
            f"{n}: r={c.r}, lora_alpha={c.lora_alpha}, scaling={self.scaling[n]:.4g} "
            f"({'alpha/sqrt(r)' if c.use_rslora else 'alpha/r'}), dropout={c.lora_dropout}"
            for n, c in self.lora_config.items())
        return f"{adapters}; active={self.active_adapter!r}, merged={self.merged_adapters}"


def _check_new_name(name, existing) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"adapter_name must be a non-empty str, got {type(name).__name__} {name!r}")
    if name == BASE:
        raise ValueError(f"adapter_name={BASE!r} is reserved: in per_example_adapters it means 'the base "
                         "model alone'; pick another name")
    if "." in name:
        raise ValueError(f"adapter_name={name!r} must not contain '.' (it becomes part of parameter names)")
    if name in existing:
        raise ValueError(f"adapter_name={name!r} exists already (adapters: {sorted(existing)}); pick a new "
                         f"name or delete_adapter(model, {name!r}) first")
    return name


# --- Finding the layers by name (PEFT's target_modules rules) ---

def target_matches(name: str, target_modules) -> bool:
    """PEFT's rule: a str is a full regular-expression match on the full module name; a list matches a
    name equal to an entry or ending in ``"." + entry``. See notebook 04_lora_from_scratch."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in ``model`` by its full module name, in module order."""
    _validate.module("model", model)
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _inside_lora(model: nn.Module) -> set[str]:
    """The names of the modules inside a LoRALinear (its base, its dropouts), not the LoRALinear itself."""
    inside = set()
    for name, layer in lora_layers(model).items():
        inside.update(sub for sub, _ in layer.named_modules(prefix=name) if sub != name)
    return inside


def find_target_modules(model: nn.Module, target_modules) -> list[str]:
    """The full names of the layers ``target_modules`` selects (PEFT's matching rules): plain ``nn.Linear``
    layers and layers that already are a `LoRALinear` (they get one more adapter). Raises ValueError when
    nothing matches (listing the linear layers that exist) and TypeError when a match is not a linear
    layer. Changes nothing. See notebook 04_lora_from_scratch."""
    _validate.module("model", model)
    target_modules = _check_target_modules(target_modules)
    inside = _inside_lora(model)
    matched, not_linear, conv1d = [], [], False
    for name, module in model.named_modules():
        if name == "" or name in inside or not target_matches(name, target_modules):
            continue
        if not isinstance(module, (*LINEAR_LAYERS, LoRALinear)):
            not_linear.append(f"{name!r} ({type(module).__name__})")
            conv1d = conv1d or type(module).__name__ == "Conv1D"
        elif isinstance(model.get_submodule(name.rpartition(".")[0]), nn.MultiheadAttention):
            # MultiheadAttention reads out_proj.weight directly instead of calling out_proj(x):
            # a wrapped out_proj would be bypassed (or break), so refuse it here.
            not_linear.append(f"{name!r} (the output projection inside nn.MultiheadAttention, which reads its "
                              "weight directly)")
        else:
            matched.append(name)
    if not_linear:
        why = (" A Conv1D (GPT-2 style, transformers.pytorch_utils.Conv1D) stores its weight transposed, as "
               "(in_features, out_features), and computes x @ W + b; lora_edu refuses it rather than build ΔW with "
               "the wrong orientation. Use peft.LoraConfig(..., fan_in_fan_out=True) for such a model (notebook "
               "08_lora_with_peft)." if conv1d else "")
        raise TypeError(f"target_modules={target_modules!r} matches {', '.join(not_linear)}: LoRALinear wraps "
                        f"only torch.nn.Linear layers.{why} Linear layers in this model: {_linear_names(model)}")
    if not matched:
        hint = (" (the model itself is an nn.Linear: wrap it directly with LoRALinear(model, config))"
                if isinstance(model, nn.Linear) else "")
        names = [n for n, _ in model.named_modules() if n]
        shown = ", ".join(names[:40]) + (f", ... ({len(names) - 40} more)" if len(names) > 40 else "")
        raise ValueError(f"target_modules={target_modules!r} matches no module of this model{hint}. "
                         f"Linear layers in this model: {_linear_names(model)}; all modules: "
                         f"{shown or '(none: the model has no submodules)'}")
    return matched


def _linear_names(model: nn.Module) -> str:
    inside = _inside_lora(model)
    names = [n for n, m in model.named_modules()
             if n and n not in inside and isinstance(m, (*LINEAR_LAYERS, LoRALinear))]
    return ", ".join(names) if names else "(none)"


# --- Adapters on a model ---

def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters in ``model``, in the order they were added."""
    first = {}
    for layer in lora_layers(model).values():
        for name, stamp in layer.added_order.items():
            first[name] = min(stamp, first.get(name, stamp))
    return sorted(first, key=first.get)


def active_adapter(model: nn.Module) -> str | None:
    """The adapter the model's forward pass uses (None when it has no LoRA layers)."""
    layers = list(lora_layers(model).values())
    return layers[0].active_adapter if layers else None


def _require_adapter(model: nn.Module, name, action: str) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model has no LoRA layers to {action}: add them first with add_lora(model, config) "
                         "or load_peft_adapter(model, folder)")
    known = adapter_names(model)
    if not isinstance(name, str):
        raise TypeError(f"adapter_name must be a str, one of {known}, got {type(name).__name__} {name!r}")
    if name not in known:
        raise ValueError(f"adapter_name={name!r} is not an adapter of this model; adapters: {known}")
    return layers


def refuse_if_merged(model: nn.Module, when: str) -> None:
    """ValueError ``model has merged adapters: unmerge_lora(model) {when}`` if any adapter is merged."""
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError(f"model has merged adapters: unmerge_lora(model) {when}")


def _set_trainable(model: nn.Module, freeze_the_rest: bool) -> None:
    """The active adapter's factors train, the other adapters' are frozen; ``freeze_the_rest`` freezes every
    parameter outside the adapters too (as PEFT does when it adds an adapter, not when it switches)."""
    if freeze_the_rest:
        model.requires_grad_(False)
    for layer in lora_layers(model).values():
        for name in layer.lora_A:
            for parameter in layer.adapter_parameters(name):
                parameter.requires_grad_(name == layer.active_adapter)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule called ``name`` is; returns ``new``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
    return new


def _add_adapter_layers(model: nn.Module, names, config: LoraConfig, adapter_name: str,
                        draw: bool = True) -> dict[str, LoRALinear]:
    """Give every (already checked) layer in ``names`` the adapter; a plain Linear becomes a LoRALinear."""
    active = active_adapter(model) or adapter_name
    added = {}
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, LoRALinear):
            layer.add_adapter(adapter_name, config, draw=draw)
        else:
            layer = replace_module(model, name, LoRALinear(layer, config, adapter_name, draw=draw))
            layer.active_adapter = active
        added[name] = layer
    _set_trainable(model, freeze_the_rest=True)
    return added


def add_lora(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Give every layer ``config.target_modules`` selects (PEFT's rules: ``["q"]`` selects ``blocks.0.attn.q``
    and ``blocks.1.attn.q``) the adapter ``adapter_name``, in place; returns ``model``. A plain ``nn.Linear
    (out, in)`` becomes a `LoRALinear`, one that is already gets one more adapter: ``r (in + out)`` numbers each.
    The model's first adapter becomes active and trainable; a later one arrives frozen and inactive, as in PEFT
    (`set_adapter` switches); every parameter outside the adapters is frozen. Everything is checked first: a
    bad call leaves the model exactly as it was. See notebook 04_lora_from_scratch.
    """
    _validate.module("model", model)
    _validate.instance("config", config, LoraConfig, "a lora_edu.LoraConfig (LoraConfig(target_modules=[...], "
                       "r=..., lora_alpha=...))")
    if config.target_modules is None:
        raise ValueError("config.target_modules is None: name the layers that get LoRA, e.g. "
                         f"LoraConfig(target_modules=['q', 'v'], ...). Linear layers in this model: "
                         f"{_linear_names(model)}")
    _check_new_name(adapter_name, adapter_names(model))
    refuse_if_merged(model, "before adding another adapter")
    names = find_target_modules(model, config.target_modules)
    _add_adapter_layers(model, names, config, adapter_name)
    return model


def merge_lora(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Merge an adapter (default: the active one) into every layer that has it: ``W0 ← W0 + scaling · B A``;
    the merged model then runs at the speed of the plain model. If another adapter is active, its branch still
    adds on top (PEFT instead skips every branch of a layer holding a merged adapter). Raises ValueError
    (changing nothing) if the model has no LoRA layers, the adapter is unknown or already merged.
    See notebook 04_lora_from_scratch."""
    name = active_adapter(model) if adapter_name is None and lora_layers(model) else adapter_name
    layers = _require_adapter(model, name, "merge")
    merged = [n for n, layer in layers.items() if name in layer.merged_adapters]
    if merged:
        raise ValueError(f"LoRA layers {merged} are already merged; merging again would add ΔW a second "
                         "time. Call unmerge_lora(model) first")
    quantized = [n for n, layer in layers.items() if name in layer.lora_A and isinstance(layer.base, Linear4bit)]
    if quantized:
        raise ValueError(f"LoRA layers {quantized} have 4-bit bases (Linear4bit): ΔW cannot be merged into 4-bit "
                         "numbers without rounding it away; nothing was merged")
    for layer in layers.values():
        if name in layer.lora_A:
            layer.merge(name)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo `merge_lora`: ``W0 ← W0 - scaling · B A`` for every merged adapter. Raises ValueError (changing
    nothing) if the model has no LoRA layers or none is merged. See notebook 04_lora_from_scratch."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to unmerge: add them first with add_lora(model, config)")
    if not any(layer.merged for layer in layers.values()):
        raise ValueError(f"LoRA layers {list(layers)} are not merged; unmerging would subtract ΔW from the "
                         "frozen weights. Call merge_lora(model) first")
    for layer in layers.values():
        if layer.merged:
            layer.unmerge()
    return model


def lora_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """Only one adapter's factors (default: the active one), keyed as in ``model.state_dict()``:
    ``"<module>.lora_A.<adapter>"`` ``(r, in)`` and ``"<module>.lora_B.<adapter>"`` ``(out, r)`` (and DoRA's
    ``"<module>.lora_magnitude_vector.<adapter>"`` ``(out,)``). Load them back
    with ``model.load_state_dict(sd, strict=False)``. See notebook 04_lora_from_scratch."""
    name = active_adapter(model) if adapter_name is None and lora_layers(model) else adapter_name
    layers = _require_adapter(model, name, "save")
    found = {}
    for module, layer in layers.items():
        for store in ("lora_A", "lora_B", "lora_magnitude_vector"):   # the last only for DoRA
            if name in getattr(layer, store):
                found[f"{module}.{store}.{name}"] = getattr(layer, store)[name].detach()
    return found
