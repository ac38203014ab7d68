"""No exercise check of notebooks 00-06 and 08-10 gives a wrong answer its expected value, the exact offset or
the exact relative error (COURSE.md, "Exercises that teach"); `reveal` shows the value on request.

Every value check_* of lora_edu.exercises.nb00 ... nb06 and nb08 ... nb10 gets the inputs its notebook gives it (or
inputs like them where the notebook computes them: the photo's singular values, the measured norms and updates) and
several wrong answers: 0, -right, 1.5·right, right/2, 10·right, right + 1 for ints; for arrays also a transposed and a
perturbed one. Build-it checks (the learner writes a function) are tested in tests/test_exercises_nbXX.py.
"""
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lora_edu
from lora_edu import counting, linalg, models, pretrain
from lora_edu.checks import reveal
from lora_edu.exercises import nb00, nb01, nb02, nb03, nb04, nb05, nb06, nb08, nb09, nb10, nb11

MODULES = (nb00, nb01, nb02, nb03, nb04, nb05, nb06, nb08, nb09, nb10, nb11)
RANKS = [1, 2, 4, 8, 16, 32, 64]
NORMS = [13.5, 8.35, 6.24, 4.15, 3.37, 2.45, 1.81]
NB05_FULL, NB05_LORA16 = [0.964, 0.968, 0.972], [0.930, 0.950, 0.933]  # nb05's rotated digits: full, LoRA r = 16


@dataclass
class Case:
    check: object
    args: tuple
    right: object                                     # an answer that passes
    wrongs: list = None                               # None: made from `right`
    hidden: list = field(default_factory=list)        # more values no message may show (besides `right`)
    kwargs: dict = field(default_factory=dict)
    unique: bool = True                               # False: many answers pass, `right` is one of them


