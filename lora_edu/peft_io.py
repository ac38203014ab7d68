"""Saving and loading only the adapters, in Hugging Face PEFT's on-disk format.

Explained in notebook 04_lora_from_scratch (one adapter) and notebook 07_many_tasks_one_model (several).
An adapter is a folder with two files:

- ``adapter_config.json``: ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``lora_dropout``, ``use_rslora``,
  ``target_modules`` (and PEFT's other settings, which must be at their defaults here);
- ``adapter_model.safetensors``: for every adapted module ``<name>`` (a full module name of the plain
  model), ``base_model.model.<name>.lora_A.weight`` of shape ``(r, in_features)`` and
  ``base_model.model.<name>.lora_B.weight`` of shape ``(out_features, r)``.

That is what PEFT's ``save_pretrained`` writes for a plain ``torch.nn.Module`` wrapped by ``get_peft_model``
(PEFT removes the adapter name from the keys). With several adapters PEFT writes ``default`` in the folder
itself and every other adapter in a sub-folder named after it; `save_peft_adapter` does the same, so
``peft.PeftModel.from_pretrained(base, folder)`` and ``load_adapter(folder / name, name)`` load what it writes,
and `load_peft_adapter` loads what PEFT writes. This module never imports peft.
"""
from __future__ import annotations

import dataclasses
import json
import re
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from . import _validate
from .lora import (LoraConfig, _add_adapter_layers, _check_new_name, _inside_lora, _linear_names, adapter_names,
                   find_target_modules, lora_layers, refuse_if_merged, target_matches)

__all__ = ["save_peft_adapter", "load_peft_adapter", "read_adapter_config", "refuse_unsupported_peft_settings",
           "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")

# PEFT settings lora_edu does not implement, with the value that means "not used".
_UNSUPPORTED_DEFAULTS = {
    "use_dora": False, "bias": "none", "fan_in_fan_out": False, "lora_bias": False,
    "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "layers_to_transform": None,
    "layers_pattern": None, "exclude_modules": None, "target_parameters": None, "layer_replication": None,
    "trainable_token_indices": None, "use_qalora": False, "megatron_config": None,
    # variants that change the forward pass (PEFT's LoraConfig fields tagged is_lora_variant)
    "velora_config": None, "alora_invocation_tokens": None, "monteclora_config": None, "use_bdlora": None,
    "arrow_config": None, "kasa_config": None,
}


def refuse_unsupported_peft_settings(values: dict) -> None:
    """ValueError naming the first PEFT setting in ``values`` (a LoRA config as a dict) that lora_edu does not
    implement (DoRA, bias training, rank_pattern, an initialisation such as PiSSA, ...), with the value it needs."""
    for key, default in {**_UNSUPPORTED_DEFAULTS, "init_lora_weights": True}.items():
        value = values.get(key, default)
        unused = value == default or (default is None and value in ({}, [])) or (
            key == "init_lora_weights" and (isinstance(value, bool) or value == "gaussian"))
        if not unused:
            raise ValueError(f"the config sets {key}={value!r}, which lora_edu does not implement (it needs "
                             f"{key}={default!r}); load this adapter with peft.PeftModel.from_pretrained")


def peft_key(module_name: str, factor: str) -> str:
    """The safetensors key PEFT uses for factor ``"A"`` or ``"B"`` of module ``module_name``."""
    return f"base_model.model.{module_name}.lora_{factor}.weight"


def _peft_target_modules(model: nn.Module, names: list[str]):
    """``target_modules`` for the config: the plain list of full names when PEFT's suffix matching
    selects exactly those modules, otherwise an anchored regular expression of the exact names."""
    inside = _inside_lora(model)
    plain = [n for n, _ in model.named_modules() if n and n not in inside]
    if {n for n in plain if target_matches(n, names)} == set(names):
        return sorted(names)
    return "(" + "|".join(re.escape(n) for n in sorted(names)) + ")"


def adapter_folder(folder, adapter_name: str) -> Path:
    """Where PEFT keeps an adapter: ``default`` in ``folder`` itself, any other in ``folder / adapter_name``."""
    folder = _validate.folder("folder", folder)
    return folder if adapter_name == "default" else folder / adapter_name


