"""lora_edu.update_analysis: notebook 06's claims about the LoRA update (planted rank, rsLoRA's r^(-1/2) law,
Adam's first step, energy counts) hold on small cases."""
import copy

import numpy as np
import pytest
import torch

from lora_edu import update_analysis


def test_planted_problem_has_the_planted_rank():
    problems = [update_analysis.planted_rank_problem(k, d=16, seed=2) for k in (1, 3, 5)]
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
    sweep = update_analysis.planted_rank_sweep(ranks=(1, 2, 3, 4), true_ranks=(3,), steps=120, lr=0.04, d=16)
    ratio = sweep.final()[:, 0] / sweep.noise_floor
    assert ratio[0] > 3 and ratio[1] > 2, ratio  # r < k stalls
    assert ratio[2] < 1.15 and ratio[3] < 1.15, ratio  # r >= k reaches the noise floor
    np.testing.assert_allclose(sweep.final(), sweep.best_possible, rtol=0.12)
    assert sweep.curve(2, 3).shape == (len(sweep.eval_steps),)


def test_gradient_norm_at_init_scales_as_s_times_sqrt_r(mlp, task):
    ranks = (1, 2, 4, 8, 16)
    lora = update_analysis.lora_gradient_norms_at_init(mlp, task, ranks, alpha=4, use_rslora=False, seeds=(0, 1, 2))
    rslora = update_analysis.lora_gradient_norms_at_init(mlp, task, ranks, alpha=4, use_rslora=True, seeds=(0, 1, 2))
    # the same seeds draw the same A, so the two rules differ exactly by their scalings' ratio √r
    np.testing.assert_allclose(rslora / lora, np.sqrt(ranks), rtol=1e-5)
    # the result is the root mean square over seeds
    one = [update_analysis.lora_gradient_norms_at_init(mlp, task, ranks, alpha=4, seeds=(seed,)) for seed in (0, 1, 2)]
    np.testing.assert_allclose(lora, np.sqrt(np.mean(np.square(one), axis=0)), rtol=1e-6)
    assert not np.allclose(one[0], one[1])  # different seeds draw different A's
    assert update_analysis.loglog_slope(ranks, lora) == pytest.approx(-0.5, abs=0.15)
    assert update_analysis.loglog_slope(ranks, rslora) == pytest.approx(0.0, abs=0.15)


def test_gradient_norms_at_init_leave_the_global_random_state_alone(mlp, task):
    state = torch.random.get_rng_state()
    update_analysis.lora_gradient_norms_at_init(mlp, task, (1, 2), seeds=(0,))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_first_adam_step_norms(mlp, task):
    ranks = (1, 2, 4, 8, 16)
    constant = update_analysis.lora_first_step_norms(mlp, task, ranks, alpha_rule="2r")
    fixed = update_analysis.lora_first_step_norms(mlp, task, ranks, alpha_rule="fixed", fixed_alpha=4)
    rs = update_analysis.lora_first_step_norms(mlp, task, ranks, alpha_rule="fixed", scaling_rule="alpha/sqrt(r)",
                                       fixed_alpha=4)
    assert update_analysis.loglog_slope(ranks, constant) == pytest.approx(0.5, abs=0.15)
    assert update_analysis.loglog_slope(ranks, fixed) == pytest.approx(-0.5, abs=0.15)
    assert update_analysis.loglog_slope(ranks, rs) == pytest.approx(0.0, abs=0.15)


def test_loglog_slope_of_power_laws():
    x = np.array([1, 2, 4, 8, 16, 32, 64])
    assert update_analysis.loglog_slope(x, 3 * x ** -0.5) == pytest.approx(-0.5)
    assert update_analysis.loglog_slope(x, np.full(7, 2.0)) == pytest.approx(0.0, abs=1e-12)


