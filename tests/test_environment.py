"""The environment helpers of notebook 00_welcome: device choice, seeding, the report."""
import random

import numpy as np
import pytest
import torch

import lora_edu
from lora_edu import environment


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(environment, "_mps_available", lambda: False)


@pytest.mark.parametrize("value", [None, "", "  "])  # unset or empty: automatic
def test_default_is_the_best_available(monkeypatch, no_gpu, value):
    if value is None:
        monkeypatch.delenv("LORA_EDU_DEVICE", raising=False)
    else:
        monkeypatch.setenv("LORA_EDU_DEVICE", value)
    assert lora_edu.get_device() == torch.device("cpu")


def test_preference_order_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("LORA_EDU_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(environment, "_mps_available", lambda: True)
    assert environment.available_devices() == ["cuda", "mps", "cpu"]
    assert lora_edu.get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lora_edu.get_device().type == "mps"


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu "])
def test_env_var_forces_cpu(monkeypatch, value):
    monkeypatch.setenv("LORA_EDU_DEVICE", value)
    assert lora_edu.get_device() == torch.device("cpu")


@pytest.mark.parametrize("value", ["gpu", "cuda:0", "tpu", "0", "auto"])
def test_unknown_device_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("LORA_EDU_DEVICE", value)
    with pytest.raises(ValueError) as err:
        lora_edu.get_device()
    message = str(err.value)
    assert "LORA_EDU_DEVICE" in message and repr(value) in message
    assert "cpu, cuda, mps" in message


@pytest.mark.parametrize("value", ["cuda", "mps"])
def test_absent_device_is_a_clear_error(monkeypatch, no_gpu, value):
    monkeypatch.setenv("LORA_EDU_DEVICE", value)
    with pytest.raises(ValueError, match=r"does not have; available here: cpu"):
        lora_edu.get_device()


def test_argument_overrides_and_is_validated(monkeypatch, no_gpu):
    monkeypatch.setenv("LORA_EDU_DEVICE", "bogus")
    assert lora_edu.get_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="requested='npu'"):
        lora_edu.get_device("npu")


def test_seed_everything_repeats_python_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()
    lora_edu.seed_everything(7)
    first = draw()
    lora_edu.seed_everything(7)
    assert draw() == first
    lora_edu.seed_everything(8)
    assert draw() != first


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError),
                                         ("0", TypeError), (True, TypeError)])
def test_seed_bad_values(seed, error):
    with pytest.raises(error, match="seed"):
        lora_edu.seed_everything(seed)


def test_setup_returns_the_device_and_seeds(monkeypatch, no_gpu):
    monkeypatch.setenv("LORA_EDU_DEVICE", "cpu")
    assert lora_edu.setup(seed=3) == torch.device("cpu")
    a = torch.rand(3)
    lora_edu.setup(seed=3)
    assert torch.equal(a, torch.rand(3))


def test_report_names_versions_device_and_threads(monkeypatch):
    monkeypatch.setenv("LORA_EDU_DEVICE", "cpu")
    report = lora_edu.environment_report()
    assert report["torch"] == torch.__version__
    assert report["device"] == "cpu"
    assert report["torch CPU threads"] == str(torch.get_num_threads())
    assert report["LORA_EDU_DEVICE"] == "cpu"
    text = lora_edu.format_report(report)
    assert text.count("\n") == len(report) - 1 and "torch" in text


def test_python_m_lora_edu_prints_the_report():
    import os
    import subprocess
    import sys
    env = dict(os.environ, LORA_EDU_DEVICE="cpu")
    done = subprocess.run([sys.executable, "-m", "lora_edu"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "device" in done.stdout and ": cpu" in done.stdout and done.stderr == ""