def save_peft_adapter(model: nn.Module, folder, adapter_name: str | None = None) -> Path:
    """Write only LoRA factors to ``folder`` (created if needed) in PEFT's format and layout: every adapter
    (``adapter_name=None``, like PEFT's ``save_pretrained``) or just the one named. Adapter ``default`` goes in
    ``folder`` itself, any other in ``folder / <name>``; each gets ``adapter_config.json`` and
    ``adapter_model.safetensors`` (each layer's ``lora_A (r, in)`` and ``lora_B (out, r)``). Returns ``folder``
    as a Path. Merged layers are saved too (merging leaves the factors as they are).
    See notebooks 04_lora_from_scratch and 07_many_tasks_one_model.
    """
    from safetensors.torch import save_file

    _validate.module("model", model)
    path = _validate.folder("folder", folder)
    known = adapter_names(model)
    if not known:
        raise ValueError("model has no LoRA layers to save: add them first with add_lora(model, config) or "
                         "load_peft_adapter(model, folder)")
    if adapter_name is not None and adapter_name not in known:
        raise ValueError(f"adapter_name={adapter_name!r} is not an adapter of this model; adapters: {known}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"folder={str(path)!r} exists and is not a directory; give a folder path")
    layers, files = lora_layers(model), []
    for name in known if adapter_name is None else [adapter_name]:  # check and build every adapter first
        owners = {m: layer for m, layer in layers.items() if name in layer.lora_A}
        settings = {m: (l.r[name], l.lora_alpha[name], l.lora_config[name].lora_dropout,
                        l.lora_config[name].use_rslora) for m, l in owners.items()}
        if len(set(settings.values())) > 1:
            described = "; ".join(f"{n}: r={s[0]}, alpha={s[1]}, dropout={s[2]}, use_rslora={s[3]}"
                                  for n, s in settings.items())
            raise ValueError(f"save_peft_adapter needs the same r, alpha, dropout and use_rslora on every LoRA "
                             f"layer of adapter {name!r} (PEFT's adapter_config.json holds one of each); this "
                             f"model has {described}")
        config = next(iter(owners.values())).lora_config[name]
        if config.use_dora:
            raise ValueError(f"adapter {name!r} is a DoRA adapter: save_peft_adapter writes plain LoRA factors "
                             "only (DoRA's magnitude vectors are in lora_state_dict(model)); nothing was written")
        if config.init_lora_weights == "pissa":
            raise ValueError(f"adapter {name!r} is a PiSSA adapter, whose factors only make sense on the residual "
                             "weight it replaced: convert it to plain LoRA on the original weight with "
                             "lora_edu.variants.pissa_as_lora (rank 2r), as PEFT does; nothing was written")
        saved = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
                 **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                 "target_modules": _peft_target_modules(model, list(owners)), **_UNSUPPORTED_DEFAULTS}
        try:
            saved["peft_version"] = metadata.version("peft")  # PEFT fills it in when it saves; no import needed
        except metadata.PackageNotFoundError:
            pass
        tensors = {peft_key(m, f): getattr(layer, f"lora_{f}")[name].detach().to("cpu").contiguous()
                   for m, layer in owners.items() for f in "AB"}
        files.append((adapter_folder(path, name), json.dumps(saved, indent=2, sort_keys=True) + "\n", tensors))
    for target, config_text, tensors in files:
        target.mkdir(parents=True, exist_ok=True)
        (target / ADAPTER_CONFIG_NAME).write_text(config_text, encoding="utf-8")
        save_file(tensors, str(target / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    return path


def read_adapter_config(folder) -> LoraConfig:
    """Read and check ``adapter_config.json`` in ``folder`` and return it as a `lora_edu.LoraConfig`:
    FileNotFoundError when the folder or the file is missing; ValueError when it is not JSON, not a LoRA
    config, has bad ``r``/``lora_alpha``/``lora_dropout``/``use_rslora``/``target_modules``, or uses a PEFT
    feature lora_edu does not implement (DoRA, bias training, rank_pattern, ...).
    See notebook 04_lora_from_scratch."""
    path = _validate.folder("folder", folder)
    if not path.is_dir():
        raise FileNotFoundError(f"folder={str(path)!r} does not exist or is not a folder; give the folder "
                                f"that holds {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}")
    config_path = path / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{ADAPTER_CONFIG_NAME} is missing in folder={str(path)!r}; an adapter folder "
                                f"holds {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}"
                                + (f" (sub-folders here: {sorted(p.name for p in path.iterdir() if p.is_dir())}: "
                                   "PEFT keeps each non-default adapter in one)" if any(path.iterdir()) else ""))
    where = f"{ADAPTER_CONFIG_NAME} in {str(path)!r}"
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(values).__name__}")
    if values.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type must be 'LORA', got {values.get('peft_type')!r}")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in values]
    if missing:
        raise ValueError(f"{where} lacks {missing}; a LoRA config needs r, lora_alpha and target_modules")
    try:
        return LoraConfig.from_peft(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights_path = path / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{ADAPTER_WEIGHTS_NAME} is missing in folder={str(path)!r}"
                                + (" (found adapter_model.bin: lora_edu reads only safetensors)"
                                   if (path / "adapter_model.bin").exists() else ""))
    try:
        return load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError, ValueError) on bad files
        raise ValueError(f"{ADAPTER_WEIGHTS_NAME} in {str(path)!r} is not a valid safetensors file "
                         f"({type(exc).__name__}: {exc})") from None


