"""Saving and loading only the adapter, in Hugging Face PEFT's on-disk format.

Explained in notebook 04_lora_from_scratch. A LoRA adapter is a folder with two files:

- ``adapter_config.json``: ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``lora_dropout``, ``use_rslora``,
  ``target_modules`` (and PEFT's other settings, which must be at their defaults here);
- ``adapter_model.safetensors``: for every adapted module ``<name>`` (a full module name of the plain
  model), ``base_model.model.<name>.lora_A.weight`` of shape ``(r, in_features)`` and
  ``base_model.model.<name>.lora_B.weight`` of shape ``(out_features, r)``.

That is the layout PEFT's ``save_pretrained`` writes for a plain ``torch.nn.Module`` wrapped by
``get_peft_model`` (PEFT removes the adapter name, ``default``, from the keys when saving), so
``peft.PeftModel.from_pretrained(base_model, directory)`` loads what `save_peft_adapter` writes, and
`load_peft_adapter` loads what PEFT writes. This module never imports peft.
"""
from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from .lora import (_check_model, _lora_owned_names, _replace_with_lora, _require_lora_layers,
                   check_lora_hyperparameters, find_target_modules, target_matches)

__all__ = ["save_peft_adapter", "load_peft_adapter", "read_adapter_config", "ADAPTER_CONFIG_NAME",
           "ADAPTER_WEIGHTS_NAME"]

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


def peft_key(module_name: str, factor: str) -> str:
    """The safetensors key PEFT uses for factor ``"A"`` or ``"B"`` of module ``module_name``."""
    return f"base_model.model.{module_name}.lora_{factor}.weight"


def _check_directory(directory) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or a path (os.PathLike), got {type(directory).__name__}")
    return Path(directory)


def _peft_target_modules(model: nn.Module, names: list[str]):
    """``target_modules`` for the config: the plain list of full names when PEFT's suffix matching
    selects exactly those modules, otherwise an anchored regular expression of the exact names."""
    owners = _lora_owned_names(model)
    plain = [n for n, _ in model.named_modules() if n and (n not in owners or owners[n] == n)]
    if {n for n in plain if target_matches(n, names)} == set(names):
        return sorted(names)
    return "(" + "|".join(re.escape(n) for n in sorted(names)) + ")"


