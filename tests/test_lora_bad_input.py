"""Bad input to lora_edu.lora and lora_edu.peft_io: each raises a clear error (ValueError, TypeError or
FileNotFoundError) whose message names the parameter and what is allowed, and leaves the model exactly
as it was: the same module structure, the same tensors, the same requires_grad flags (notebook 04).
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from lora_edu import (LoraConfig, LoRALinear, add_lora, load_peft_adapter, lora_state_dict, merge_lora, save_peft_adapter,
                      unmerge_lora)
from lora_edu.lora import lora_layers
from lora_edu.peft_io import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, read_adapter_config
from toy_models import MLP


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.blocks = nn.ModuleList([nn.ModuleDict({"q": nn.Linear(8, 8), "norm": nn.LayerNorm(8)})
                                     for _ in range(2)])
        self.head = nn.Linear(8, 3)


def snapshot(model: nn.Module):
    """Everything that must not change: structure, every tensor, requires_grad, merged flags, and each LoRA
    layer's adapter state (active adapter, merged adapters, disabled, inside a mixed batch)."""
    return {
        "repr": repr(model),
        "modules": [(n, type(m).__name__, getattr(m, "merged", None)) for n, m in model.named_modules()],
        "adapters": [(n, m.active_adapter, list(m.merged_adapters), m.disable_adapters, m._per_example is None,
                      list(m.lora_A), dict(m.scaling), m.training)
                     for n, m in model.named_modules() if isinstance(m, LoRALinear)],
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def assert_unchanged(model: nn.Module, before) -> None:
    after = snapshot(model)
    assert after["repr"] == before["repr"]
    assert after["modules"] == before["modules"]
    assert after["adapters"] == before["adapters"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


def cfg(targets=None, r=2, alpha=2, **kwargs) -> LoraConfig:
    return LoraConfig(target_modules=targets, r=r, lora_alpha=alpha, **kwargs)


def with_trained_lora(model, targets, r=2, alpha=4):
    add_lora(model, cfg(targets, r=r, alpha=alpha))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].normal_()
    return model


# ---------------------------------------------------------------------------------------------
# LoRALinear(base, LoraConfig(r, lora_alpha, lora_dropout, use_rslora)): the base layer is not frozen by a
# failed call (the config refuses the value before the layer is touched)
# ---------------------------------------------------------------------------------------------

R_MESSAGE = r"r must be an int >= 1"
ALPHA_MESSAGE = r"lora_alpha must be a finite number > 0"
DROPOUT_MESSAGE = r"lora_dropout must be a finite number >= 0 and < 1"

LAYER_CASES = [
    # id, kwargs, error, message must contain
    ("r-zero", dict(r=0, alpha=1), ValueError, R_MESSAGE),
    ("r-negative", dict(r=-2, alpha=1), ValueError, R_MESSAGE),
    ("r-float", dict(r=2.0, alpha=1), TypeError, R_MESSAGE),
    ("r-bool", dict(r=True, alpha=1), TypeError, R_MESSAGE),
    ("r-str", dict(r="4", alpha=1), TypeError, R_MESSAGE),
    ("alpha-zero", dict(r=2, alpha=0), ValueError, ALPHA_MESSAGE),
    ("alpha-negative", dict(r=2, alpha=-8), ValueError, ALPHA_MESSAGE),
    ("alpha-nan", dict(r=2, alpha=math.nan), ValueError, ALPHA_MESSAGE),
    ("alpha-inf", dict(r=2, alpha=math.inf), ValueError, ALPHA_MESSAGE),
    ("alpha-str", dict(r=2, alpha="16"), TypeError, ALPHA_MESSAGE),
    ("alpha-tensor", dict(r=2, alpha=torch.tensor(16.0)), TypeError, ALPHA_MESSAGE),
    ("dropout-one", dict(r=2, alpha=2, lora_dropout=1.0), ValueError, DROPOUT_MESSAGE),
    ("dropout-negative", dict(r=2, alpha=2, lora_dropout=-0.1), ValueError, DROPOUT_MESSAGE),
    ("dropout-nan", dict(r=2, alpha=2, lora_dropout=math.nan), ValueError, DROPOUT_MESSAGE),
    ("dropout-str", dict(r=2, alpha=2, lora_dropout="0.1"), TypeError, DROPOUT_MESSAGE),
    ("use_rslora-str", dict(r=2, alpha=2, use_rslora="yes"), TypeError, "use_rslora must be True or False"),
    ("use_rslora-int", dict(r=2, alpha=2, use_rslora=1), TypeError, "use_rslora must be True or False"),
]


@pytest.mark.parametrize("kwargs, error, message", [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_lora_linear_rejects_bad_hyperparameters(kwargs, error, message):
    base = nn.Linear(4, 3)
    before = snapshot(base)
    with pytest.raises(error, match=message):
        LoRALinear(base, cfg(**kwargs))
    assert_unchanged(base, before)  # in particular: still trainable, not frozen


@pytest.mark.parametrize("config", [dict(r=2, lora_alpha=2), "r=2", 2], ids=["dict", "str", "int"])
def test_lora_linear_config_must_be_a_lora_config(config):
    base = nn.Linear(4, 3)
    before = snapshot(base)
    with pytest.raises(TypeError, match="config must be a lora_edu.LoraConfig"):
        LoRALinear(base, config)
    assert_unchanged(base, before)


@pytest.mark.parametrize("base", [nn.Conv1d(3, 3, 1), nn.Embedding(5, 3), torch.zeros(3, 4), None],
                         ids=["conv1d", "embedding", "tensor", "none"])
def test_lora_linear_base_must_be_linear(base):
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear"):
        LoRALinear(base, cfg())


def test_lora_linear_twice_on_one_layer():
    layer = LoRALinear(nn.Linear(4, 3), cfg())
    before = snapshot(layer)
    with pytest.raises(ValueError, match=r"base already is a LoRALinear.*add_adapter"):
        LoRALinear(layer, cfg())
    assert_unchanged(layer, before)


def test_layer_merge_twice_and_unmerge_twice():
    layer = LoRALinear(nn.Linear(4, 3), cfg())
    with torch.no_grad():
        layer.lora_B["default"].fill_(1.0)
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()
    layer.merge()
    before = snapshot(layer)
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    assert_unchanged(layer, before)


# ---------------------------------------------------------------------------------------------
# Model-level functions: every call is checked against a full snapshot of the model
# ---------------------------------------------------------------------------------------------

def _mixed_merge_state(model):
    model.fc1.merge()  # fc1 merged, fc2 not
    return model


MODEL_CASES = [
    # id, make the model, the bad call, error, message must contain
    ("add-target-empty-list", MLP, lambda m: add_lora(m, cfg([])), ValueError,
     "target_modules must not be empty"),
    ("add-target-empty-str", MLP, lambda m: add_lora(m, cfg("")), ValueError,
     "target_modules must not be empty"),
    ("add-target-matches-nothing", MLP, lambda m: add_lora(m, cfg(["q_proj", "v_proj"])), ValueError,
     r"matches no module.*Linear layers in this model: fc1, fc2"),
    ("add-regex-matches-nothing", Nested, lambda m: add_lora(m, cfg(r"q")), ValueError,
     r"matches no module.*blocks\.0\.q"),
    ("add-target-bad-regex", MLP, lambda m: add_lora(m, cfg("fc(")), ValueError,
     "not a valid regular expression"),
    ("add-target-not-list", MLP, lambda m: add_lora(m, cfg(3)), TypeError,
     "target_modules must be a list of module names or a regular expression"),
    ("add-target-entry-not-str", MLP, lambda m: add_lora(m, cfg(["fc1", 3])), TypeError,
     "every entry of target_modules must be a non-empty str"),
    ("add-target-not-linear", MLP, lambda m: add_lora(m, cfg(["act"])), TypeError,
     r"'act' \(ReLU\).*only torch.nn.Linear"),
    ("add-one-of-two-targets-not-linear", MLP, lambda m: add_lora(m, cfg(["fc1", "act"])), TypeError,
     r"'act' \(ReLU\)"),
    ("add-regex-hits-layernorm", Nested, lambda m: add_lora(m, cfg(r"blocks\.\d\..*")), TypeError,
     r"LayerNorm"),
    ("add-multihead-attention-out-proj", lambda: nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8)),
     lambda m: add_lora(m, cfg(["out_proj", "1"])), TypeError, r"'0.out_proj' \(the output projection"),
    ("add-model-not-module", None, lambda m: add_lora({"fc1": nn.Linear(2, 2)}, cfg(["fc1"])),
     TypeError, "model must be a torch.nn.Module"),
    ("add-model-is-a-linear", lambda: nn.Linear(3, 3), lambda m: add_lora(m, cfg(["weight"])),
     ValueError, r"wrap it directly with LoRALinear"),
    ("add-config-not-a-config", MLP, lambda m: add_lora(m, ["fc1", "fc2"]), TypeError,
     r"config must be a lora_edu.LoraConfig"),
    ("add-config-without-targets", MLP, lambda m: add_lora(m, LoraConfig(r=2)), ValueError,
     r"config.target_modules is None.*Linear layers in this model: fc1, fc2"),
    ("add-r-zero-valid-targets", MLP, lambda m: add_lora(m, cfg(["fc1", "fc2"], r=0)), ValueError, R_MESSAGE),
    ("add-alpha-nan-valid-targets", MLP, lambda m: add_lora(m, cfg(["fc1"], alpha=math.nan)), ValueError,
     ALPHA_MESSAGE),
    ("add-dropout-one-valid-targets", MLP, lambda m: add_lora(m, cfg(["fc1"], lora_dropout=1)), ValueError,
     DROPOUT_MESSAGE),
    ("add-twice-same-layer", lambda: with_trained_lora(MLP(), ["fc1"]),
     lambda m: add_lora(m, cfg(["fc1"])), ValueError, r"adapter_name='default' exists already"),
    ("add-twice-one-of-two", lambda: with_trained_lora(MLP(), ["fc2"]),
     lambda m: add_lora(m, cfg(["fc1", "fc2"])), ValueError, r"adapter_name='default' exists already"),
    ("add-twice-via-inner-base", lambda: with_trained_lora(MLP(), ["fc1"]),
     lambda m: add_lora(m, cfg(["base"]), "other"), ValueError,
     r"matches no module.*Linear layers in this model: fc1, fc2;"),
    ("add-while-merged", lambda: merge_lora(with_trained_lora(MLP(), ["fc1"])),
     lambda m: add_lora(m, cfg(["fc2"]), "other"), ValueError, r"merged adapters: unmerge_lora"),
    ("merge-merged-model", lambda: merge_lora(with_trained_lora(MLP(), ["fc1", "fc2"])), merge_lora, ValueError,
     "already merged"),
    ("merge-partly-merged-model", lambda: _mixed_merge_state(with_trained_lora(MLP(), ["fc1", "fc2"])),
     merge_lora, ValueError, r"\['fc1'\] are already merged"),
    ("unmerge-unmerged-model", lambda: with_trained_lora(MLP(), ["fc1", "fc2"]), unmerge_lora, ValueError,
     "not merged"),
    ("merge-no-lora", MLP, merge_lora, ValueError, "no LoRA layers to merge"),
    ("unmerge-no-lora", MLP, unmerge_lora, ValueError, "no LoRA layers to unmerge"),
    ("merge-not-module", None, lambda m: merge_lora("model"), TypeError, "model must be a torch.nn.Module"),
    ("state-dict-no-lora", MLP, lora_state_dict, ValueError, "no LoRA layers"),
    ("save-no-lora", MLP, lambda m: save_peft_adapter(m, "unused_folder"), ValueError, "no LoRA layers to save"),
]


@pytest.mark.parametrize("make, call, error, message", [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])
def test_model_functions_reject_bad_input_and_change_nothing(make, call, error, message, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # a save that wrongly went ahead would write here
    torch.manual_seed(0)
    model = make() if make is not None else MLP()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        call(model)
    assert_unchanged(model, before)
    assert not (tmp_path / "unused_folder").exists()


def test_unmerge_of_a_partly_merged_model_unmerges_the_merged_layers():
    """With named adapters a partly merged model is normal (an adapter on some layers only), so unmerge_lora
    no longer refuses it: it restores every merged layer, as PEFT's unmerge_adapter does."""
    torch.manual_seed(0)
    model = with_trained_lora(MLP(), ["fc1", "fc2"])
    before = snapshot(model)
    _mixed_merge_state(model)
    assert model.fc1.merged and not model.fc2.merged
    unmerge_lora(model)
    assert not model.fc1.merged and not model.fc2.merged
    after = snapshot(model)
    assert after["repr"] == before["repr"] and after["requires_grad"] == before["requires_grad"]
    for key, value in before["tensors"].items():
        torch.testing.assert_close(after["tensors"][key], value, rtol=0, atol=1e-6)


def test_merge_twice_never_adds_delta_twice():
    torch.manual_seed(0)
    model = with_trained_lora(MLP(), ["fc1", "fc2"])
    x = torch.randn(3, 6)
    y = model(x)
    merge_lora(model)
    with pytest.raises(ValueError):
        merge_lora(model)
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-5)
    unmerge_lora(model)
    with pytest.raises(ValueError):
        unmerge_lora(model)
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Saving and loading adapters
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def saved_adapter(tmp_path):
    """A valid adapter for MLP() on fc1 and fc2, and a function to break it."""
    torch.manual_seed(0)
    model = with_trained_lora(MLP(), ["fc1", "fc2"])
    folder = tmp_path / "adapter"
    save_peft_adapter(model, folder)
    return folder


def edit_config(folder, **changes):
    path = folder / ADAPTER_CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def drop_config_key(folder, key):
    path = folder / ADAPTER_CONFIG_NAME
    config = json.loads(path.read_text())
    del config[key]
    path.write_text(json.dumps(config))


def rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / ADAPTER_WEIGHTS_NAME))
    save_file(change(dict(tensors)), str(folder / ADAPTER_WEIGHTS_NAME))