def test_directions_for_energy():
    m = np.diag([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14: 64 %, 93 %, 100 %
    assert update_analysis.directions_for_energy(m, 0.5) == 1
    assert update_analysis.directions_for_energy(m, 0.9) == 2
    assert update_analysis.directions_for_energy(m, 9 / 14) == 1
    assert update_analysis.directions_for_energy(m, 1.0) == 3
    assert update_analysis.directions_for_energy(torch.ones(4, 5), 0.99) == 1


def test_full_finetuning_delta(mlp, task):
    before = copy.deepcopy(mlp.state_dict())
    deltas, accuracy = update_analysis.full_finetuning_delta(mlp, task, steps=5, lr=1e-3, batch_size=32)
    assert deltas["fc1"].shape == (32, 64) and deltas["fc2"].shape == (32, 32)
    assert all(np.abs(d).max() > 0 for d in deltas.values()) and 0 <= accuracy <= 1
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items()), "the base model must not change"


@pytest.mark.parametrize("call, error, match", [
    (lambda: update_analysis.planted_rank_problem(40, d=32), ValueError,
     r"true_rank must be an int >= 1 and <= 32 \(d=32\), got 40"),
    (lambda: update_analysis.planted_rank_problem(2, noise_std=0), ValueError,
     r"noise_std must be a finite number > 0"),
    (lambda: update_analysis.planted_rank_sweep(ranks=()), ValueError, r"ranks must be a non-empty list"),
    (lambda: update_analysis.planted_rank_sweep(ranks=(1, 1)), ValueError, r"ranks must not repeat"),
    (lambda: update_analysis.planted_rank_sweep(ranks=(1, 40)), ValueError, r"ranks and true_ranks must be <= d=32"),
    (lambda: update_analysis.planted_rank_sweep(ranks="12"), TypeError, r"ranks must be a non-empty list of ints"),
    (lambda: update_analysis.planted_rank_sweep(d=None), TypeError, r"d must be an int >= 2"),
    (lambda: update_analysis.loglog_slope([1, 2], [1, 0]), ValueError, r"x and y must be positive"),
    (lambda: update_analysis.loglog_slope([1], [1]), ValueError, r"x and y must be 1-D of the same length >= 2"),
    (lambda: update_analysis.directions_for_energy(np.eye(3), 0), ValueError,
     r"fraction must be a finite number > 0 and <= 1, got 0.0"),
    (lambda: update_analysis.directions_for_energy(np.ones(3), 0.9), ValueError, r"matrix must be 2-D"),
])
def test_bad_input_raises_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_input_to_the_model_functions(mlp, task):
    with pytest.raises(TypeError, match="use_rslora must be True or False"):
        update_analysis.lora_gradient_norms_at_init(mlp, task, use_rslora="yes")
    with pytest.raises(ValueError, match="each of target_modules='fc3' is not allowed"):
        update_analysis.lora_gradient_norms_at_init(mlp, task, target_modules=["fc3"])
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        update_analysis.full_finetuning_delta(mlp, task, lr=0)


def test_first_step_loss_drop_is_proportional_to_the_update_at_one_rank(mlp, task):
    ranks = (1, 4, 16)
    norms, drops = update_analysis.lora_first_step(mlp, task, ranks, alpha_rule="fixed", fixed_alpha=4)
    np.testing.assert_allclose(norms, update_analysis.lora_first_step_norms(mlp, task, ranks, fixed_alpha=4))
    norms_2r, drops_2r = update_analysis.lora_first_step(mlp, task, ranks, alpha_rule="2r")
    assert np.all(drops > 0) and np.all(drops_2r > 0)
    # the same rank, another s: Adam's first step has the same direction, so drop / ‖ΔW‖ is the same
    np.testing.assert_allclose(drops / norms, drops_2r / norms_2r, rtol=0.02)


def test_scaling_alpha_by_c_is_scaling_the_learning_rate_of_b_by_c(mlp, task):
    def run(alpha, lr_a, lr_b, eps=1e-8):
        return update_analysis.train_lora_two_learning_rates(mlp, task, 4, alpha, lr_a, lr_b, steps=12,
                                                             batch_size=64, eps=eps)
    c, alpha, lr = 3, 4, 2e-3
    scaled, faster_b, faster_both = run(c * alpha, lr, lr), run(alpha, lr, c * lr), run(alpha, c * lr, c * lr)
    assert scaled.val_loss.shape == (13,)
    np.testing.assert_allclose(scaled.val_loss, faster_b.val_loss, rtol=1e-5)
    for name in ("fc1", "fc2"):
        largest = float(scaled.delta_weights[name].abs().max())  # entries with tiny gradients feel ε, not ε/c
        assert float((scaled.delta_weights[name] - faster_b.delta_weights[name]).abs().max()) < 1e-3 * largest
    assert np.abs(scaled.val_loss - faster_both.val_loss).max() > 100 * np.abs(scaled.val_loss - faster_b.val_loss).max()
    big_eps = np.abs(run(c * alpha, lr, lr, 1e-2).val_loss - run(alpha, lr, c * lr, 1e-2).val_loss).max()
    assert big_eps > 100 * np.abs(scaled.val_loss - faster_b.val_loss).max(), "a large ε breaks the equivalence"
    # one learning rate for both: torch's Adam on real LoRA layers equals the batched hand-written Adam
    from lora_edu import batched
    same = batched.compare_alpha_and_lr(mlp, task, [(alpha, lr)], r=4, steps=12, batch_size=64)[(alpha, lr)]
    np.testing.assert_allclose(run(alpha, lr, lr).val_loss, same, rtol=1e-5)


def test_scaling_alpha_by_c_is_one_rate_times_sqrt_c_with_a_sqrt_c_larger_a(mlp, task):
    c, alpha, lr = 4, 4, 2e-3
    scaled = update_analysis.train_lora_two_learning_rates(mlp, task, 4, c * alpha, lr, lr, steps=12, batch_size=64)
    rescaled = update_analysis.train_lora_two_learning_rates(mlp, task, 4, alpha, 2 * lr, 2 * lr, steps=12,
                                                             batch_size=64, init_scale=2.0)
    plain = update_analysis.train_lora_two_learning_rates(mlp, task, 4, alpha, 2 * lr, 2 * lr, steps=12,
                                                          batch_size=64)
    np.testing.assert_allclose(scaled.val_loss, rescaled.val_loss, rtol=1e-5)
    assert np.abs(scaled.val_loss - plain.val_loss).max() > 100 * np.abs(scaled.val_loss - rescaled.val_loss).max()


def test_full_rank_layers(mlp):
    assert update_analysis.full_rank_layers(mlp, 8) == []
    assert update_analysis.full_rank_layers(mlp, 32) == ["fc1", "fc2"]  # fc1 is 32 x 64, fc2 32 x 32
    assert update_analysis.full_rank_layers(mlp, 32, target_modules=["fc2"]) == ["fc2"]
    with pytest.raises(ValueError, match="r must be an int >= 1, got 0"):
        update_analysis.full_rank_layers(mlp, 0)
    with pytest.raises(ValueError, match="each of target_modules='fc3' is not allowed"):
        update_analysis.full_rank_layers(mlp, 4, target_modules=["fc3"])


def test_bad_input_to_the_two_rate_run(mlp, task):
    with pytest.raises(ValueError, match="lr_B must be a finite number > 0"):
        update_analysis.train_lora_two_learning_rates(mlp, task, 4, 8, 1e-3, -1e-3)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        update_analysis.train_lora_two_learning_rates(mlp, task, 4, 8, 1e-3, 1e-3, eps=-1)
    with pytest.raises(ValueError, match="r must be an int >= 1"):
        update_analysis.train_lora_two_learning_rates(mlp, task, 0, 8, 1e-3, 1e-3)
    with pytest.raises(ValueError, match="init_scale must be a finite number > 0"):
        update_analysis.train_lora_two_learning_rates(mlp, task, 4, 8, 1e-3, 1e-3, init_scale=0)
