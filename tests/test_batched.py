"""lora_edu.batched: the batched LoRA runs equal real LoRA layers trained one by one; the grid and the α-vs-lr
comparison (notebook 06's claims under Adam and SGD) hold on small cases."""
import copy
import math

import numpy as np
import pytest
import torch

from lora_edu import batched, scaling_rules
from lora_edu.lora import LoraConfig, add_lora, lora_layers
from lora_edu.training import train


def layers_of(model):
    return batched.frozen_linear_stack(model, ("fc1", "fc2"))


def test_batch_indices():
    rows = batched.batch_indices(100, 8, 5, seed=1)
    assert rows.shape == (5, 8) and int(rows.min()) >= 0 and int(rows.max()) < 100
    assert torch.equal(rows, batched.batch_indices(100, 8, 5, seed=1))
    assert torch.equal(batched.batch_indices(10, None, 3)[2], torch.arange(10))
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        batched.batch_indices(10, 0, 3)
    with pytest.raises(TypeError, match=r"steps must be an int >= 1, got bool True"):
        batched.batch_indices(10, 4, True)


@pytest.mark.parametrize("r, alpha, use_rslora, lr", [(4, 8.0, False, 3e-3), (2, 16.0, True, 1e-2)])
def test_one_configuration_equals_add_lora_trained_with_adam(mlp, task, r, alpha, use_rslora, lr):
    steps, batch = 12, 32
    layers, positions = layers_of(mlp)
    scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
    run = batched.train_lora_batch(layers, positions, task, r, [scaling], [lr], steps, batch_size=batch,
                                   eval_every=4, seed=5)
    model = add_lora(copy.deepcopy(mlp), LoraConfig(target_modules=["fc1", "fc2"], r=r, lora_alpha=alpha,
                                                       use_rslora=use_rslora))
    with torch.no_grad():
        for position, name in zip(positions, ["fc1", "fc2"]):
            layer = lora_layers(model)[name]
            layer.lora_A["default"].copy_(scaling_rules.lora_init_A(layer.in_features, r, 5 + position))
    rows = batched.batch_indices(len(task.x_train), batch, steps, seed=5)
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
    together = batched.train_lora_batch(layers, positions, task, 3, [1.0, 4.0], [1e-2, 2e-3], 6, batch_size=16)
    alone = batched.train_lora_batch(layers, positions, task, 3, [4.0], [2e-3], 6, batch_size=16)
    np.testing.assert_allclose(together.train_loss[1], alone.train_loss[0], rtol=1e-5)
    assert not np.allclose(together.train_loss[0], together.train_loss[1])


def test_sgd_is_plain_gradient_descent(mlp, task):
    layers, positions = layers_of(mlp)
    r, s, lr = 2, 3.0, 0.05
    run = batched.train_lora_batch(layers, positions, task, r, [s], [lr], 2, batch_size=None, optimizer="sgd")
    model = add_lora(copy.deepcopy(mlp), LoraConfig(target_modules=["fc1", "fc2"], r=r, lora_alpha=s * r))
    with torch.no_grad():
        for position, name in zip(positions, ["fc1", "fc2"]):
            layer = lora_layers(model)[name]
            layer.lora_A["default"].copy_(scaling_rules.lora_init_A(layer.in_features, r, position))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(task.x_train), task.y_train)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    np.testing.assert_allclose(run.train_loss[0], losses, rtol=1e-5)