LOAD_CASES = [
    # id, break the adapter folder, model to load into, error, message must contain
    ("missing-directory", lambda f: f / "nowhere", MLP, FileNotFoundError, "does not exist or is not a folder"),
    ("directory-is-a-file", lambda f: f / ADAPTER_CONFIG_NAME, MLP, FileNotFoundError,
     "does not exist or is not a folder"),
    ("missing-config", lambda f: (f / ADAPTER_CONFIG_NAME).unlink() or f, MLP, FileNotFoundError,
     "adapter_config.json is missing"),
    ("config-not-json", lambda f: (f / ADAPTER_CONFIG_NAME).write_text("{r: 2,") and f, MLP, ValueError,
     "is not valid JSON"),
    ("config-not-object", lambda f: (f / ADAPTER_CONFIG_NAME).write_text("[1, 2]") and f, MLP, ValueError,
     "must hold a JSON object"),
    ("config-not-lora", lambda f: edit_config(f, peft_type="IA3") or f, MLP, ValueError,
     "peft_type must be 'LORA'"),
    ("config-without-r", lambda f: edit_config(f, r=None) or f, MLP, ValueError, R_MESSAGE),
    ("config-lacks-r", lambda f: drop_config_key(f, "r") or f, MLP, ValueError, r"lacks \['r'\]"),
    ("config-r-zero", lambda f: edit_config(f, r=0) or f, MLP, ValueError, R_MESSAGE),
    ("config-alpha-negative", lambda f: edit_config(f, lora_alpha=-16) or f, MLP, ValueError, ALPHA_MESSAGE),
    ("config-dropout-one", lambda f: edit_config(f, lora_dropout=1.5) or f, MLP, ValueError, DROPOUT_MESSAGE),
    ("config-targets-empty", lambda f: edit_config(f, target_modules=[]) or f, MLP, ValueError,
     "target_modules must not be empty"),
    ("config-uses-dora", lambda f: edit_config(f, use_dora=True) or f, MLP, ValueError,
     "use_dora=True, which lora_edu does not implement"),
    ("config-rank-pattern", lambda f: edit_config(f, rank_pattern={"fc1": 4}) or f, MLP, ValueError,
     "rank_pattern"),
    ("config-targets-disagree-with-weights", lambda f: edit_config(f, target_modules=["fc1"]) or f, MLP,
     ValueError, r"selects \['fc1'\] in this model, but the weights are for \['fc1', 'fc2'\]"),
    ("missing-weights", lambda f: (f / ADAPTER_WEIGHTS_NAME).unlink() or f, MLP, FileNotFoundError,
     "adapter_model.safetensors is missing"),
    ("corrupt-weights-garbage", lambda f: (f / ADAPTER_WEIGHTS_NAME).write_bytes(b"\x00\x01garbage" * 9) and f,
     MLP, ValueError, "not a valid safetensors file"),
    ("corrupt-weights-truncated",
     lambda f: (f / ADAPTER_WEIGHTS_NAME).write_bytes((f / ADAPTER_WEIGHTS_NAME).read_bytes()[:-40]) and f,
     MLP, ValueError, "not a valid safetensors file"),
    ("weights-unexpected-key",
     lambda f: rewrite_weights(f, lambda t: {**t, "base_model.model.fc1.weight": torch.zeros(10, 6)}) or f,
     MLP, ValueError, "not LoRA factors"),
    ("weights-missing-lora_B",
     lambda f: rewrite_weights(f, lambda t: {k: v for k, v in t.items() if "fc2.lora_B" not in k}) or f,
     MLP, ValueError, r"lacks lora_A or lora_B for modules \['fc2'\]"),
    ("shapes-do-not-match-model", lambda f: f, lambda: MLP(d_hidden=12), ValueError,
     r"lora_B of module 'fc1' has shape \(10, 2\).*needs \(12, 2\)"),
    ("one-of-two-shapes-wrong", lambda f: f, lambda: MLP(d_out=5), ValueError,
     r"lora_B of module 'fc2' has shape \(4, 2\)"),
    ("weights-not-finite",
     lambda f: rewrite_weights(f, lambda t: {**t, "base_model.model.fc2.lora_A.weight":
                                             torch.full((2, 10), math.inf)}) or f,
     MLP, ValueError, "must hold finite floating-point numbers"),
    ("module-names-do-not-match", lambda f: f, Nested, ValueError,
     r"for modules this model does not have: \['fc1', 'fc2'\].*Linear layers in this model: embed"),
    ("lora-already-there", lambda f: f, lambda: with_trained_lora(MLP(), ["fc2"]), ValueError,
     r"adapter_name='default' exists already"),
]


