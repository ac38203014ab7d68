"""Fixtures shared by the unit tests of notebook 06's modules (batched runs and update analyses)."""
import pytest
import torch

from lora_edu.data import load_digits_task
from lora_edu.models import DigitsMLP


@pytest.fixture(scope="module")
def task():
    """The rotated-digits task."""
    return load_digits_task("rotated")


@pytest.fixture(scope="module")
def mlp():
    """A small untrained digits MLP (seeded), in evaluation mode."""
    torch.manual_seed(0)
    return DigitsMLP(hidden=32).eval()
