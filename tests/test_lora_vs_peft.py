"""lora_edu's LoRA is numerically PEFT's LoRA (notebook 04): same layers selected, same trainable-parameter
counts, same outputs (unmerged <= 1e-6, merged <= 1e-5 in fp32), same gradients of A and B, and adapters
that load both ways (ours -> PEFT, PEFT -> ours).

The largest differences measured are printed at the end of the module (run with -s) and written to
.test-reports/lora_vs_peft.txt.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lora_edu import LoraConfig, add_lora, load_peft_adapter, lora_state_dict, merge_lora, save_peft_adapter
from lora_edu.lora import lora_layers
from toy_models import MLP, Nested

peft = pytest.importorskip("peft", reason="peft is a test dependency: pip install -r requirements.txt")
from peft.tuners.lora import Linear as PeftLinear  # noqa: E402

REPORT = Path(__file__).resolve().parents[1] / ".test-reports" / "lora_vs_peft.txt"
MEASURED: dict[str, float] = {"unmerged output": 0.0, "merged output": 0.0, "gradient": 0.0,
                              "round trip output": 0.0}

UNMERGED_TOL = 1e-6
MERGED_TOL = 1e-5


# (id, model factory, input features, target_modules, r, alpha, use_rslora)
CASES = [
    ("mlp-r1", lambda: MLP(6, 10, 4), 6, ["fc1", "fc2"], 1, 1, False),
    ("mlp-r4-rslora", lambda: MLP(32, 64, 16), 32, ["fc1"], 4, 8, True),
    ("mlp-r8-wide", lambda: MLP(17, 33, 5), 17, ["fc2", "fc1"], 8, 16.0, False),
    ("mlp-r16-rslora", lambda: MLP(64, 48, 64), 64, ["fc1", "fc2"], 16, 7.5, True),
    ("nested-list-suffix", lambda: Nested(d=12), 5, ["q", "v"], 2, 4, False),
    ("nested-list-full-and-suffix", lambda: Nested(d=12), 5, ["q", "blocks.1.mlp.0", "head"], 3, 5.5, True),
    ("nested-regex", lambda: Nested(d=16), 5, r"blocks\.\d+\.(q|mlp\.[02])", 4, 4, False),
    ("nested-regex-alternation", lambda: Nested(d=8, n=3), 5, r".*\.v|head|embed", 6, 32, True),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(scope="module", autouse=True)
def report_largest_differences():
    yield
    lines = ["largest |ours - PEFT| over all cases (fp32):"]
    lines += [f"  {name:<18} {value:.3g}" for name, value in MEASURED.items()]
    text = "\n".join(lines)
    print("\n" + text)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(text + "\n", encoding="utf-8")


def record(what: str, diff: float) -> float:
    MEASURED[what] = max(MEASURED[what], diff)
    return diff


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def make_pair(factory, targets, r, alpha, use_rslora, dropout=0.0, seed=0):
    """The same pretrained model adapted by lora_edu and by PEFT, with the same non-zero A and B."""
    torch.manual_seed(seed)
    plain = factory()
    ours = add_lora(copy.deepcopy(plain), LoraConfig(target_modules=targets, r=r, lora_alpha=alpha,
                                                     lora_dropout=dropout, use_rslora=use_rslora))
    config = peft.LoraConfig(target_modules=targets, r=r, lora_alpha=alpha, lora_dropout=dropout,
                             use_rslora=use_rslora)
    theirs = peft.get_peft_model(copy.deepcopy(plain), config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            b = layer.lora_B["default"]
            b.copy_(torch.randn(b.shape, generator=g) * 0.5)  # as after training
            twin = theirs.base_model.model.get_submodule(name)
            twin.lora_A["default"].weight.copy_(layer.lora_A["default"])
            twin.lora_B["default"].weight.copy_(b)
    return plain, ours, theirs


def peft_adapted_names(peft_model) -> list[str]:
    return sorted(n for n, m in peft_model.base_model.model.named_modules() if isinstance(m, PeftLinear))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_same_layers_and_trainable_parameter_counts(case):
    _, factory, _, targets, r, alpha, rslora = case
    _, ours, theirs = make_pair(factory, targets, r, alpha, rslora)
    assert sorted(lora_layers(ours)) == peft_adapted_names(theirs)
    trainable, total = theirs.get_nb_trainable_parameters()
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in ours.parameters()) == total
    for name, layer in lora_layers(ours).items():
        assert layer.scaling["default"] == theirs.base_model.model.get_submodule(name).scaling["default"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_outputs_equal_unmerged_and_merged(case):
    _, factory, d_in, targets, r, alpha, rslora = case
    plain, ours, theirs = make_pair(factory, targets, r, alpha, rslora)
    x = torch.randn(16, d_in, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y_ours, y_theirs = ours(x), theirs(x)
        assert max_diff(y_ours, plain(x)) > 1e-3  # the adapters do change the output
        assert record("unmerged output", max_diff(y_ours, y_theirs)) <= UNMERGED_TOL
        merge_lora(ours)
        theirs.merge_adapter()
        y_ours_m, y_theirs_m = ours(x), theirs(x)
        assert record("merged output", max_diff(y_ours_m, y_theirs_m)) <= MERGED_TOL
        for name, layer in lora_layers(ours).items():
            twin_weight = theirs.base_model.model.get_submodule(name).base_layer.weight
            assert max_diff(layer.base.weight, twin_weight) <= MERGED_TOL


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_of_A_and_B_equal(case):
    _, factory, d_in, targets, r, alpha, rslora = case
    _, ours, theirs = make_pair(factory, targets, r, alpha, rslora)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, d_in, generator=g)
    y_ours = ours(x)
    weights = torch.randn(y_ours.shape, generator=g)
    (y_ours * weights).sum().backward()
    (theirs(x) * weights).sum().backward()
    for name, layer in lora_layers(ours).items():
        twin = theirs.base_model.model.get_submodule(name)
        for mine, other in ((layer.lora_A["default"], twin.lora_A["default"].weight),
                            (layer.lora_B["default"], twin.lora_B["default"].weight)):
            assert mine.grad is not None and other.grad is not None
            scale = max(1.0, other.grad.abs().max().item())
            assert record("gradient", max_diff(mine.grad, other.grad) / scale) <= UNMERGED_TOL, name


def test_dropout_in_training_mode_draws_the_same_masks():
    _, ours, theirs = make_pair(lambda: Nested(d=12), ["q", "v", "head"], 4, 8, False, dropout=0.25)
    ours.train()
    theirs.train()
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(11)
    y_ours = ours(x)
    torch.manual_seed(11)
    y_theirs = theirs(x)
    assert record("unmerged output", max_diff(y_ours, y_theirs)) <= UNMERGED_TOL
    torch.manual_seed(12)
    assert max_diff(ours(x), y_ours) > 1e-4  # dropout really is active
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        assert record("unmerged output", max_diff(ours(x), theirs(x))) <= UNMERGED_TOL


def test_peft_default_init_has_the_same_distribution():
    """Not the same draws (PEFT builds nn.Linear first, using more random numbers) but the same law."""
    torch.manual_seed(0)
    ours = add_lora(MLP(256, 256, 4), LoraConfig(target_modules=["fc1"], r=64, lora_alpha=1))
    torch.manual_seed(0)
    theirs = peft.get_peft_model(MLP(256, 256, 4), peft.LoraConfig(target_modules=["fc1"], r=64, lora_alpha=1))
    a_ours = ours.fc1.lora_A["default"].detach()
    a_theirs = theirs.base_model.model.fc1.lora_A["default"].weight.detach()
    assert torch.count_nonzero(ours.fc1.lora_B["default"]) == 0
    assert torch.count_nonzero(theirs.base_model.model.fc1.lora_B["default"].weight) == 0
    bound = 256 ** -0.5
    for a in (a_ours, a_theirs):
        assert a.abs().max() <= bound and a.abs().max() > 0.99 * bound
    assert abs(a_ours.std().item() - a_theirs.std().item()) < 0.02 * bound


def assert_same_factors(ours: nn.Module, peft_model) -> None:
    """Every LoRA layer of ``ours`` has exactly the A, B and scaling of the same-named layer in ``peft_model``."""
    for name, layer in lora_layers(ours).items():
        twin = peft_model.base_model.model.get_submodule(name)
        assert torch.equal(twin.lora_A["default"].weight, layer.lora_A["default"]), name
        assert torch.equal(twin.lora_B["default"].weight, layer.lora_B["default"]), name
        assert twin.scaling["default"] == layer.scaling["default"], name


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[6], CASES[7]],
                         ids=[IDS[0], IDS[3], IDS[5], IDS[6], IDS[7]])
def test_round_trip_ours_to_peft(case, tmp_path):
    _, factory, d_in, targets, r, alpha, rslora = case
    plain, ours, _ = make_pair(factory, targets, r, alpha, rslora)
    save_peft_adapter(ours, tmp_path / "adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading our files must not make PEFT complain
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(plain), str(tmp_path / "adapter"))
    assert peft_adapted_names(loaded) == sorted(lora_layers(ours))
    x = torch.randn(9, d_in, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert record("round trip output", max_diff(ours(x), loaded(x))) <= UNMERGED_TOL
    assert_same_factors(ours, loaded)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[6], CASES[7]],
                         ids=[IDS[0], IDS[3], IDS[5], IDS[6], IDS[7]])
def test_round_trip_peft_to_ours(case, tmp_path):
    _, factory, d_in, targets, r, alpha, rslora = case
    plain, _, theirs = make_pair(factory, targets, r, alpha, rslora)
    theirs.save_pretrained(str(tmp_path / "peft_adapter"))
    loaded = load_peft_adapter(copy.deepcopy(plain), tmp_path / "peft_adapter")
    assert sorted(lora_layers(loaded)) == peft_adapted_names(theirs)
    x = torch.randn(9, d_in, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert record("round trip output", max_diff(loaded(x), theirs(x))) <= UNMERGED_TOL
    assert_same_factors(loaded, theirs)


def test_ambiguous_names_are_saved_so_peft_selects_exactly_the_same_layers(tmp_path):
    """We adapt only the top-level 'q'; a plain list ['q'] would make PEFT adapt blocks.*.q too."""

    class Tricky(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)
            self.inner = nn.Sequential()
            self.inner.add_module("q", nn.Linear(4, 4))

        def forward(self, x):
            return self.inner.q(self.q(x))

    torch.manual_seed(0)
    plain = Tricky()
    ours = add_lora(copy.deepcopy(plain), LoraConfig(target_modules=r"q", r=2, lora_alpha=2))
    assert sorted(lora_layers(ours)) == ["q"]
    with torch.no_grad():
        ours.q.lora_B["default"].fill_(0.3)
    save_peft_adapter(ours, tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(plain), str(tmp_path))
    assert peft_adapted_names(loaded) == ["q"]
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert max_diff(ours(x), loaded(x)) <= UNMERGED_TOL
    ours_again = load_peft_adapter(copy.deepcopy(plain), tmp_path)
    assert sorted(lora_layers(ours_again)) == ["q"]


def test_save_then_load_ours_is_exact(tmp_path):
    plain, ours, _ = make_pair(lambda: Nested(d=12), ["q", "v"], 3, 6, True)
    save_peft_adapter(ours, tmp_path)
    loaded = load_peft_adapter(copy.deepcopy(plain), tmp_path)
    for key, value in lora_state_dict(ours).items():
        assert torch.equal(lora_state_dict(loaded)[key], value), key
    x = torch.randn(4, 5)
    assert torch.equal(loaded(x), ours(x))
    assert loaded.state_dict().keys() == ours.state_dict().keys()
