"""lora_edu.explore: the batched LoRA runs equal real LoRA layers trained one by one, and the notebook-06 claims
(planted rank, α vs learning rate under Adam, rsLoRA's r^(-1/2) law, energy counts) hold on small cases."""
import copy
import math

import numpy as np
import pytest
import torch

from lora_edu import explore
from lora_edu.data import load_digits_task
from lora_edu.lora import add_lora, lora_layers
from lora_edu.models import DigitsMLP
from lora_edu.training import train


@pytest.fixture(scope="module")
def task():
    return load_digits_task("rotated")


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return DigitsMLP(hidden=32).eval()


def layers_of(model):
    return explore.frozen_mlp_layers(model, ("fc1", "fc2"))


# ----------------------------------------------------------------------------------------------
# α, the scaling, the initialisation
# ----------------------------------------------------------------------------------------------

def test_alpha_rules_and_scaling():
    assert [explore.alpha_for(rule, 8) for rule in explore.ALPHA_RULES] == [8.0, 16.0, 16.0]
    assert explore.alpha_for("fixed", 8, fixed_alpha=4) == 4.0
    assert all(explore.lora_scaling(explore.alpha_for("2r", r), r) == 2.0 for r in explore.RANKS)
    assert explore.lora_scaling(16, 64, "alpha/sqrt(r)") == 2.0
    assert explore.lora_scaling(16, 64, "alpha/r") == 0.25


def test_lora_init_a_matches_peft_distribution_and_is_nested():
    a = explore.lora_init_A(256, 64, seed=3)
    assert a.shape == (64, 256) and float(a.abs().max()) <= 1 / 16
    assert abs(float(a.std()) - 1 / math.sqrt(3 * 256)) < 0.002  # uniform on [-b, b]: std b/√3
    assert torch.equal(explore.lora_init_A(256, 64, seed=3), a)
    assert not torch.equal(explore.lora_init_A(256, 64, seed=4), a)
    assert torch.equal(explore.lora_init_A(256, 8, seed=3), a[:8])  # nested: rank 8 is rank 64's first rows
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(explore.lora_init_A(256, 64, generator=generator), a)
    assert not torch.equal(explore.lora_init_A(256, 64, generator=generator), a)  # the generator moved on


def test_batch_indices():
    rows = explore.batch_indices(100, 8, 5, seed=1)
    assert rows.shape == (5, 8) and int(rows.min()) >= 0 and int(rows.max()) < 100
    assert torch.equal(rows, explore.batch_indices(100, 8, 5, seed=1))
    assert torch.equal(explore.batch_indices(10, None, 3)[2], torch.arange(10))


# ----------------------------------------------------------------------------------------------
# The batched runner equals real LoRA layers trained with the course's training loop
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r, alpha, use_rslora, lr", [(4, 8.0, False, 3e-3), (2, 16.0, True, 1e-2)])
def test_one_configuration_equals_add_lora_trained_with_adam(mlp, task, r, alpha, use_rslora, lr):
    steps, batch = 12, 32
    layers, positions = layers_of(mlp)
    scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
    run = explore.train_lora_batch(layers, positions, task, r, [scaling], [lr], steps, batch_size=batch,
                                   eval_every=4, seed=5)
    model = add_lora(copy.deepcopy(mlp), ["fc1", "fc2"], r=r, alpha=alpha, use_rslora=use_rslora)
    with torch.no_grad():
        for position, name in zip(positions, ["fc1", "fc2"]):
            layer = lora_layers(model)[name]
            layer.lora_A.copy_(explore.lora_init_A(layer.in_features, r, 5 + position))
    rows = explore.batch_indices(len(task.x_train), batch, steps, seed=5)
    result = train(model, lambda step: (task.x_train[rows[step]], task.y_train[rows[step]]), steps, lr, progress=False)
    np.testing.assert_allclose(run.train_loss[0], result.train_losses, rtol=2e-5, atol=1e-6)
    with torch.no_grad():
        model.eval()
        accuracy = float((model(task.x_val).argmax(-1) == task.y_val).float().mean())
        val_loss = float(torch.nn.functional.cross_entropy(model(task.x_val), task.y_val))
    assert run.val_accuracy[0] == pytest.approx(accuracy, abs=1e-9)
    assert run.val_loss[0, -1] == pytest.approx(val_loss, rel=1e-5)
    assert run.eval_steps == [0, 4, 8, 12]


def test_configurations_do_not_interact(mlp, task):
    layers, positions = layers_of(mlp)
    together = explore.train_lora_batch(layers, positions, task, 3, [1.0, 4.0], [1e-2, 2e-3], 6, batch_size=16)
    alone = explore.train_lora_batch(layers, positions, task, 3, [4.0], [2e-3], 6, batch_size=16)
    np.testing.assert_allclose(together.train_loss[1], alone.train_loss[0], rtol=1e-5)
    assert not np.allclose(together.train_loss[0], together.train_loss[1])