def wrong_answers(right):
    if isinstance(right, str):
        return []
    if isinstance(right, (int, np.integer)):
        return [0, -right, right * 3 // 2, right // 2, right + 1, right * 10]
    if np.ndim(right) == 0:
        return [0.0, -right, right * 1.5, right / 2, right * 10]
    right = np.asarray(right, dtype=float)
    perturbed = right.copy()
    perturbed.flat[right.size // 2] += 0.37
    scaled = right.copy()
    scaled.flat[0] *= 1.05
    return [np.zeros_like(right), -right, right * 1.5, right / 2, right * 10, right.T, perturbed, scaled]


def nb01_inputs():
    lora_edu.seed_everything(1)
    m = np.random.randn(10, 2) @ np.random.randn(2, 10)
    lora_edu.seed_everything(2)
    return m, m + 0.05 * np.random.randn(10, 10)


def nb03_model():
    """Notebook 03's measured model: three linear layers."""
    lora_edu.seed_everything(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def nb04_experiment():
    """A freshly wrapped model and its data, like notebook 04's experiment (B = 0 at the start)."""
    lora_edu.seed_everything(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    model = lora_edu.add_lora(model, lora_edu.LoraConfig(target_modules=["0", "2"], r=2, lora_alpha=4))
    return model, torch.randn(32, 6), torch.randn(32, 3)


def nb04_model():
    lora_edu.seed_everything(6)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(64, 128))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(128, 10))
    return model


def nb06_sweep():
    """An LRSweep: ranks 8 and 64 and full fine-tuning, 7 rates, 3 seeds, made-up losses whose best rates are
    0.032 (r = 8), 0.008 (r = 64) and 0.016 (full)."""
    lrs = tuple(2e-3 * 2 ** i for i in range(7))
    best = {8: 4, 64: 2, "full": 3}
    loss = np.array([[[1.0 + abs(i - best[m]) + 0.01 * seed for seed in range(3)] for i in range(7)]
                     for m in best])
    return lora_edu.batched.LRSweep((8, 64, "full"), lrs, (0, 1, 2), "2r", "alpha/r", [0, 60],
                                    np.stack([loss, loss], axis=-1), np.full((3, 7, 3), 0.5))


def cases():
    m, noisy = nb01_inputs()
    u, s, vt = np.linalg.svd(m)
    b, a = u[:, :2] * s[:2], vt[:2]
    sigma_noisy = np.linalg.svd(noisy, compute_uv=False)
    low, high = float(sigma_noisy[2]), float(sigma_noisy[1])
    sigma_photo = np.linalg.svd(linalg.load_sample_photo(), compute_uv=False)
    experiment = nb04_experiment()
    first, second = 8 * 2 + 3 * 2, 2 * 6 + 2 * 8 + 8 * 2 + 3 * 2       # B's entries; then A's and B's
    digits = models.DigitsMLP()
    total = sum(p.numel() for p in digits.parameters())
    rng = np.random.default_rng(3)
    update = rng.normal(size=(128, 64)) * np.exp(-np.arange(64) / 6)        # a full update with a decaying spectrum
    n_gpt2 = counting.count_model_params(counting.GPT2_SMALL)
    b_1, a_1, _ = linalg.fit_lora_factors(m, 1, steps=800, lr=0.01, batch=32, seed=0)     # notebook 01, Exercise 5
    fit_error = linalg.relative_error(b_1 @ a_1, m)
    rank_for_2_percent = nb02.smallest_rank_for_error(sigma_photo, 0.02)                    # notebook 02, Exercise 3
    gpt = pretrain.load_pretrained_gpt()                                                     # notebook 10, Exercise 3
    frozen = rng.normal(size=(32, 24))                                                      # notebook 09, Exercise 2
    lora_update = 0.1 * rng.normal(size=(32, 4)) @ rng.normal(size=(4, 24))
    return [
        Case(nb00.check_dense_count, (), 100),
        Case(nb00.check_factored_count, (), 40),
        Case(nb00.check_device_variable, (), "LORA_EDU_DEVICE", ["", "CUDA_VISIBLE_DEVICES", "LORA_DEVICE", 3]),
        Case(nb01.check_stored_numbers, (12, 8, 3), 60),
        Case(nb01.check_matrix_of_rank, (), rng.normal(size=(6, 3)) @ rng.normal(size=(3, 5)),
             [rng.normal(size=(6, 5)), rng.normal(size=(6, 2)) @ rng.normal(size=(2, 5)), np.zeros((6, 5))],
             kwargs=dict(shape=(6, 5), rank=3), unique=False),
        Case(nb01.check_tolerance, (noisy,), (low + high) / 2, [0.0, low / 2, low / 10, high * 1.5, high * 10, -high],
             [low, high], kwargs=dict(rank=2)),
        Case(nb01.check_factors, (m,), (b, a), [(1.5 * b, a), (b, 0 * a), (u[:, :2], vt[:2]), (a.T, b.T),
                                                (b + 0.01, a), (b, -a)], [b, a, m], kwargs=dict(r=2)),
        Case(nb01.check_fit_prediction, (fit_error,), fit_error),
        Case(nb02.check_rank_prediction, (rank_for_2_percent,), rank_for_2_percent,
             [0, -rank_for_2_percent, rank_for_2_percent * 3 // 2, rank_for_2_percent // 2, rank_for_2_percent * 10,
              rank_for_2_percent // 3, rank_for_2_percent * 2]),
        Case(nb02.check_energy, (sigma_photo,), float(np.sum(sigma_photo[:10] ** 2) / np.sum(sigma_photo ** 2)),
             kwargs=dict(r=10)),
        Case(nb02.check_truncation_error, (sigma_photo,), float(np.sqrt(np.sum(sigma_photo[50:] ** 2))),
             kwargs=dict(r=50)),
        Case(nb02.check_rank_for_error, (sigma_photo,), nb02.smallest_rank_for_error(sigma_photo, 0.05),
             kwargs=dict(max_relative_error=0.05)),
        Case(nb03.check_lora_params, (), 16 * (4096 + 11008), kwargs=dict(d=4096, k=11008, r=16)),
        Case(nb03.check_break_even, (), 614, kwargs=dict(d=768, k=3072)),
        Case(nb03.check_full_finetuning_memory, (counting.GPT2_SMALL,), 16 * n_gpt2, kwargs=dict(precision="fp32")),
        Case(nb03.check_adapter_checkpoint, (counting.LLAMA_7B,), 32 * 2 * 16 * (4096 + 4096) * 2,
             kwargs=dict(r=16, targets=("q", "v"), dtype="bf16")),
        Case(nb03.check_optimizer_state, (nb03_model(), ["0", "4"]), 8 * (4 * (256 + 512) + 4 * (512 + 10)) + 4 * 4,
             kwargs=dict(r=4)),
        Case(nb04.check_scaling, (), 2.0, kwargs=dict(alpha=16, r=8)),
        Case(nb04.check_trainable_parameters, (nb04_model(), ["fc1", "fc2"]), 8 * (64 + 128) + 8 * (128 + 10),
             kwargs=dict(r=8)),
        Case(nb04.check_gradient_counts, experiment, (first, second),
             [(second, second), (first, first), (0, 0), (second, first), (first + 1, second), (first, 2 * second)],
             [first, second], kwargs=dict(lr=1e-2)),
        Case(nb05.check_lora_layer_parameters, (), 640, kwargs=dict(d_out=256, d_in=64, r=2)),
        Case(nb05.check_training_bytes, (), 16 * total,
             kwargs=dict(trainable=total, trainable_tensors=len(list(digits.parameters())))),
        Case(nb05.check_flop_ratio, (), 8 * (4096 + 4096) / (4096 * 4096), kwargs=dict(d=4096, k=4096, r=8)),
        Case(nb05.check_adapter_parameters, (), 6 * (2 * 64 * 8 + 8 + 64), kwargs=dict(width=64, bottleneck=8,
                                                                                    sublayers=6)),
        Case(nb05.check_gap_prediction, (NB05_FULL, NB05_LORA16), 0.04, [0.0, -0.03, 0.115, 0.2, 0.001, 3.1],
             hidden=[float(np.mean(NB05_FULL) - np.mean(NB05_LORA16)), min(NB05_FULL) - max(NB05_LORA16),
                     max(NB05_FULL) - min(NB05_LORA16)], unique=False),
        Case(nb06.check_rslora_ratio, (), 8.0, kwargs=dict(alpha=16, r=64)),
        Case(nb06.check_equivalent_lr, (), 0.001, kwargs=dict(alpha=8, lr=0.004, new_alpha=32, optimizer="adam")),
        Case(nb06.check_loglog_slope, (RANKS, NORMS), float(np.polyfit(np.log(RANKS), np.log(NORMS), 1)[0])),
        Case(nb06.check_directions_for_energy, (update, 0.95), int(lora_edu.update_analysis.directions_for_energy(
            update, 0.95))),
        Case(nb06.check_predicted_best_lr, (nb06_sweep(), 8), 0.032, wrongs=[0.0, -0.032, 0.08, 0.0107, 0.32, 0.002],
             unique=False, hidden=[0.032]),
        Case(nb08.check_all_linear_count, (), 3 * 4 * (4 * (96 + 96) + 3 * (96 + 256)), kwargs=dict(r=4)),
        Case(nb08.check_small_slice_weight, (), 2.0, kwargs=dict(batch=16, small=4)),
        Case(nb08.check_bf16_spacing, (), 2.0 ** -11, kwargs=dict(value=0.1)),
        Case(nb10.check_double_quant_bits, (), 4 + 8 / 128 + 32 / (128 * 256),
             kwargs=dict(blocksize=128, blocksize2=256)),
        Case(nb10.check_quantized_bytes, (gpt,), nb10.measure_quantized_bytes(gpt),
             kwargs=dict(blocksize=128, skip=())),
        Case(nb10.check_loraplus_ratio, (), 4.0, kwargs=dict(alpha=8, new_alpha=32)),
        Case(nb09.check_amplification, (lora_update, frozen, 4), lora_edu.what_lora_learns.amplification_factor(
            lora_update, frozen, 4)),
        Case(nb09.check_random_similarity, (8, 64, 256), 0.25),
        Case(nb11.check_storage_bytes, (), counting.checkpoint_bytes(counting.count_model_params(counting.LLAMA2_7B))
             + 10 * counting.checkpoint_bytes(counting.lora_trainable_params(counting.LLAMA2_7B, 8, ("q", "v"))),
             kwargs=dict(model="7B", n_tasks=10)),
        Case(nb11.check_capstone_trainable, (), 3 * 4 * (4 * (96 + 96) + 3 * (96 + 256)), kwargs=dict(r=4)),
    ]


CASES = cases()


def spellings(value) -> set[str]:
    """The usual ways a number is printed: str, thousands separators, %g, 3-4 significant digits, 3 decimals."""
    v = abs(float(value))
    found = {f"{v:,.0f}", str(int(v)), f"{v:.0f}"} if v.is_integer() else set()
    found |= {str(v), repr(v), f"{v:g}", f"{v:,g}", f"{v:.6g}", f"{v:,.6g}", f"{v:.4g}", f"{v:.3g}", f"{v:.3f}",
              f"{v:.4f}", f"{v:.2e}", f"{v:.3e}"}
    return {s for s in found if not re.fullmatch(r"0?\.?0*", s)}          # "0", "0.000" say nothing


def hidden_numbers(value) -> set[str]:
    """Spellings of a scalar; of an array, its entries printed to 3 or more significant digits."""
    array = np.asarray(value, dtype=float)
    if array.ndim == 0:
        return spellings(array)
    return {s for v in array.ravel() for s in (f"{abs(v):.3g}", f"{abs(v):.4g}", f"{abs(v):.3f}", f"{abs(v):.4f}")
            if not re.fullmatch(r"0?\.?0*", s)}


def shows(message: str, number: str) -> bool:
    return re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d]|[.,]\d)", message) is not None


ALLOWED = (r"within \d+ %", r"factor of \d+")   # coarse sizes may be numbers


def scrub(message: str, answer) -> str:
    """``message`` without the coarse sizes and the learner's own answer, which it may restate."""
    for pattern in ALLOWED:
        message = re.sub(pattern, "", message)
    if isinstance(answer, (int, float, np.number)):
        for spelled in sorted(spellings(answer) | {str(answer), f"{answer:,}"}, key=len, reverse=True):
            message = re.sub(rf"-?(?<![\d.,]){re.escape(spelled)}(?![\d]|[.,]\d)", "", message)
    return message


def as_float_array(answer):
    return np.asarray(answer.detach() if hasattr(answer, "detach") else answer, dtype=float)


def exercise_checks(build_it: bool) -> set[str]:
    """The check_* functions of notebooks 00-06 and 08: build-it checks (their first parameter is the learner's
    ``function``) or the checks of a value."""
    found = set()
    for module in MODULES:
        for name in dir(module):
            check = getattr(module, name)
            if name.startswith("check_") and check.__module__ == module.__name__:
                first = next(iter(inspect.signature(check).parameters), None)
                if (first == "function") == build_it:
                    found.add(f"{module.__name__}.{name}")
    return found


def test_every_exercise_check_is_covered():
    covered = {f"{c.check.__module__}.{c.check.__name__}" for c in CASES}
    assert exercise_checks(build_it=False) == covered


def test_every_build_it_check_has_its_own_tests():
    """A build-it check runs the learner's function, so wrong answers are wrong functions: each notebook's
    tests/test_exercises_nbXX.py feeds it its solution and the usual mistakes, and asserts the diagnoses."""
    tests = Path(__file__).parent
    for qualified in sorted(exercise_checks(build_it=True)):
        module, name = qualified.rsplit(".", 1)
        test_file = tests / f"test_exercises_{module.rsplit('.', 1)[1]}.py"
        assert test_file.exists() and name in test_file.read_text(), f"{qualified} has no tests in {test_file.name}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.check.__module__[-4:]}.{c.check.__name__}")
def test_wrong_answers_do_not_reveal_the_expected_value(case):
    assert case.check(case.right, *case.args, **case.kwargs).passed is True
    right_numbers = [case.right] if case.unique and not isinstance(case.right, (str, tuple)) else []
    hidden = set().union(*(hidden_numbers(v) for v in right_numbers + case.hidden))
    wrongs = case.wrongs if case.wrongs is not None else wrong_answers(case.right)
    assert len(wrongs) >= 3
    for wrong in wrongs:
        result = case.check(wrong, *case.args, **case.kwargs)
        assert result.passed is False, wrong
        offsets = set()
        if right_numbers and np.shape(as_float_array(wrong)) == np.shape(right_numbers[0]):
            difference = np.abs(as_float_array(wrong) - np.asarray(right_numbers[0], dtype=float))
            offsets = hidden_numbers(difference.max())
            if np.ndim(difference) == 0 and difference != 0:
                offsets |= {f"{difference / abs(float(right_numbers[0])):{f}}" for f in (".2%", ".1%", ".0%")}
        if isinstance(case.right, str):
            assert case.right not in result.message
        message = scrub(result.message, wrong)
        shown = sorted(s for s in hidden | offsets if shows(message, s))
        assert not shown, f"{result} shows {shown}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.check.__module__[-4:]}.{c.check.__name__}")
def test_reveal_shows_the_answer_on_request(case):
    result = reveal(case.check, *case.args, **case.kwargs)
    assert result.passed is None and "shown on request: the answer is" in result.message
    if isinstance(case.right, (int, np.integer)):
        assert f"{case.right:,}" in result.message
    elif isinstance(case.right, float):
        assert f"{case.right:,.6g}" in result.message or f"{case.right:,.0f}" in result.message
    elif isinstance(case.right, str):
        assert case.right in result.message