def save_peft_adapter(model: nn.Module, directory) -> Path:
    """Write only the LoRA factors of ``model`` to ``directory`` (created if needed) in PEFT's format:
    ``adapter_config.json`` and ``adapter_model.safetensors`` (each layer's ``lora_A (r, in)`` and
    ``lora_B (out, r)``, ``r (in + out)`` numbers). Returns the directory as a Path.

    ``peft.PeftModel.from_pretrained(base_model, directory)`` loads it and reproduces the outputs; so
    does `load_peft_adapter`. PEFT's format has one ``r``, ``lora_alpha``, ``lora_dropout`` and
    ``use_rslora`` per adapter, so every LoRA layer must share them (ValueError otherwise). Merged
    layers are saved too (their factors are unchanged by merging). See notebook 04_lora_from_scratch.
    """
    from safetensors.torch import save_file

    _check_model(model)
    path = _check_directory(directory)
    layers = _require_lora_layers(model, "save")
    settings = {name: (l.r, l.alpha, l.dropout_p, l.use_rslora) for name, l in layers.items()}
    if len(set(settings.values())) > 1:
        described = "; ".join(f"{n}: r={s[0]}, alpha={s[1]}, dropout={s[2]}, use_rslora={s[3]}"
                              for n, s in settings.items())
        raise ValueError("save_peft_adapter needs the same r, alpha, dropout and use_rslora on every LoRA layer "
                         f"(PEFT's adapter_config.json holds one of each); this model has {described}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"directory={str(path)!r} exists and is not a directory; give a folder path")
    r, alpha, dropout, use_rslora = next(iter(settings.values()))
    names = list(layers)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "target_modules": _peft_target_modules(model, names),
        "init_lora_weights": True,
        "inference_mode": True,
        **_UNSUPPORTED_DEFAULTS,
    }
    try:
        config["peft_version"] = metadata.version("peft")  # PEFT fills it in when it saves; no import needed
    except metadata.PackageNotFoundError:
        pass
    tensors = {}
    for name, layer in layers.items():
        tensors[peft_key(name, "A")] = layer.lora_A.detach().to("cpu").contiguous()
        tensors[peft_key(name, "B")] = layer.lora_B.detach().to("cpu").contiguous()
    path.mkdir(parents=True, exist_ok=True)
    (path / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(tensors, str(path / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    return path


def read_adapter_config(directory) -> dict:
    """Read and check ``adapter_config.json`` in ``directory``: FileNotFoundError when the folder or the
    file is missing; ValueError when it is not JSON, not a LoRA config, has bad ``r``/``lora_alpha``/
    ``lora_dropout``/``use_rslora``/``target_modules``, or uses a PEFT feature lora_edu does not
    implement (DoRA, bias training, rank_pattern, ...). See notebook 04_lora_from_scratch."""
    path = _check_directory(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"directory={str(path)!r} does not exist or is not a folder; give the folder "
                                f"that holds {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}")
    config_path = path / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{ADAPTER_CONFIG_NAME} is missing in directory={str(path)!r}; an adapter folder "
                                f"holds {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{ADAPTER_CONFIG_NAME} in {str(path)!r} is not valid JSON: {exc}") from None
    where = f"{ADAPTER_CONFIG_NAME} in {str(path)!r}"
    if not isinstance(config, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type must be 'LORA', got {config.get('peft_type')!r}")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        raise ValueError(f"{where} lacks {missing}; a LoRA config needs r, lora_alpha and target_modules")
    settings = {"r": config["r"], "lora_alpha": config["lora_alpha"],
                "lora_dropout": config.get("lora_dropout", 0.0), "use_rslora": config.get("use_rslora", False)}
    try:
        check_lora_hyperparameters(settings["r"], settings["lora_alpha"], settings["lora_dropout"],
                                   settings["use_rslora"])
    except (TypeError, ValueError) as exc:
        message = str(exc).replace("alpha must", "lora_alpha must").replace("dropout must", "lora_dropout must")
        raise ValueError(f"{where}: {message}") from None
    targets = config["target_modules"]
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise ValueError(f"{where}: target_modules must be a non-empty list of module names or a regular "
                         f"expression (str), got {targets!r}")
    for key, default in _UNSUPPORTED_DEFAULTS.items():
        value = config.get(key, default)
        if value != default and not (default is None and value in ({}, [])):
            raise ValueError(f"{where} sets {key}={value!r}, which lora_edu does not implement (it needs "
                             f"{key}={default!r}); load this adapter with peft.PeftModel.from_pretrained")
    if config.get("init_lora_weights") == "mica":  # an initialisation that is also a forward-pass variant
        raise ValueError(f"{where} sets init_lora_weights='mica', a LoRA variant lora_edu does not implement; "
                         "load this adapter with peft.PeftModel.from_pretrained")
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights_path = path / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{ADAPTER_WEIGHTS_NAME} is missing in directory={str(path)!r}"
                                + (" (found adapter_model.bin: lora_edu reads only safetensors)"
                                   if (path / "adapter_model.bin").exists() else ""))
    try:
        return load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError, ValueError) on bad files
        raise ValueError(f"{ADAPTER_WEIGHTS_NAME} in {str(path)!r} is not a valid safetensors file "
                         f"({type(exc).__name__}: {exc})") from None


def load_peft_adapter(model: nn.Module, directory) -> nn.Module:
    """Add the LoRA layers saved in ``directory`` (by `save_peft_adapter` or PEFT's ``save_pretrained``)
    to the plain ``model``, in place, and return it.

    Every adapted ``nn.Linear`` ``(out, in)`` becomes a `LoRALinear` whose ``lora_A (r, in)`` and
    ``lora_B (out, r)`` are the saved factors (cast to the layer's device and dtype); everything else
    is frozen, the factors stay trainable. The config's ``target_modules`` must select exactly the
    modules the weights are for. Everything is checked first: a missing folder or file raises
    FileNotFoundError; a bad config, a corrupt file, unknown keys, modules this model lacks, wrong
    shapes or layers that already have LoRA raise ValueError, and the model is left exactly as it was.
    See notebook 04_lora_from_scratch.
    """
    _check_model(model)
    path = _check_directory(directory)
    config = read_adapter_config(path)
    weights = _read_weights(path)
    where = f"{ADAPTER_WEIGHTS_NAME} in {str(path)!r}"

    factors: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
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

    modules = dict(model.named_modules())
    owners = _lora_owned_names(model)
    unknown = sorted(n for n in factors if n not in modules)
    if unknown:
        linear = [n for n, m in modules.items() if n and isinstance(m, nn.Linear)]
        raise ValueError(f"the adapter in {str(path)!r} is for modules this model does not have: {unknown}. "
                         f"Linear layers in this model: {', '.join(linear) or '(none)'}")
    twice = sorted(n for n in factors if n in owners)
    if twice:
        raise ValueError(f"LoRA cannot be added twice to a layer: {twice} already have LoRA in this model")
    try:
        selected = set(find_target_modules(model, config["target_modules"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{ADAPTER_CONFIG_NAME} in {str(path)!r} does not fit this model: {exc}") from None
    if selected != set(factors):
        raise ValueError(f"{ADAPTER_CONFIG_NAME} in {str(path)!r}: target_modules="
                         f"{config['target_modules']!r} selects {sorted(selected)} in this model, but the weights "
                         f"are for {sorted(factors)}")
    r = config["r"]
    for name, pair in sorted(factors.items()):
        layer = modules[name]
        want = {"A": (r, layer.in_features), "B": (layer.out_features, r)}
        for factor in ("A", "B"):
            if tuple(pair[factor].shape) != want[factor]:
                raise ValueError(f"{where}: lora_{factor} of module {name!r} has shape {tuple(pair[factor].shape)}, "
                                 f"but this model's layer ({layer.out_features}x{layer.in_features}) with r={r} "
                                 f"needs {want[factor]}")
            if not pair[factor].is_floating_point() or not torch.isfinite(pair[factor]).all():
                raise ValueError(f"{where}: lora_{factor} of module {name!r} must hold finite floating-point "
                                 f"numbers (dtype {pair[factor].dtype})")

    # Everything is checked: now change the model.
    added = _replace_with_lora(model, sorted(factors), r, config["lora_alpha"], config.get("lora_dropout", 0.0),
                               config.get("use_rslora", False), init_weights=False)
    with torch.no_grad():
        for name, layer in added.items():
            layer.lora_A.copy_(factors[name]["A"])
            layer.lora_B.copy_(factors[name]["B"])
    return model