def test_sgd_is_plain_gradient_descent(mlp, task):
    layers, positions = layers_of(mlp)
    r, s, lr = 2, 3.0, 0.05
    run = explore.train_lora_batch(layers, positions, task, r, [s], [lr], 2, batch_size=None, optimizer="sgd")
    model = add_lora(copy.deepcopy(mlp), ["fc1", "fc2"], r=r, alpha=s * r)
    with torch.no_grad():
        for position, name in zip(positions, ["fc1", "fc2"]):
            layer = lora_layers(model)[name]
            layer.lora_A.copy_(explore.lora_init_A(layer.in_features, r, position))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(task.x_train), task.y_train)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    np.testing.assert_allclose(run.train_loss[0], losses, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Planted rank
# ----------------------------------------------------------------------------------------------

def test_planted_problem_has_the_planted_rank():
    problems = [explore.planted_rank_problem(k, d=16, seed=2) for k in (1, 3, 5)]
    for k, problem in zip((1, 3, 5), problems):
        sigma = np.linalg.svd(problem.delta.double().numpy(), compute_uv=False)
        assert np.allclose(sigma[:k], 1.0, atol=1e-5) and np.all(sigma[k:] < 1e-5)
        assert problem.noise_floor == pytest.approx(0.01)
        assert problem.best_rank_r_loss(k) == pytest.approx(0.01)
        assert problem.best_rank_r_loss(k - 1 if k > 1 else 1) == pytest.approx(0.01 + (1 / 16 if k > 1 else 0))
    assert torch.equal(problems[0].w0, problems[2].w0) and torch.equal(problems[0].x_train, problems[2].x_train)
    truth = problems[1].x_val @ (problems[1].w0 + problems[1].delta).T
    assert float(((truth - problems[1].y_val) ** 2).mean()) == pytest.approx(0.01, rel=0.1)


def test_planted_sweep_stalls_below_the_true_rank_and_reaches_the_floor_at_it():
    sweep = explore.planted_rank_sweep(ranks=(1, 2, 3, 4), true_ranks=(3,), steps=120, lr=0.04, d=16)
    ratio = sweep.final()[:, 0] / sweep.noise_floor
    assert ratio[0] > 3 and ratio[1] > 2, ratio  # r < k stalls
    assert ratio[2] < 1.15 and ratio[3] < 1.15, ratio  # r >= k reaches the noise floor
    np.testing.assert_allclose(sweep.final(), sweep.best_possible, rtol=0.12)
    assert sweep.curve(2, 3).shape == (len(sweep.eval_steps),)


# ----------------------------------------------------------------------------------------------
# The grid, α vs lr, rsLoRA
# ----------------------------------------------------------------------------------------------

def test_grid_shapes_and_lookups(mlp, task):
    grid = explore.run_lora_grid(mlp, task, ranks=(2, 8), learning_rates=(1e-3, 4e-3), fixed_alpha=8,
                                 steps=6, batch_size=16, eval_every=3)
    assert grid.val_loss.shape == (2, 3, 2, 2, 3) and grid.val_accuracy.shape == (2, 3, 2, 2)
    assert grid.scaling[1, grid.alpha_rules.index("2r"), 0] == 2.0
    assert grid.scaling[0, grid.alpha_rules.index("fixed"), 1] == pytest.approx(8 / math.sqrt(2))
    # α = 8 at r = 8 is α = r: the same run, whichever rule named it
    np.testing.assert_allclose(grid.curve(8, "fixed", 1e-3), grid.curve(8, "r", 1e-3), rtol=1e-5)
    assert grid.final_loss(2, "2r", 4e-3) == grid.curve(2, "2r", 4e-3)[-1]
    assert 0 <= grid.accuracy(8, "r", 1e-3, "alpha/sqrt(r)") <= 1
    assert grid.best_accuracy_per_rank().shape == (2,)
    assert grid.smallest_rank_reaching(0.0) == 2 and grid.smallest_rank_reaching(1.01) is None
    with pytest.raises(ValueError, match="lr=0.5 is not in the grid"):
        grid.curve(2, "r", 0.5)
    with pytest.raises(ValueError, match="r=3 is not allowed"):
        grid.curve(3, "r", 1e-3)


def test_adam_first_step_depends_on_alpha_times_lr_only(mlp, task):
    adam = explore.compare_alpha_and_lr(mlp, task, [(4, 2e-3), (8, 1e-3), (8, 2e-3)], r=4, steps=1)
    assert adam[(8, 1e-3)][1] == pytest.approx(adam[(4, 2e-3)][1], rel=1e-6)
    assert abs(adam[(8, 2e-3)][1] - adam[(4, 2e-3)][1]) > 100 * abs(adam[(8, 1e-3)][1] - adam[(4, 2e-3)][1])
    sgd = explore.compare_alpha_and_lr(mlp, task, [(4, 0.04), (8, 0.01), (8, 0.02)], r=4, steps=1, optimizer="sgd")
    drop = {pair: curve[0] - curve[1] for pair, curve in sgd.items()}
    assert drop[(4, 0.04)] > 0
    assert drop[(8, 0.01)] == pytest.approx(drop[(4, 0.04)], rel=1e-3)  # SGD: the step on ΔW grows like α² · lr
    assert drop[(8, 0.02)] > 1.5 * drop[(4, 0.04)]


def test_gradient_norm_at_init_scales_as_s_times_sqrt_r(mlp, task):
    ranks = (1, 2, 4, 8, 16)
    lora = explore.lora_gradient_norms_at_init(mlp, task, ranks, alpha=4, use_rslora=False, seeds=(0, 1, 2))
    rslora = explore.lora_gradient_norms_at_init(mlp, task, ranks, alpha=4, use_rslora=True, seeds=(0, 1, 2))
    # the same seeds draw the same A, so the two rules differ exactly by their scalings' ratio √r
    np.testing.assert_allclose(rslora / lora, np.sqrt(ranks), rtol=1e-5)
    # the result is the root mean square over seeds
    one = [explore.lora_gradient_norms_at_init(mlp, task, ranks, alpha=4, seeds=(seed,)) for seed in (0, 1, 2)]
    np.testing.assert_allclose(lora, np.sqrt(np.mean(np.square(one), axis=0)), rtol=1e-6)
    assert not np.allclose(one[0], one[1])  # different seeds draw different A's
    assert explore.loglog_slope(ranks, lora) == pytest.approx(-0.5, abs=0.15)
    assert explore.loglog_slope(ranks, rslora) == pytest.approx(0.0, abs=0.15)


def test_gradient_norms_at_init_leave_the_global_random_state_alone(mlp, task):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    explore.lora_gradient_norms_at_init(mlp, task, (1, 2), seeds=(0,))
    assert torch.equal(torch.rand(3), expected)


def test_first_adam_step_norms(mlp, task):
    ranks = (1, 2, 4, 8, 16)
    constant = explore.lora_first_step_norms(mlp, task, ranks, alpha_rule="2r")
    fixed = explore.lora_first_step_norms(mlp, task, ranks, alpha_rule="fixed", fixed_alpha=4)
    rs = explore.lora_first_step_norms(mlp, task, ranks, alpha_rule="fixed", scaling_rule="alpha/sqrt(r)",
                                       fixed_alpha=4)
    assert explore.loglog_slope(ranks, constant) == pytest.approx(0.5, abs=0.15)
    assert explore.loglog_slope(ranks, fixed) == pytest.approx(-0.5, abs=0.15)
    assert explore.loglog_slope(ranks, rs) == pytest.approx(0.0, abs=0.15)


def test_loglog_slope_of_power_laws():
    x = np.array([1, 2, 4, 8, 16, 32, 64])
    assert explore.loglog_slope(x, 3 * x ** -0.5) == pytest.approx(-0.5)
    assert explore.loglog_slope(x, np.full(7, 2.0)) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Intrinsic rank
# ----------------------------------------------------------------------------------------------

def test_directions_for_energy():
    m = np.diag([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14: 64 %, 93 %, 100 %
    assert explore.directions_for_energy(m, 0.5) == 1
    assert explore.directions_for_energy(m, 0.9) == 2
    assert explore.directions_for_energy(m, 9 / 14) == 1
    assert explore.directions_for_energy(m, 1.0) == 3
    assert explore.directions_for_energy(torch.ones(4, 5), 0.99) == 1


def test_full_finetuning_delta(mlp, task):
    before = copy.deepcopy(mlp.state_dict())
    deltas, accuracy = explore.full_finetuning_delta(mlp, task, steps=5, lr=1e-3, batch_size=32)
    assert deltas["fc1"].shape == (32, 64) and deltas["fc2"].shape == (32, 32)
    assert all(np.abs(d).max() > 0 for d in deltas.values()) and 0 <= accuracy <= 1
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items()), "the base model must not change"


# ----------------------------------------------------------------------------------------------
# Bad input: the error names the parameter and the allowed values
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, match", [
    (lambda: explore.alpha_for("3r", 4), ValueError, r"rule='3r' is not allowed; allowed values: r, 2r, fixed"),
    (lambda: explore.alpha_for("r", 0), ValueError, r"r must be an int >= 1"),
    (lambda: explore.alpha_for("fixed", 4, fixed_alpha=-1), ValueError, r"fixed_alpha must be a positive"),
    (lambda: explore.lora_scaling(16, 4, "alpha/r2"), ValueError, r"rule='alpha/r2' is not allowed"),
    (lambda: explore.lora_scaling(0, 4), ValueError, r"alpha must be a positive finite number"),
    (lambda: explore.lora_scaling(16, 2.5), TypeError, r"r must be an int"),
    (lambda: explore.lora_scaling(float("nan"), 4), ValueError, r"alpha must be a positive finite number"),
    (lambda: explore.lora_init_A(0, 4), ValueError, r"in_features must be an int >= 1"),
    (lambda: explore.lora_init_A(8, 4, seed=-1), ValueError, r"seed must be an int >= 0"),
    (lambda: explore.batch_indices(10, 0, 3), ValueError, r"batch_size must be an int >= 1"),
    (lambda: explore.batch_indices(10, 4, True), TypeError, r"steps must be an int"),
    (lambda: explore.planted_rank_problem(40, d=32), ValueError, r"true_rank must be in \[1, d=32\]"),
    (lambda: explore.planted_rank_problem(2, noise_std=0), ValueError, r"noise_std must be a positive"),
    (lambda: explore.planted_rank_sweep(ranks=()), ValueError, r"ranks must be a non-empty list"),
    (lambda: explore.planted_rank_sweep(ranks=(1, 1)), ValueError, r"ranks must not repeat"),
    (lambda: explore.planted_rank_sweep(ranks=(1, 40)), ValueError, r"ranks and true_ranks must be <= d=32"),
    (lambda: explore.planted_rank_sweep(ranks="12"), TypeError, r"ranks must be a non-empty list of ints"),
    (lambda: explore.loglog_slope([1, 2], [1, 0]), ValueError, r"x and y must be positive"),
    (lambda: explore.loglog_slope([1], [1]), ValueError, r"x and y must be 1-D of the same length >= 2"),
    (lambda: explore.directions_for_energy(np.eye(3), 0), ValueError, r"fraction must be a number in \(0, 1\]"),
    (lambda: explore.directions_for_energy(np.ones(3), 0.9), ValueError, r"matrix must be a non-empty 2-D"),
    (lambda: explore.lora_init_A(8, 4, generator=3), TypeError, r"generator must be a CPU torch.Generator"),
    (lambda: explore.planted_rank_sweep(d=None), TypeError, r"d must be an int >= 2"),
])
def test_bad_input_raises_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_input_to_the_model_functions(mlp, task):
    layers, positions = layers_of(mlp)
    with pytest.raises(TypeError, match="model must be a lora_edu.models.DigitsMLP"):
        explore.frozen_mlp_layers(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"targets \['fc3'\] are not layers of the MLP; allowed values: fc1, fc2"):
        explore.frozen_mlp_layers(mlp, ["fc3"])
    with pytest.raises(ValueError, match="scalings and learning_rates must have the same length"):
        explore.train_lora_batch(layers, positions, task, 2, [1.0, 2.0], [1e-3], 2)
    with pytest.raises(ValueError, match="optimizer='lion' is not allowed; allowed values: adam, sgd"):
        explore.train_lora_batch(layers, positions, task, 2, [1.0], [1e-3], 2, optimizer="lion")
    with pytest.raises(ValueError, match="loss='hinge' is not allowed"):
        explore.train_lora_batch(layers, positions, task, 2, [1.0], [1e-3], 2, loss="hinge")
    with pytest.raises(ValueError, match="each of learning_rates must be a positive"):
        explore.train_lora_batch(layers, positions, task, 2, [1.0], [-1e-3], 2)
    for targets in ([5], None, 0, [], "0"):
        with pytest.raises(ValueError, match=r"targets must be a non-empty list of layer positions in \[0, 3\)"):
            explore.train_lora_batch(layers, targets, task, 2, [1.0], [1e-3], 2)
    with pytest.raises(TypeError, match="data must have tensors x_train, y_train, x_val, y_val"):
        explore.train_lora_batch(layers, positions, object(), 2, [1.0], [1e-3], 2)
    with pytest.raises(ValueError, match="alpha_rules=.* is not allowed"):
        explore.run_lora_grid(mlp, task, alpha_rules=("r", "4r"))
    with pytest.raises(ValueError, match="pairs must be a non-empty list of \\(alpha, lr\\)"):
        explore.compare_alpha_and_lr(mlp, task, [(1, 2, 3)])
    with pytest.raises(TypeError, match="use_rslora must be True or False"):
        explore.lora_gradient_norms_at_init(mlp, task, use_rslora="yes")
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        explore.full_finetuning_delta(mlp, task, lr=0)
