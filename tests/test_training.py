"""Tests of lora_edu.training: the loop learns, measures exact bytes, keeps quiet under tests."""
import math

import pytest
import torch

from lora_edu import models, strategies, training
from lora_edu.measure import measured_training_memory_bytes


def toy_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x, y


def test_training_lowers_the_loss_and_records_everything():
    x, y = toy_problem()
    torch.manual_seed(0)
    model = models.DigitsMLP(hidden=32)
    result = training.train(model, lambda step: (x, y), 40, 1e-2,
                            evaluate=lambda m: {"loss": training.evaluate_loss(m, x, y)}, eval_every=10)
    assert len(result.train_losses) == len(result.step_seconds) == 40
    assert result.eval_steps == [0, 10, 20, 30, 40]
    assert result.final("loss") < 0.5 * result.evaluations["loss"][0]
    assert training.evaluate_accuracy(model, x, y) > 0.9
    assert result.median_step_seconds > 0
    assert result.peak_memory_bytes is None  # only CUDA reports it
    assert not model.training  # left in eval mode
    assert result.trainable_parameters == models.count_parameters(model)
    with pytest.raises(ValueError, match="name='accuracy' was not evaluated; allowed values: loss"):
        result.final("accuracy")


def test_measured_gradient_and_adam_bytes_equal_the_formula():
    x, y = toy_problem()
    for name in ("full", "lora", "head_only"):
        model = strategies.apply_strategy(models.DigitsMLP(hidden=32), name)
        expected = measured_training_memory_bytes(model)
        result = training.train(model, lambda step: (x, y), 2, 1e-3)
        assert result.grad_bytes == expected["gradients"]
        assert result.optimizer_bytes == expected["optimizer"]
        assert result.trainable_parameters * 4 == expected["trainable_weights"]


def test_only_trainable_parameters_change():
    x, y = toy_problem()
    model = strategies.apply_strategy(models.DigitsMLP(hidden=32), "head_only")
    fc1, head = model.fc1.weight.clone(), model.head.weight.clone()
    training.train(model, lambda step: (x, y), 5, 1e-2)
    assert torch.equal(model.fc1.weight, fc1) and not torch.equal(model.head.weight, head)


def test_learning_rate_schedule_warms_up_and_decays():
    x, y = toy_problem()
    model = models.DigitsMLP(hidden=8)
    seen = []

    def batch(step):
        seen.append(step)
        return x, y

    result = training.train(model, batch, 10, 1e-3, warmup_steps=2, final_lr_fraction=0.0)
    assert seen == list(range(10)) and len(result.train_losses) == 10