def test_grid_shapes_and_lookups(mlp, task):
    grid = batched.run_lora_grid(mlp, task, ranks=(2, 8), learning_rates=(1e-3, 4e-3), fixed_alpha=8,
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
    adam = batched.compare_alpha_and_lr(mlp, task, [(4, 2e-3), (8, 1e-3), (8, 2e-3)], r=4, steps=1)
    assert adam[(8, 1e-3)][1] == pytest.approx(adam[(4, 2e-3)][1], rel=1e-6)
    assert abs(adam[(8, 2e-3)][1] - adam[(4, 2e-3)][1]) > 100 * abs(adam[(8, 1e-3)][1] - adam[(4, 2e-3)][1])
    sgd = batched.compare_alpha_and_lr(mlp, task, [(4, 0.04), (8, 0.01), (8, 0.02)], r=4, steps=1, optimizer="sgd")
    drop = {pair: curve[0] - curve[1] for pair, curve in sgd.items()}
    assert drop[(4, 0.04)] > 0
    assert drop[(8, 0.01)] == pytest.approx(drop[(4, 0.04)], rel=1e-3)  # SGD: the step on ΔW grows like α² · lr
    assert drop[(8, 0.02)] > 1.5 * drop[(4, 0.04)]


def test_frozen_linear_stack_of_the_digits_mlp_and_of_any_stack(mlp):
    layers, positions = batched.frozen_linear_stack(mlp)  # defaults: linear_stack and linear_targets
    assert [w.shape for w, _ in layers] == [(32, 64), (32, 32), (10, 32)] and positions == [0, 1]
    assert torch.equal(layers[2][1], mlp.head.bias)
    stack = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    layers, positions = batched.frozen_linear_stack(stack, target_modules=["2"], layer_names=["0", "2"])
    assert positions == [1] and torch.equal(layers[0][1], torch.zeros(3))  # no bias: zeros
    x = torch.randn(5, 4)
    assert torch.allclose(batched._forward(x, layers, {}, 0.0), stack(x))


def test_bad_input_to_the_model_functions(mlp, task):
    layers, positions = layers_of(mlp)
    with pytest.raises(ValueError, match="layer_names must be given: Linear has no default 'linear_stack' attribute"):
        batched.frozen_linear_stack(torch.nn.Linear(3, 3), target_modules=[""])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        batched.frozen_linear_stack("mlp")
    with pytest.raises(ValueError, match=r"each of target_modules='fc3' is not allowed; allowed values: 'fc1', 'fc2', "
                                         r"'head'"):
        batched.frozen_linear_stack(mlp, ["fc3"])
    with pytest.raises(ValueError, match=r"each of layer_names='fc3' is not allowed; allowed values: 'fc1', 'fc2'"):
        batched.frozen_linear_stack(mlp, ["fc1"], ["fc1", "fc3"])
    with pytest.raises(TypeError, match="target_modules must be a non-empty list of layer names, got str"):
        batched.frozen_linear_stack(mlp, "fc1")
    with pytest.raises(ValueError, match="scalings and learning_rates must have the same length"):
        batched.train_lora_batch(layers, positions, task, 2, [1.0, 2.0], [1e-3], 2)
    with pytest.raises(ValueError, match="optimizer='lion' is not allowed; allowed values: 'adam', 'sgd'"):
        batched.train_lora_batch(layers, positions, task, 2, [1.0], [1e-3], 2, optimizer="lion")
    with pytest.raises(ValueError, match="loss='hinge' is not allowed; allowed values: 'cross_entropy', 'mse'"):
        batched.train_lora_batch(layers, positions, task, 2, [1.0], [1e-3], 2, loss="hinge")
    with pytest.raises(ValueError, match="each of learning_rates must be a finite number > 0, got -0.001"):
        batched.train_lora_batch(layers, positions, task, 2, [1.0], [-1e-3], 2)
    with pytest.raises(ValueError, match=r"each of target_positions must be an int >= 0 and <= 2 \(a position in "
                                         r"layers\), got 5"):
        batched.train_lora_batch(layers, [5], task, 2, [1.0], [1e-3], 2)
    with pytest.raises(ValueError, match=r"target_positions must be a non-empty list of ints >= 0, got an empty list"):
        batched.train_lora_batch(layers, [], task, 2, [1.0], [1e-3], 2)
    for target_positions in (None, 0, "0"):
        with pytest.raises(TypeError, match=r"target_positions must be a non-empty list of ints >= 0"):
            batched.train_lora_batch(layers, target_positions, task, 2, [1.0], [1e-3], 2)
    with pytest.raises(ValueError, match="layers must be a non-empty list of"):
        batched.train_lora_batch([], [0], task, 2, [1.0], [1e-3], 2)
    with pytest.raises(TypeError, match="data must have tensors x_train, y_train, x_val, y_val"):
        batched.train_lora_batch(layers, positions, object(), 2, [1.0], [1e-3], 2)
    with pytest.raises(ValueError, match="each of alpha_rules='4r' is not allowed; allowed values: 'r', '2r', 'fixed'"):
        batched.run_lora_grid(mlp, task, alpha_rules=("r", "4r"))
    with pytest.raises(ValueError, match="scaling_rules must be a non-empty list of scaling rules, got an empty list"):
        batched.run_lora_grid(mlp, task, scaling_rules=())
    with pytest.raises(ValueError, match="pairs must be a non-empty list of \\(alpha, lr\\)"):
        batched.compare_alpha_and_lr(mlp, task, [(1, 2, 3)])


def test_full_batch_equals_full_finetuning_with_adamw(mlp, task):
    from lora_edu import update_analysis
    layers, _ = batched.frozen_linear_stack(mlp)
    run = batched.train_full_batch(layers, task, [2e-3], 8, batch_size=32, eval_every=4, seed=3)
    deltas, accuracy = update_analysis.full_finetuning_delta(mlp, task, steps=8, lr=2e-3, batch_size=32, seed=3)
    assert run.val_accuracy[0] == pytest.approx(accuracy, abs=1e-9) and run.eval_steps == [0, 4, 8]
    for position, name in enumerate(("fc1", "fc2")):
        np.testing.assert_allclose(run.factors[position][0].numpy(), deltas[name], atol=1e-6)
    together = batched.train_full_batch(layers, task, [1e-2, 2e-3], 8, batch_size=32, eval_every=4, seed=3)
    np.testing.assert_allclose(together.val_loss[1], run.val_loss[0], rtol=1e-5)
    assert not np.allclose(together.val_loss[0], together.val_loss[1])
    assert torch.equal(layers[0][0], mlp.fc1.weight), "the frozen layers must not change"


def test_learning_rate_sweep_shapes_lookups_and_runs(mlp, task):
    lrs, seeds = (1e-3, 4e-3, 1.6e-2), (0, 1)
    sweep = batched.sweep_learning_rates(mlp, task, ranks=(2, 4), learning_rates=lrs, seeds=seeds, steps=6,
                                         batch_size=16, eval_every=3)
    assert sweep.methods == (2, 4, "full") and sweep.val_loss.shape == (3, 3, 2, 3)
    assert sweep.val_accuracy.shape == (3, 3, 2) and sweep.eval_steps == [0, 3, 6]
    layers, positions = batched.frozen_linear_stack(mlp)
    lora = batched.train_lora_batch(layers, positions, task, 4, [2.0] * 3, lrs, 6, batch_size=16, eval_every=3, seed=1)
    np.testing.assert_allclose(sweep.val_loss[1, :, 1], lora.val_loss, rtol=1e-6)  # α = 2r: s = 2
    full = batched.train_full_batch(layers, task, lrs, 6, batch_size=16, eval_every=3, seed=0)
    np.testing.assert_allclose(sweep.val_loss[2, :, 0], full.val_loss, rtol=1e-6)
    for method in sweep.methods:
        final = sweep.final_loss(method)
        assert final.shape == (3, 2)
        np.testing.assert_array_equal(sweep.best_loss(method), final.min(axis=0))
        np.testing.assert_array_equal(sweep.best_lr(method), np.array(lrs)[final.argmin(axis=0)])
        assert sweep.best_is_interior(method) == bool(np.all(final.argmin(axis=0) == 1))
        assert np.all((0 <= sweep.best_accuracy(method)) & (sweep.best_accuracy(method) <= 1))
    only_lora = batched.sweep_learning_rates(mlp, task, ranks=(2,), learning_rates=lrs, seeds=(0,), steps=2,
                                             batch_size=16, full=False)
    assert only_lora.methods == (2,)
    with pytest.raises(ValueError, match="method='full' is not allowed; allowed values: 2"):
        only_lora.final_loss("full")


def test_bad_input_to_the_sweep(mlp, task):
    layers, _ = batched.frozen_linear_stack(mlp)
    with pytest.raises(ValueError, match="alpha_rule='4r' is not allowed"):
        batched.sweep_learning_rates(mlp, task, alpha_rule="4r")
    with pytest.raises(ValueError, match="scaling_rule='alpha' is not allowed"):
        batched.sweep_learning_rates(mlp, task, scaling_rule="alpha")
    with pytest.raises(TypeError, match="full must be True or False"):
        batched.sweep_learning_rates(mlp, task, full=1)
    with pytest.raises(ValueError, match="seeds must not repeat"):
        batched.sweep_learning_rates(mlp, task, seeds=(0, 0))
    with pytest.raises(ValueError, match="learning_rates must be"):
        batched.train_full_batch(layers, task, [0.0], 2)
    with pytest.raises(TypeError, match="data must have tensors x_train, y_train, x_val, y_val; x_train is missing"):
        batched.train_full_batch(layers, object(), [1e-3], 2)
