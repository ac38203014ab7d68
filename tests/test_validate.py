"""lora_edu._validate: each helper returns the (converted) value, or raises an error that names the parameter,
says what is allowed and shows what it got."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_edu import _validate as v


def test_helpers_return_converted_values():
    assert v.integer("r", np.int64(4), 1) == 4 and type(v.integer("r", np.int64(4), 1)) is int
    assert v.real("lr", 1, 0) == 1.0 and type(v.real("lr", 1, 0)) is float
    assert v.real("lr", torch.tensor(0.5), 0) == 0.5  # a 0-d tensor is read as its number
    assert v.positive("alpha", 8) == 8.0
    assert v.boolean("use_rslora", True) is True
    assert v.choice("rule", "2r", ("r", "2r")) == "2r"
    assert v.instance("x", "text", str, "a str") == "text"
    layer = torch.nn.Linear(2, 2)
    assert v.module("model", layer) is layer
    assert v.folder("path", "a/b") == Path("a/b")
    assert v.sequence("names", ["q", "v"]) == ("q", "v")
    assert v.integers("ranks", [1, np.int32(2)]) == (1, 2)
    assert v.positives("learning_rates", [1, 0.5]) == (1.0, 0.5)


@pytest.mark.parametrize("call, error, message", [
    (lambda: v.integer("r", 2.0, 1), TypeError, "r must be an int >= 1, got float 2.0"),
    (lambda: v.integer("r", True, 1), TypeError, "r must be an int >= 1, got bool True"),
    (lambda: v.integer("r", 9, 1, 8, hint="(min(d, k))"), ValueError, "r must be an int >= 1 and <= 8 (min(d, k)), got 9"),
    (lambda: v.integer("seed", -1, 0, 2**32 - 1), ValueError, "seed must be an int >= 0 and <= 4294967295, got -1"),
    (lambda: v.real("tol", "0.1", 0), TypeError, "tol must be a finite number >= 0, got str '0.1'"),
    (lambda: v.real("p", float("nan"), 0, 1), ValueError, "p must be a finite number >= 0 and <= 1, got nan"),
    (lambda: v.real("f", 0, 0, 1, open_min=True), ValueError, "f must be a finite number > 0 and <= 1, got 0.0"),
    (lambda: v.positive("alpha", 0), ValueError, "alpha must be a finite number > 0, got 0.0"),
    (lambda: v.positive("alpha", None), TypeError, "alpha must be a finite number > 0, got NoneType None"),
    (lambda: v.boolean("use_rslora", 1), TypeError, "use_rslora must be True or False, got int 1"),
    (lambda: v.choice("rule", "3r", ("r", "2r")), ValueError, "rule='3r' is not allowed; allowed values: 'r', '2r'"),
    (lambda: v.choice("rule", ["r"], {"r": 1}), ValueError, "rule=['r'] is not allowed; allowed values: 'r'"),
    (lambda: v.instance("text", 3, str, "a str"), TypeError, "text must be a str, got int"),
    (lambda: v.module("model", "mlp"), TypeError, "model must be a torch.nn.Module, got str"),
    (lambda: v.folder("path", 3), TypeError, "path must be a str or a path (os.PathLike), got int"),
    (lambda: v.sequence("names", "qv", what="names"), TypeError, "names must be a non-empty list of names, got str"),
    (lambda: v.sequence("names", []), ValueError, "names must be a non-empty list of values, got an empty list"),
    (lambda: v.integers("ranks", [1, 0]), ValueError, "each of ranks must be an int >= 1, got 0"),
    (lambda: v.integers("ranks", [2, 2]), ValueError, "ranks must not repeat a value, got (2, 2)"),
    (lambda: v.positives("lrs", [0.1, -1]), ValueError, "each of lrs must be a finite number > 0, got -1.0"),
])
def test_errors_name_the_parameter_what_is_allowed_and_what_came(call, error, message):
    with pytest.raises(error) as caught:
        call()
    assert str(caught.value) == message