def test_progress_bar_is_quiet_under_tests_and_without_a_terminal(monkeypatch, capsys):
    assert training.progress_enabled() is False  # PYTEST_CURRENT_TEST is set right now
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.delenv("LORA_EDU_QUIET", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert training.progress_enabled() is False  # pytest captures stderr: not a terminal
    monkeypatch.setenv("JPY_SESSION_NAME", "notebook.ipynb")
    assert training.progress_enabled() is True  # a kernel started by a Jupyter server
    monkeypatch.setenv("LORA_EDU_QUIET", "1")
    assert training.progress_enabled() is False
    assert training.progress_enabled(True) is True
    x, y = toy_problem()
    training.train(models.DigitsMLP(hidden=8), lambda s: (x, y), 3, 1e-3)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        training.progress_enabled("yes")


def test_forced_progress_bar_writes_to_stderr(monkeypatch, capsys):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    x, y = toy_problem()
    training.train(models.DigitsMLP(hidden=8), lambda s: (x, y), 3, 1e-3, progress=True, description="demo")
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, message", [
    ({"steps": 0}, ValueError, "steps must be an int >= 1"),
    ({"steps": 2.5}, TypeError, "steps must be an int"),
    ({"lr": 0.0}, ValueError, "lr must be a finite number > 0, got 0.0"),
    ({"lr": float("inf")}, ValueError, "lr must be a finite number > 0, got inf"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay must be a finite number >= 0, got -1.0"),
    ({"eval_every": 0}, ValueError, "eval_every must be an int >= 1"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps must be an int >= 0"),
    ({"final_lr_fraction": 2.0}, ValueError, "final_lr_fraction must be a finite number >= 0 and <= 1, got 2.0"),
    ({"evaluate": "loss"}, TypeError, "evaluate must be a callable"),
    ({"next_batch": [1, 2]}, TypeError, "next_batch must be a callable"),
    ({"model": "mlp"}, TypeError, "model must be a torch.nn.Module"),
])
def test_bad_arguments_are_rejected_before_training(kwargs, error, message):
    x, y = toy_problem()
    model = models.DigitsMLP(hidden=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        training.train(**{"model": model, "next_batch": lambda s: (x, y), "steps": 3, "lr": 1e-3, **kwargs})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_model_with_nothing_trainable_is_rejected():
    model = models.DigitsMLP(hidden=8).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        training.train(model, lambda s: None, 3, 1e-3)


def test_cross_entropy_loss_handles_sequences():
    logits, targets = torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long)  # uniform over 7 classes: ln 7
    assert float(training.cross_entropy_loss(logits, targets)) == pytest.approx(math.log(7), abs=1e-6)


def test_evaluate_loss_rejects_empty_input():
    model = models.DigitsMLP(hidden=8)
    with pytest.raises(ValueError, match="x and y must hold at least one example"):
        training.evaluate_loss(model, torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        training.evaluate_loss(model, torch.zeros(2, 64), torch.zeros(2, dtype=torch.long), batch_size=0)



def sweep_toy(calls):
    x, y = toy_problem()

    def fine_tune(lr, seed):
        calls.append((lr, seed))
        torch.manual_seed(seed)
        model = strategies.apply_strategy(models.DigitsMLP(hidden=16), "full")
        result = training.train(model, lambda step: (x, y), 15, lr, progress=False,
                                evaluate=lambda m: {"loss": training.evaluate_loss(m, x, y),
                                                    "accuracy": training.evaluate_accuracy(m, x, y)})
        return model, result
    return fine_tune


def test_sweep_runs_every_rate_then_the_best_at_every_seed():
    calls = []
    grid = (1e-5, 1e-2, 100.0)  # far too small, reasonable, far too large
    sweep = training.sweep_learning_rates(sweep_toy(calls), grid, seeds=(0, 4, 7), score="loss")
    assert calls == [(lr, 0) for lr in grid] + [(1e-2, 4), (1e-2, 7)]
    assert sweep.best_lr == 1e-2 and not sweep.best_at_edge
    assert sweep.scores == [sweep.runs[lr, 0][1].final("loss") for lr in grid]
    assert sweep.scores[1] == min(sweep.scores)
    finals = sweep.finals("accuracy")
    assert len(finals) == 3 and sweep.spread("accuracy") == max(finals) - min(finals)
    assert math.isclose(sweep.mean("accuracy"), sum(finals) / 3)
    assert [len(c) for c in sweep.curves("loss")] == [2, 2, 2]  # before and after training
    assert [m for m, _ in sweep.best_runs()] == [sweep.runs[1e-2, s][0] for s in (0, 4, 7)]


def test_sweep_higher_is_better_and_the_edge_is_reported():
    sweep = training.sweep_learning_rates(sweep_toy([]), (1e-6, 1e-5, 1e-4), seeds=(0,), score="loss")
    assert sweep.best_lr == 1e-4 and sweep.best_at_edge  # still improving at the largest rate: widen the grid
    worst = training.sweep_learning_rates(sweep_toy([]), (1e-6, 1e-5, 1e-4), seeds=(0,), score="loss",
                                          lower_is_better=False)
    assert worst.best_lr == 1e-6


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(learning_rates=(1e-3, 1e-2)), ValueError, "at least 3 increasing"),
    (dict(learning_rates=(1e-2, 1e-3, 1e-1)), ValueError, "at least 3 increasing"),
    (dict(learning_rates=(1e-3, 0, 1e-1)), ValueError, "each of learning_rates"),
    (dict(seeds=()), ValueError, "seeds must be a non-empty list"),
    (dict(seeds=(0, 0)), ValueError, "seeds must not repeat"),
    (dict(score="accuracy on test"), ValueError, "score='accuracy on test' is not an evaluation"),
    (dict(fine_tune=3), TypeError, "fine_tune must be a callable"),
])
def test_sweep_rejects_bad_input(kwargs, error, match):
    arguments = dict(fine_tune=sweep_toy([]), learning_rates=(1e-3, 1e-2, 1e-1), seeds=(0, 1), score="loss")
    with pytest.raises(error, match=match):
        training.sweep_learning_rates(**{**arguments, **kwargs})