@pytest.mark.parametrize("damage, make, error, message", [c[1:] for c in LOAD_CASES],
                         ids=[c[0] for c in LOAD_CASES])
def test_load_rejects_bad_adapters_and_changes_nothing(saved_adapter, damage, make, error, message):
    folder = damage(saved_adapter)
    torch.manual_seed(1)
    model = make()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        load_peft_adapter(model, folder)
    assert_unchanged(model, before)


def test_load_model_and_directory_types(saved_adapter):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        load_peft_adapter("MLP", saved_adapter)
    model = MLP()
    before = snapshot(model)
    with pytest.raises(TypeError, match="folder must be a str or a path"):
        load_peft_adapter(model, 42)
    assert_unchanged(model, before)


def test_read_adapter_config_alone_names_the_file(saved_adapter):
    edit_config(saved_adapter, lora_alpha="sixteen")
    with pytest.raises(ValueError, match=r"adapter_config.json in .*: lora_alpha must be"):
        read_adapter_config(saved_adapter)


def test_save_rejects_mixed_settings_and_writes_nothing(tmp_path):
    """One adapter name with a different r on two layers (built by hand: add_lora gives one adapter one
    config) cannot be written as PEFT's single adapter_config.json."""
    model = MLP()
    model.fc1 = LoRALinear(model.fc1, cfg(r=2, alpha=4))
    model.fc2 = LoRALinear(model.fc2, cfg(r=4, alpha=4))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"same r, alpha, dropout and use_rslora.*fc1: r=2.*fc2: r=4"):
        save_peft_adapter(model, tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    assert_unchanged(model, before)


def test_save_rejects_bad_directory(tmp_path):
    model = with_trained_lora(MLP(), ["fc1"])
    with pytest.raises(TypeError, match="folder must be a str or a path"):
        save_peft_adapter(model, None)
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        save_peft_adapter(model, a_file)
    assert a_file.read_text() == "not a folder"
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        save_peft_adapter(copy.deepcopy(model).state_dict(), tmp_path / "x")
    assert not (tmp_path / "x").exists()