def _factors(weights: dict, where: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A": tensor, "B": tensor}}`` from PEFT's keys, checked for stray and missing keys."""
    factors, unexpected = {}, []
    for key, tensor in weights.items():
        match = _KEY.match(key)
        if match is None:
            unexpected.append(key)
        else:
            factors.setdefault(match["module"], {})[match["factor"]] = tensor
    if unexpected:
        raise ValueError(f"{where} holds keys that are not LoRA factors of the form "
                         f"'base_model.model.<module>.lora_A.weight' / '...lora_B.weight': {sorted(unexpected)[:8]}")
    if not factors:
        raise ValueError(f"{where} holds no LoRA factors")
    incomplete = sorted(n for n, f in factors.items() if set(f) != {"A", "B"})
    if incomplete:
        raise ValueError(f"{where} lacks lora_A or lora_B for modules {incomplete}")
    return factors


def load_peft_adapter(model: nn.Module, folder, adapter_name: str = "default") -> nn.Module:
    """Add the adapter saved in ``folder`` (by `save_peft_adapter` or PEFT's ``save_pretrained``; for a
    non-default adapter of a multi-adapter save, its sub-folder) to ``model`` under the name ``adapter_name``,
    in place, and return the model. The model may already hold other adapters (PEFT's ``load_adapter``):
    the new one then arrives inactive and frozen; on a model without LoRA it becomes active and trainable.

    Every adapted ``nn.Linear`` ``(out, in)`` gets ``lora_A (r, in)`` and ``lora_B (out, r)`` equal to the saved
    factors (cast to the layer's device and dtype). The config's ``target_modules`` must select exactly the
    modules the weights are for. Everything is checked first: a missing folder or file raises
    FileNotFoundError; a bad config, a corrupt file, unknown keys, modules this model lacks, wrong shapes or
    a name in use raise ValueError, and the model is left exactly as it was. See notebook 04_lora_from_scratch.
    """
    _validate.module("model", model)
    path = _validate.folder("folder", folder)
    _check_new_name(adapter_name, adapter_names(model))
    config = read_adapter_config(path)
    where = f"{ADAPTER_WEIGHTS_NAME} in {str(path)!r}"
    factors = _factors(_read_weights(path), where)

    modules = dict(model.named_modules())
    unknown = sorted(n for n in factors if n not in modules or n in _inside_lora(model))
    if unknown:
        raise ValueError(f"the adapter in {str(path)!r} is for modules this model does not have: {unknown}. "
                         f"Linear layers in this model: {_linear_names(model)}")
    try:
        selected = set(find_target_modules(model, config.target_modules))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{ADAPTER_CONFIG_NAME} in {str(path)!r} does not fit this model: {exc}") from None
    if selected != set(factors):
        raise ValueError(f"{ADAPTER_CONFIG_NAME} in {str(path)!r}: target_modules={config.target_modules!r} "
                         f"selects {sorted(selected)} in this model, but the weights are for {sorted(factors)}")
    refuse_if_merged(model, "before loading another adapter")
    for name, pair in sorted(factors.items()):
        layer = modules[name]
        want = {"A": (config.r, layer.in_features), "B": (layer.out_features, config.r)}
        for factor in ("A", "B"):
            if tuple(pair[factor].shape) != want[factor]:
                raise ValueError(f"{where}: lora_{factor} of module {name!r} has shape {tuple(pair[factor].shape)}, "
                                 f"but this model's layer ({layer.out_features}x{layer.in_features}) with "
                                 f"r={config.r} needs {want[factor]}")
            if not pair[factor].is_floating_point() or not torch.isfinite(pair[factor]).all():
                raise ValueError(f"{where}: lora_{factor} of module {name!r} must hold finite floating-point "
                                 f"numbers (dtype {pair[factor].dtype})")

    # Everything is checked: now change the model.
    added = _add_adapter_layers(model, sorted(factors), config, adapter_name, draw=False)
    with torch.no_grad():
        for name, layer in added.items():
            layer.lora_A[adapter_name].copy_(factors[name]["A"])
            layer.lora_B[adapter_name].copy_(factors[name]["B"])
    return model
