"""lora_edu.peft_io without PEFT: what the files hold, and save -> load round trips (notebook 04).
The cross-checks with PEFT itself are in test_lora_vs_peft.py."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from lora_edu import LoraConfig, add_lora, load_peft_adapter, lora_state_dict, merge_lora, save_peft_adapter
from lora_edu.lora import lora_layers
from lora_edu.peft_io import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, peft_key, read_adapter_config



class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.layers(x))


def adapted(seed=0, targets=("layers.0", "layers.2"), r=4, alpha=8, dropout=0.1, use_rslora=False):
    torch.manual_seed(seed)
    plain = Net()
    config = LoraConfig(target_modules=list(targets), r=r, lora_alpha=alpha, lora_dropout=dropout,
                        use_rslora=use_rslora)
    model = add_lora(copy.deepcopy(plain), config)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].normal_()
    return plain, model


def test_files_and_config(tmp_path):
    _, model = adapted(use_rslora=True)
    assert save_peft_adapter(model, tmp_path / "a" / "b") == tmp_path / "a" / "b"  # parents created
    folder = tmp_path / "a" / "b"
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["lora_dropout"] == 0.1 and config["use_rslora"] is True
    assert config["target_modules"] == ["layers.0", "layers.2"]
    assert config["bias"] == "none" and config["use_dora"] is False and config["task_type"] is None
    assert read_adapter_config(folder) == LoraConfig(target_modules=["layers.0", "layers.2"], r=4, lora_alpha=8,
                                                     lora_dropout=0.1, use_rslora=True)


def test_weights_keys_shapes_and_size(tmp_path):
    _, model = adapted()
    save_peft_adapter(model, tmp_path)
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS_NAME), "pt") as f:
        keys = sorted(f.keys())
        shapes = {k: tuple(f.get_tensor(k).shape) for k in keys}
        assert f.metadata() == {"format": "pt"}
    assert keys == sorted(peft_key(n, ab) for n in ("layers.0", "layers.2") for ab in "AB")
    assert keys[0] == "base_model.model.layers.0.lora_A.weight"
    assert shapes[peft_key("layers.0", "A")] == (4, 6) and shapes[peft_key("layers.0", "B")] == (16, 4)
    assert shapes[peft_key("layers.2", "A")] == (4, 16) and shapes[peft_key("layers.2", "B")] == (16, 4)
    n_numbers = 4 * (6 + 16) + 4 * (16 + 16)
    size = (tmp_path / ADAPTER_WEIGHTS_NAME).stat().st_size
    assert 4 * n_numbers < size < 4 * n_numbers + 1024  # fp32 numbers plus a small JSON header


def test_save_load_round_trip_is_exact_and_trainable(tmp_path):
    plain, model = adapted()
    save_peft_adapter(model, tmp_path)
    loaded = load_peft_adapter(copy.deepcopy(plain), tmp_path)
    assert sorted(lora_layers(loaded)) == ["layers.0", "layers.2"]
    for key, value in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(loaded)[key], value)
    for name, layer in lora_layers(loaded).items():
        assert layer.scaling["default"] == 2.0 and layer.lora_config["default"].lora_dropout == 0.1
        assert isinstance(layer.lora_dropout["default"], nn.Dropout) and layer.lora_dropout["default"].p == 0.1
        assert not layer.merged and layer.active_adapter == "default"
    model.eval()
    loaded.eval()
    x = torch.randn(5, 6)
    assert torch.equal(loaded(x), model(x))
    trainable = sorted(n for n, p in loaded.named_parameters() if p.requires_grad)
    assert trainable == ["layers.0.lora_A.default", "layers.0.lora_B.default", "layers.2.lora_A.default",
                         "layers.2.lora_B.default"]


def test_loading_draws_no_random_numbers(tmp_path):
    plain, model = adapted()
    save_peft_adapter(model, tmp_path)
    torch.manual_seed(5)
    load_peft_adapter(copy.deepcopy(plain), tmp_path)
    after_load = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after_load)


def test_a_merged_model_saves_the_same_factors(tmp_path):
    _, model = adapted()
    save_peft_adapter(model, tmp_path / "unmerged")
    merge_lora(model)
    save_peft_adapter(model, tmp_path / "merged")
    a = (tmp_path / "unmerged" / ADAPTER_WEIGHTS_NAME).read_bytes()
    b = (tmp_path / "merged" / ADAPTER_WEIGHTS_NAME).read_bytes()
    assert a == b


def test_saving_twice_overwrites(tmp_path):
    _, first = adapted(seed=0)
    _, second = adapted(seed=1)
    save_peft_adapter(first, tmp_path)
    save_peft_adapter(second, tmp_path)
    plain = Net()
    loaded = load_peft_adapter(plain, tmp_path)
    assert torch.equal(loaded.layers[0].lora_B["default"], second.layers[0].lora_B["default"])


def test_half_precision_model_loads_in_its_own_dtype(tmp_path):
    plain, model = adapted()
    save_peft_adapter(model, tmp_path)
    loaded = load_peft_adapter(copy.deepcopy(plain).to(torch.bfloat16), tmp_path)
    assert loaded.layers[0].lora_A["default"].dtype == torch.bfloat16
    torch.testing.assert_close(loaded.layers[0].lora_A["default"].float(), model.layers[0].lora_A["default"],
                               rtol=1e-2, atol=1e-2)


def test_string_path_and_regex_targets(tmp_path):
    torch.manual_seed(0)
    plain = Net()
    model = add_lora(copy.deepcopy(plain), LoraConfig(target_modules=r"layers\.[02]", r=2, lora_alpha=2))
    assert sorted(lora_layers(model)) == ["layers.0", "layers.2"]
    save_peft_adapter(model, str(tmp_path))
    loaded = load_peft_adapter(copy.deepcopy(plain), str(tmp_path))
    assert sorted(lora_layers(loaded)) == ["layers.0", "layers.2"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_saves_and_loads(tmp_path):
    plain, model = adapted()
    model.cuda()
    save_peft_adapter(model, tmp_path)
    loaded = load_peft_adapter(copy.deepcopy(plain).cuda(), tmp_path)
    assert loaded.layers[0].lora_A["default"].device.type == "cuda"
    x = torch.randn(4, 6, device="cuda")
    model.eval()
    loaded.eval()
    assert torch.equal(loaded(x), model(x))
